"""Family pages (the paper's figure 1): every family with a few neurons, and each family's grid."""
from typing import Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, field_validator

from app import urls
from app.deps import SessionDep, SettingsDep
from app.families import (
    Conflict,
    Member,
    add_member,
    check_family_name,
    create_family,
    describe_family,
    get_family,
    list_families,
    member_counts,
    members,
    remove_member,
)
from app.forms import body_of, done
from app.lookup import NotFound, unit_by_key
from app.security import EditorDep
from app.views.browse import labels_for, thumbs_for
from app.web import error_page, respond
from store.keys import UnitKey
from store.schema import Family

router = APIRouter()
PREVIEW = 8


class FamilyIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str = Field("", max_length=2000)
    author: str | None = Field(None, max_length=128)

    _name = field_validator("name")(lambda v: check_family_name(v))


class DescriptionIn(BaseModel):
    description: str = Field(max_length=2000)
    author: str | None = Field(None, max_length=128)


class MemberIn(BaseModel):
    unit: str = Field(min_length=5, max_length=300, description="the neuron key model/layer/unit")
    action: Literal["add", "remove"] = "add"
    author: str | None = Field(None, max_length=128)


def member_cards(session, rows: list[Member]) -> list[dict]:
    ids = [m.unit_id for m in rows]
    thumbs, labels = thumbs_for(session, ids), labels_for(session, ids)
    return [{"key": m.key.path, "url": urls.neuron(m.key), "model": m.key.model, "layer": m.key.layer,
             "unit": m.key.unit, "source": m.source, "score": m.score, "author": m.author,
             "thumb": thumbs.get(m.unit_id), "label": labels.get(m.unit_id, {}).get("text"),
             "label_auto": labels.get(m.unit_id, {}).get("auto", False)} for m in rows]


def family_json(f: Family) -> dict:
    return {"name": f.name, "description": f.description, "url": urls.family(f.name)}


@router.get("/families", name="families")
def families_page(request: Request, session: SessionDep):
    counts = member_counts(session)
    families = list_families(session)
    previews: dict[int, list[Member]] = {}
    for f in families:  # editors' members first; the worker's suggestions when there are none
        n = counts.get(f.id, {"human": 0, "auto": 0})
        source = "human" if n["human"] else ("auto" if n["auto"] else None)
        previews[f.id] = members(session, f, source, limit=PREVIEW)[0] if source else []
    cards = iter(member_cards(session, [m for f in families for m in previews[f.id]]))
    out = [{**family_json(f), "members": counts.get(f.id, {}).get("human", 0),
            "suggested": counts.get(f.id, {}).get("auto", 0),
            "preview": [next(cards) for _ in previews[f.id]]} for f in families]
    return respond(request, "families.html", {"families": out})


@router.post("/families")
def post_family(request: Request, editor: EditorDep, session: SessionDep, body: FamilyIn = body_of(FamilyIn)):
    try:
        family = create_family(session, body.name, body.description, editor.author(body.author))
    except Conflict as e:
        return error_page(request, 409, str(e), links=[{"text": body.name, "url": urls.family(body.name)}])
    return done(request, {"family": family_json(family)}, urls.family(family.name), 201)


@router.get("/families/{name}", name="family")
def family_page(request: Request, session: SessionDep, settings: SettingsDep, name: str,
                page: int = Query(1, ge=1)):
    family = get_family(session, name)
    human, n_human = members(session, family, "human")
    size = settings.page_size
    auto, n_auto = members(session, family, "auto", offset=(page - 1) * size, limit=size, exclude_human=True)
    pages = max(1, -(-n_auto // size))
    if page > pages:
        raise NotFound(f"Family {family.name} has {pages} page(s) of suggestions; no page {page}.",
                       [("first page", urls.family(family.name))])
    data = {
        "family": family_json(family), "members": member_cards(session, human), "n_members": n_human,
        "suggested": member_cards(session, auto), "n_suggested": n_auto, "page": page, "pages": pages,
        "prev": urls.family(family.name, page - 1) if page > 1 else None,
        "next": urls.family(family.name, page + 1) if page < pages else None,
        "families": [{"name": f.name, "url": urls.family(f.name)} for f in list_families(session)],
    }
    return respond(request, "family.html", data)


@router.post("/families/{name}")
def post_description(request: Request, editor: EditorDep, session: SessionDep, name: str,
                     body: DescriptionIn = body_of(DescriptionIn)):
    family = describe_family(session, get_family(session, name), body.description, editor.author(body.author))
    return done(request, {"family": family_json(family)}, urls.family(family.name))


@router.post("/families/{name}/members")
def post_member(request: Request, editor: EditorDep, session: SessionDep, name: str,
                body: MemberIn = body_of(MemberIn)):
    family = get_family(session, name)
    key = UnitKey.parse(body.unit)
    unit = unit_by_key(session, key)
    if unit is None:
        raise NotFound(f"No neuron {key.path} in this store.", [("home", urls.home())])
    changed = True
    if body.action == "add":
        changed = add_member(session, unit.id, family, editor.author(body.author))
    else:
        remove_member(session, unit.id, family, editor.author(body.author))
    data = {"family": family.name, "key": key.path, "action": body.action, "changed": changed}
    return done(request, data, urls.family(family.name))
