"""Conditional probability studies: create one for a neuron, label it blind, read the results.

The blind labelling page and its JSON twin carry only a display position, the image and its
caption per item: never an activation, a bucket or a database id.
"""
import hashlib
import json
from functools import lru_cache

from fastapi import APIRouter, Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field, field_validator

from app import urls
from app.deps import SessionDep
from app.forms import body_of, done, is_form, raw_input
from app.lookup import NotFound, get_unit, key_of
from app.security import EditorDep, current_editor
from app.studies import (
    StudyError,
    add_category,
    count_samples,
    create_study,
    get_study,
    next_items,
    progress,
    save_answers,
    study_items,
    study_labels,
    unit_studies,
)
from app.study_plot import FORMATS, render_plot
from app.study_results import results, results_csv
from app.web import error_page, respond
from store.keys import UnitKey
from store.schema import Study, Unit

router = APIRouter()
BATCH = 24


def _split(value):
    if isinstance(value, str):
        return [c for c in value.replace("\n", ",").split(",") if c.strip()]
    return value


class StudyIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    categories: list[str] = Field(description="a list, or one comma-separated string in a form")
    n_buckets: int = Field(10, ge=2, le=50)
    per_bucket: int = Field(10, ge=1, le=500)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    author: str | None = Field(None, max_length=128)

    _categories = field_validator("categories", mode="before")(_split)


class CategoryIn(BaseModel):
    category: str = Field(min_length=1, max_length=64)


def study_key(session, study: Study) -> UnitKey:
    unit = session.get(Unit, study.unit_id)
    return key_of(unit.layer, unit)


def summary(session, study: Study) -> dict:
    """What anyone may see of a study (no activations per item)."""
    key = study_key(session, study)
    return {"id": study.id, "name": study.name, "key": key.path, "neuron_url": urls.neuron(key),
            "url": urls.study(study.id), "categories": list(study.categories), "n_buckets": study.n_buckets,
            "per_bucket": study.per_bucket, "n_items": len(study_items(session, study)), "author": study.author,
            "created_at": study.created_at, "progress": progress(session, study),
            "label_url": urls.study_label(study.id), "results_url": urls.study_results(study.id),
            "plot_url": urls.study_plot(study.id), "csv_url": urls.study_csv(study.id)}


def study_error(request: Request, e: StudyError):
    return error_page(request, 422, str(e))


@router.get("/models/{model}/{layer}/{unit}/studies", name="neuron_studies")
def studies_page(request: Request, session: SessionDep, model: str, layer: str, unit: str):
    la, u = get_unit(session, model, layer, unit)
    key = key_of(la, u)
    data = {"key": key.path, "url": urls.neuron(key), "create_url": urls.neuron_studies(key),
            "samples": count_samples(session, u.id),
            "studies": [summary(session, s) for s in unit_studies(session, u.id)]}
    return respond(request, "studies.html", data)


@router.post("/models/{model}/{layer}/{unit}/studies")
def post_study(request: Request, editor: EditorDep, session: SessionDep, model: str, layer: str, unit: str,
               body: StudyIn = body_of(StudyIn)):
    la, u = get_unit(session, model, layer, unit)
    try:
        study = create_study(session, u.id, body.name, body.categories, body.n_buckets, body.per_bucket,
                             editor.author(body.author), body.seed)
    except StudyError as e:
        return study_error(request, e)
    return done(request, {"study": summary(session, study)}, urls.study_label(study.id), 201)


@router.get("/studies/{study_id}", name="study")
def study_page(request: Request, session: SessionDep, study_id: int):
    study = get_study(session, study_id)
    return respond(request, "study.html", {"study": summary(session, study)})


@router.post("/studies/{study_id}/categories")
def post_category(request: Request, editor: EditorDep, session: SessionDep, study_id: int,
                  body: CategoryIn = body_of(CategoryIn)):
    study = get_study(session, study_id)
    try:
        add_category(session, study, body.category)
    except StudyError as e:
        return study_error(request, e)
    return done(request, {"study": summary(session, study)}, urls.study(study.id))


def labeller_for(request: Request, given: str | None) -> str | None:
    editor = current_editor(request)
    if given and given.strip():
        return given.strip()
    return editor.name if editor and editor.via == "cookie" else None


