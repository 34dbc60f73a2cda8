"""Home, model, layer grid and neuron pages: the hierarchy that stable URLs mirror."""
import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import bindparam, func, select
from starlette.concurrency import run_in_threadpool

from app import urls
from app.deps import SessionDep, SettingsDep, read_snapshot
from app.lookup import NotFound, get_layer, get_model, get_unit, range_text
from app.pagecache import CacheableDep
from app.sections import LayerRef, ModelRef, Stats, UnitContext, UnitRef, all_sections, load_sections
from app.web import respond
from store.keys import KeyError_, UnitKey, parse_unit
from store.schema import FeatureVis, Label, Layer, Model, Unit, UnitStats

router = APIRouter(dependencies=[CacheableDep])  # pure functions of the store: app.pagecache keeps them


@router.get("/", name="home")
def home(request: Request, session: SessionDep):
    models = session.scalars(select(Model).order_by(Model.name)).all()
    data = {"models": [
        {"name": m.name, "arch": m.arch, "weights": m.weights, "description": m.description,
         "url": urls.model(m.name), "layers": [{"name": la.name, "n_units": la.n_units} for la in m.layers]}
        for m in models
    ]}
    return respond(request, "home.html", data)


@router.get("/models/{model}", name="model")
def model_page(request: Request, session: SessionDep, model: str):
    m = get_model(session, model)
    data = {"model": {"name": m.name, "arch": m.arch, "weights": m.weights, "image_size": m.image_size,
                      "description": m.description},
            "layers": [{"name": la.name, "module": la.module, "n_units": la.n_units, "kind": la.kind,
                        "is_default": la.is_default, "url": urls.layer(m.name, la.name)} for la in m.layers]}
    return respond(request, "model.html", data)


def thumbs_for(session, unit_ids: list[int]) -> dict[int, str]:
    rows = session.execute(
        select(FeatureVis.unit_id, FeatureVis.thumb, FeatureVis.image)
        .where(FeatureVis.unit_id.in_(unit_ids), FeatureVis.kind == "plain").order_by(FeatureVis.id)
    ).all()
    return {uid: urls.cache(thumb or image) for uid, thumb, image in rows}


def labels_for(session, unit_ids: list[int]) -> dict[int, dict]:
    rows = session.execute(
        select(Label.unit_id, Label.source, Label.text).where(Label.unit_id.in_(unit_ids))
        .order_by(Label.version)
    ).all()
    out: dict[int, dict] = {}
    for uid, source, text in rows:
        out.setdefault(uid, {})[source] = text  # later versions overwrite earlier ones
    return {uid: {"text": d.get("human") or d.get("auto"), "auto": "human" not in d} for uid, d in out.items()}


