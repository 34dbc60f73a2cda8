"""Writing a neuron's label (with optimistic concurrency) and its family memberships; the label history page."""
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, field_validator

from app import urls
from app.deps import SessionDep
from app.families import add_member, get_family, remove_member
from app.forms import body_of, done
from app.labelling import StaleEdit, clean_label, save_label
from app.lookup import get_unit, key_of
from app.sections.labels import label_data, label_json
from app.security import EditorDep
from app.web import respond

router = APIRouter()


def _blank_is_none(value):
    return None if value == "" else value


class LabelIn(BaseModel):
    text: str = Field(max_length=1000)
    based_on: int | None = Field(None, ge=1, description="the version this edit started from; none for a first label")
    author: str | None = Field(None, max_length=128)

    _based_on = field_validator("based_on", mode="before")(_blank_is_none)

    @field_validator("text")
    @classmethod
    def _clean(cls, text: str) -> str:
        return clean_label(text)


class MembershipIn(BaseModel):
    family: str = Field(min_length=1, max_length=64)
    action: Literal["add", "remove"] = "add"
    author: str | None = Field(None, max_length=128)


@router.get("/models/{model}/{layer}/{unit}/labels", name="neuron_labels")
def labels_page(request: Request, session: SessionDep, model: str, layer: str, unit: str):
    la, u = get_unit(session, model, layer, unit)
    key = key_of(la, u)
    data = {"key": key.path, "url": urls.neuron(key), **label_data(session, key)}
    return respond(request, "labels.html", data)


@router.post("/models/{model}/{layer}/{unit}/labels")
def post_label(request: Request, editor: EditorDep, session: SessionDep, model: str, layer: str, unit: str,
               body: LabelIn = body_of(LabelIn)):
    la, u = get_unit(session, model, layer, unit)
    key = key_of(la, u)
    try:
        label = save_label(session, u.id, body.text, editor.author(body.author), body.based_on)
    except StaleEdit as e:
        data = {"error": str(e), "status": 409, "key": key.path, "current": label_json(e.current),
                "yours": {"text": body.text, "based_on": body.based_on},
                "labels_url": urls.neuron_labels(key), "url": urls.neuron(key)}
        return respond(request, "label_conflict.html", data, status_code=409)
    return done(request, {"key": key.path, "label": label_json(label)}, urls.neuron(key) + "#labels", 201)


@router.post("/models/{model}/{layer}/{unit}/families")
def post_membership(request: Request, editor: EditorDep, session: SessionDep, model: str, layer: str, unit: str,
                    body: MembershipIn = body_of(MembershipIn)):
    la, u = get_unit(session, model, layer, unit)
    key = key_of(la, u)
    family = get_family(session, body.family)
    author = editor.author(body.author)
    changed = True
    if body.action == "add":
        changed = add_member(session, u.id, family, author)
    else:
        remove_member(session, u.id, family, author)
    data = {"key": key.path, "family": family.name, "action": body.action, "changed": changed,
            "families": label_data(session, key)["families"]}
    return done(request, data, urls.neuron(key) + "#labels")
