"""Home, model, layer grid and neuron pages: the hierarchy that stable URLs mirror."""
from functools import partial

import numpy as np
from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from app import urls
from app.deps import SessionDep, SettingsDep
from app.lookup import NotFound, get_layer, get_model, get_unit, range_text
from app.pagecache import CacheableDep
from app.sections import UnitContext, all_sections, read_page
from app.web import respond, wants_json
from store.keys import KeyError_, UnitKey, parse_unit
from store.schema import FeatureVis, Label, Model, Unit

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


@router.get("/models/{model}/{layer}/{unit}", name="neuron")
async def neuron_page(request: Request, model: str, layer: str, unit: str):
    """The neuron card, afresh: its one statement and the rendering, by default right on the event loop. A page
    is ~2 ms of Python around one short SELECT; handing it to a worker thread and back cost 0.6–1.0 ms more CPU
    a page under load (thread wake-ups and GIL handoffs with the loop), a fifth or more of its price. With
    `page_threads` > 0 it runs in the thread pool instead, for a database whose round trips are long."""
    render = partial(render_neuron, request, model, layer, unit)
    if request.app.state.settings.page_threads <= 0 and pool_has_room(request.app.state.engine.pool):
        return render()
    return await to_thread.run_sync(render, limiter=page_limiter(request.app))


def pool_has_room(pool) -> bool:
    """Whether a checkout now would not wait: an idle connection, or room to open one. When the pool is
    exhausted (every connection in a view of the thread pool) the page waits in a thread, not on the event
    loop: the loop waiting would hold up every response the server is sending, on a busy SQLite store for up
    to the pool's 30 s timeout, then fail those requests."""
    if not hasattr(pool, "checkedin") or not hasattr(pool, "_max_overflow"):
        return True  # no queue to wait on (SingletonThreadPool, NullPool, StaticPool)
    return pool.checkedin() > 0 or pool.overflow() < pool._max_overflow


def page_limiter(app) -> CapacityLimiter:
    """`page_threads` neuron pages in the thread pool at once, never more than the engine's pool keeps
    connections: more would make the pool open and close overflow connections under load (on Postgres a new
    backend each time, whose statements are not prepared yet)."""
    limiter = getattr(app.state, "page_limiter", None)
    if limiter is None:
        pool_size = getattr(app.state.engine.pool, "size", lambda: 10)()
        width = min(app.state.settings.page_threads, pool_size)
        limiter = app.state.page_limiter = CapacityLimiter(max(1, width))
    return limiter


def render_neuron(request: Request, model: str, layer: str, unit: str):
    app = request.app
    try:
        index = parse_unit(unit)
    except KeyError_:
        index = None
    found = None
    if index is not None and index < 2**31:  # beyond INTEGER: get_unit's 404
        found = read_unit_page(app, UnitKey(model, layer, index), twin=wants_json(request))
    if found is None:
        with app.state.sessions() as session:
            get_unit(session, model, layer, unit)  # raises, naming what exists
    return neuron_response(request, app.state.settings, *found)


def read_unit_page(app, key: UnitKey, twin: bool):
    """read_page on a connection of its own, tried once more on a new connection if the database dropped the
    first (a Postgres restart while the site is busy: the pool then replaces all its connections)."""
    for attempt in (1, 2):
        try:
            with one_statement(app.state.engine) as conn:
                return read_page(conn, key, app.state.cache, twin=twin)
        except DBAPIError as e:
            if not e.connection_invalidated or attempt == 2:
                raise


def one_statement(engine) -> Connection:
    """A connection for a page that is one SELECT, which sees one snapshot of the store by itself. On Postgres in
    autocommit, so no BEGIN and ROLLBACK round trips around it; pysqlite begins no transaction for a SELECT
    anyway (and switching its isolation level would make it prepare the statement anew each time)."""
    conn = engine.connect()
    return conn.execution_options(isolation_level="AUTOCOMMIT") if conn.dialect.name == "postgresql" else conn


def neuron_response(request: Request, settings, ctx: UnitContext, loaded: dict):
    la, u, key = ctx.layer, ctx.unit, ctx.key
    sections = [{"name": sec.name, "title": sec.title, "template": sec.template, "empty": sec.empty,
                 "data": loaded[sec.name]} for sec in all_sections()]
    base = settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")
    data = {
        "key": key.path, "model": key.model, "layer": key.layer, "unit": key.unit,
        "title": neuron_title(key, loaded.get("labels")),
        "url": urls.neuron(key), "share_url": base + urls.neuron(key),
        "prev": urls.neuron(UnitKey(key.model, key.layer, u.index - 1)) if u.index > 0 else None,
        "next": urls.neuron(UnitKey(key.model, key.layer, u.index + 1)) if u.index + 1 < la.n_units else None,
        "layer_url": urls.layer(key.model, key.layer, page=u.index // settings.page_size + 1),
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