@router.get("/models/{model}/{layer}", name="layer")
def layer_page(request: Request, session: SessionDep, settings: SettingsDep, model: str, layer: str,
               page: int = Query(1, ge=1), unit: str | None = None,
               sort: str = Query("unit", pattern="^(unit|multimodal)$",
                                 description="unit: by index; multimodal: most multimodal first")):
    la = get_layer(session, model, layer)
    if unit is not None:  # the jump-to-unit form
        key = UnitKey(model, layer, parse_unit(unit.strip()))
        return RedirectResponse(urls.neuron(key), status_code=303)
    size = settings.page_size
    total = session.scalar(select(func.count()).select_from(Unit).where(Unit.layer_id == la.id)) or 0
    pages = max(1, -(-total // size))
    if page > pages:
        raise NotFound(f"{la.model.name} {la.name} has {pages} page(s) of {size} units; no page {page}.",
                       [("first page", urls.layer(model, layer))])
    units, scores = page_units(session, request.app.state.cache, la, sort, page, size)
    ids = [u.id for u in units]
    thumbs, labels = thumbs_for(session, ids), labels_for(session, ids)
    link = (lambda p: urls.layer_sorted(model, layer, sort, p)) if sort != "unit" else \
        (lambda p: urls.layer(model, layer, p))
    data = {
        "model": model, "layer": {"name": la.name, "n_units": la.n_units, "module": la.module},
        "page": page, "pages": pages, "total": total, "sort": sort,
        "sorts": {"unit": urls.layer(model, layer),
                  "multimodal": urls.layer_sorted(model, layer, "multimodal") if scores is not None else None},
        "modality_url": urls.modality(model, layer) if scores is not None else None,
        "prev": link(page - 1) if page > 1 else None,
        "next": link(page + 1) if page < pages else None,
        "units": [{"unit": u.index, "url": urls.neuron(UnitKey(model, layer, u.index)),
                   "thumb": thumbs.get(u.id), "label": labels.get(u.id, {}).get("text"),
                   "label_auto": labels.get(u.id, {}).get("auto", False),
                   "multimodality": score_of(scores, u.index)} for u in units],
    }
    return respond(request, "layer.html", data)


def score_of(scores, index: int) -> float | None:
    return None if scores is None or index >= len(scores) else round(float(scores[index]), 3)


def page_units(session, cache, la, sort: str, page: int, size: int):
    """One page of the layer's units in the asked order, and the multimodality scores (None if not computed)."""
    from app.modality import layer_profiles

    profiles = layer_profiles(session, cache, la)
    scores = None if profiles is None else np.asarray(profiles.score)
    if sort == "multimodal" and scores is None:
        raise NotFound(f"{la.model.name} {la.name} has no multimodality scores yet: run `microscope worker modality`.",
                       [("by unit", urls.layer(la.model.name, la.name))])
    if sort == "unit":
        return session.scalars(select(Unit).where(Unit.layer_id == la.id).order_by(Unit.index)
                               .offset((page - 1) * size).limit(size)).all(), scores
    order = [int(i) for i in np.argsort(-scores, kind="stable")[(page - 1) * size:page * size]]
    found = {u.index: u for u in session.scalars(select(Unit).where(Unit.layer_id == la.id, Unit.index.in_(order)))}
    return [found[i] for i in order if i in found], scores


UNIT_CONTEXT = (  # built once: the neuron page's first statement, with its unit as bound parameters
    select(Model.id, Model.name, Layer.id, Layer.name, Layer.n_units, Unit.id, Unit.index, UnitStats.unit_id,
           *(getattr(UnitStats, f) for f in Stats._fields))
    .join(Layer, Layer.model_id == Model.id)
    .join(Unit, Unit.layer_id == Layer.id).outerjoin(UnitStats, UnitStats.unit_id == Unit.id)
    .where(Model.name == bindparam("model"), Layer.name == bindparam("layer"), Unit.index == bindparam("index"),
           Unit.index < Layer.n_units)
)


def unit_context(session, cache, model: str, layer: str, unit: str) -> UnitContext:
    """Model, layer, unit and statistics in one joined Core SELECT (plain rows: no ORM objects to build); a
    miss goes through get_unit for its 404/422."""
    try:
        index = parse_unit(unit)
    except KeyError_:
        index = None
    row = None if index is None or index >= 2**31 else session.connection().execute(  # beyond INTEGER: a 404
        UNIT_CONTEXT, {"model": model, "layer": layer, "index": index}).first()
    if row is None:
        get_unit(session, model, layer, unit)  # raises, naming what exists
    m, la, u = ModelRef(*row[0:2]), LayerRef(*row[2:5], model_id=row[0]), UnitRef(*row[5:7])
    stats = Stats(*row[8:]) if row[7] is not None else None
    return UnitContext(m, la, u, UnitKey(m.name, la.name, u.index), stats, cache)


@router.get("/models/{model}/{layer}/{unit}", name="neuron")
async def neuron_page(request: Request, model: str, layer: str, unit: str):
    """The neuron card, afresh: session, reads and rendering in one thread-pool call (a `def` route with the
    session dependency costs three hops to the pool and back, each more than this page's SQL on SQLite)."""
    return await run_in_threadpool(render_neuron, request, model, layer, unit)


def render_neuron(request: Request, model: str, layer: str, unit: str):
    with request.app.state.sessions() as session:
        read_snapshot(session)
        return neuron_response(request, session, request.app.state.settings, model, layer, unit)


def neuron_response(request: Request, session, settings, model: str, layer: str, unit: str):
    ctx = unit_context(session, request.app.state.cache, model, layer, unit)
    la, u, key = ctx.layer, ctx.unit, ctx.key
    loaded = load_sections(session, ctx, all_sections())
    sections = [{"name": sec.name, "title": sec.title, "template": sec.template, "empty": sec.empty,
                 "data": loaded[sec.name]} for sec in all_sections()]
    base = settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")
    data = {
        "key": key.path, "model": key.model, "layer": key.layer, "unit": key.unit,
        "title": neuron_title(key, loaded.get("labels")),
        "url": urls.neuron(key), "share_url": base + urls.neuron(key),
        "prev": urls.neuron(UnitKey(model, layer, u.index - 1)) if u.index > 0 else None,
        "next": urls.neuron(UnitKey(model, layer, u.index + 1)) if u.index + 1 < la.n_units else None,
        "layer_url": urls.layer(model, layer, page=u.index // settings.page_size + 1),
        "range": range_text(key.model, la.name, la.n_units),
        "og_image": og_image(base, loaded),
        "sections": loaded,
    }
    return respond(request, "neuron.html", data, section_list=sections)


def neuron_title(key: UnitKey, labels: dict | None) -> str:
    label = labels and ((labels.get("human") or {}).get("text") or (labels.get("auto") or {}).get("text"))
    return f"{key.model} {key.layer} unit {key.unit}" + (f" — {label}" if label else "")


def og_image(base: str, sections: dict) -> str | None:
    fv = sections.get("featurevis") or {}
    ex = sections.get("examples") or {}
    url = (fv.get("plain") or {}).get("url") or next((e["image"] for e in ex.get("top", [])), None)
    return base + url if url else None