@router.get("/studies/{study_id}/label", name="study_label")
def label_page(request: Request, session: SessionDep, study_id: int, labeller: str | None = None,
               review: bool = False):
    study = get_study(session, study_id)
    who = labeller_for(request, labeller)
    items = next_items(session, study, who, BATCH, review=review)
    mine = study_labels(session, study).get(who, {}) if who else {}
    total = len(study_items(session, study))
    data = {
        "study": {"id": study.id, "name": study.name, "categories": list(study.categories),
                  "url": urls.study(study.id)},
        "labeller": who, "review": review, "total": total, "done": len(mine), "remaining": total - len(mine),
        "save_url": urls.study_label(study.id),
        "items": [{"item": it.position, "image": urls.cache(it.image.path),
                   "thumb": urls.cache(it.image.thumb or it.image.path), "caption": it.image.caption,
                   "answer": mine.get(it.id)} for it in items],
    }
    return respond(request, "study_label.html", data)


def _bad(message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", "answers"), "msg": message, "type": "value_error"}])


async def answers_input(request: Request) -> tuple[str | None, dict[int, str], bool]:
    """(labeller, {position: category}, review) from a form (`item-<position>` fields) or JSON."""
    raw = await raw_input(request)
    if is_form(request):
        answers = {k.removeprefix("item-"): v for k, v in raw.items() if k.startswith("item-")}
    else:
        answers = raw.get("answers")
        if not isinstance(answers, dict):
            raise _bad('send {"labeller": name, "answers": {"<item>": "<category>", ...}}')
    try:
        parsed = {int(k): ("" if v is None else str(v)) for k, v in answers.items()}
    except ValueError:
        raise _bad("items are numbered by their position on the labelling page") from None
    labeller = raw.get("labeller")
    return (labeller if isinstance(labeller, str) else None), parsed, str(raw.get("review", "")) in ("1", "true")


@router.post("/studies/{study_id}/label")
def post_answers(request: Request, editor: EditorDep, session: SessionDep, study_id: int,
                 answers: tuple = Depends(answers_input)):
    claimed, given, review = answers
    study = get_study(session, study_id)
    labeller = editor.author(claimed)
    try:
        saved = save_answers(session, study, labeller, given)
    except StudyError as e:
        return study_error(request, e)
    data = {"study": study.id, "labeller": labeller, "saved": saved, "progress": progress(session, study)}
    return done(request, data, urls.study_label(study_id, labeller=labeller, review=review))


def chosen_results(session, study: Study, labeller: str | None) -> dict:
    labels = study_labels(session, study)
    if labeller is not None and labeller not in labels:
        names = ", ".join(labels) or "nobody yet"
        raise NotFound(f"No answers by {labeller!r} in study {study.id}. Labellers: {names}.",
                       [(n, urls.study_results(study.id, n)) for n in labels])
    return results(study, study_items(session, study), labels, labeller)


@router.get("/studies/{study_id}/results", name="study_results")
def results_page(request: Request, session: SessionDep, study_id: int, labeller: str | None = None):
    study = get_study(session, study_id)
    res = chosen_results(session, study, labeller)
    chosen = res["labeller"]
    data = {"study": summary(session, study), **res,
            "plot_url": urls.study_plot(study.id, chosen), "csv_url": urls.study_csv(study.id, chosen),
            "labeller_urls": {n: urls.study_results(study.id, n) for n in res["labellers"]}}
    return respond(request, "study_results.html", data)


@router.get("/studies/{study_id}/results.csv")
def results_csv_file(session: SessionDep, study_id: int, labeller: str | None = None):
    study = get_study(session, study_id)
    res = chosen_results(session, study, labeller)
    name = f"study-{study.id}-{res['labeller'] or 'unlabelled'}.csv".replace('"', "")
    return Response(results_csv(res), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@lru_cache(maxsize=64)
def _plot(fmt: str, title: str, res_json: str) -> bytes:
    return render_plot(json.loads(res_json), title, fmt)


@router.get("/studies/{study_id}/plot.{fmt}")
def plot(request: Request, session: SessionDep, study_id: int, fmt: str, labeller: str | None = None):
    if fmt not in FORMATS:
        raise NotFound(f"No plot format {fmt!r}; formats: {', '.join(FORMATS)}.",
                       [(f, urls.study_plot(study_id, labeller, f)) for f in FORMATS])
    study = get_study(session, study_id)
    res = chosen_results(session, study, labeller)
    res_json = json.dumps(jsonable_encoder(res), sort_keys=True)
    title = f"{study.name} — {study_key(session, study).path}" + (f" — {res['labeller']}" if res["labeller"] else "")
    etag = '"' + hashlib.sha256(f"{fmt}|{title}|{res_json}".encode()).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(_plot(fmt, title, res_json), media_type=FORMATS[fmt], headers=headers)
