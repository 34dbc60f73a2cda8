"""GET /api/units: the units of the store as a paginated JSON listing, filtered by model, layer, label, family
and activation statistics, in a stable order (ties always broken by the neuron key), with a `next` link.

Built for scripts and notebooks (docs/export.md): every filter is a query parameter, so a URL names a result;
a filter naming something the store does not have is a 422 that says what it does have.
"""
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, and_, exists, func, select
from sqlalchemy.orm import Session

from app import urls
from app.db import Family, Label, Layer, Model, Unit, UnitFamily, UnitStats
from app.deps import SessionDep
from app.families import get_family
from app.keys import UnitKey
from app.lookup import NotFound
from app.pagecache import CacheableDep
from app.web import error_page

router = APIRouter(dependencies=[CacheableDep])  # a pure function of the store and the URL

Sort = Literal["key", "max_act", "-max_act", "max_sigma", "-max_sigma", "label"]
MAX_PER_PAGE = 500


class UnitLabel(BaseModel):
    text: str
    source: str  # human | auto (auto only when there is no human label)


class UnitFamilyOut(BaseModel):
    name: str
    source: str


class UnitStatsOut(BaseModel):
    n: int
    mean: float
    std: float
    min: float
    max: float
    max_sigma: float | None


class UnitOut(BaseModel):
    key: str
    model: str
    layer: str
    unit: int
    url: str
    json_url: str
    label: UnitLabel | None
    families: list[UnitFamilyOut]
    stats: UnitStatsOut | None


class UnitsPage(BaseModel):
    units: list[UnitOut]
    total: int
    page: int
    per_page: int
    pages: int
    next: str | None
    prev: str | None
    filters: dict[str, str | float | None]


class BadFilter(ValueError):
    """A filter naming what the store lacks (answered 422 with this message)."""


def current_labels(source: str):
    """(unit_id, text) of each unit's newest label of `source`, as a subquery."""
    newest = (select(Label.unit_id, func.max(Label.version).label("version")).where(Label.source == source)
              .group_by(Label.unit_id).subquery())
    return (select(Label.unit_id, Label.text).join(newest, and_(Label.unit_id == newest.c.unit_id,
                                                                Label.version == newest.c.version))
            .where(Label.source == source).subquery())


def max_sigma() -> ColumnElement:
    return UnitStats.max / func.nullif(UnitStats.std, 0)


def base_query():
    human, auto = current_labels("human"), current_labels("auto")
    label = func.coalesce(human.c.text, auto.c.text)
    query = (select(Unit.id, Unit.index, Layer.name, Model.name, UnitStats.n, UnitStats.mean, UnitStats.std,
                    UnitStats.min, UnitStats.max, human.c.text, auto.c.text)
             .join(Layer, Unit.layer_id == Layer.id).join(Model, Layer.model_id == Model.id)
             .outerjoin(UnitStats, UnitStats.unit_id == Unit.id)
             .outerjoin(human, human.c.unit_id == Unit.id).outerjoin(auto, auto.c.unit_id == Unit.id)
             .where(Unit.index < Layer.n_units))
    return query, label


def check_names(session: Session, model: str | None, layer: str | None) -> None:
    if model is not None and session.scalar(select(Model.id).where(Model.name == model)) is None:
        have = ", ".join(session.scalars(select(Model.name).order_by(Model.name))) or "none yet"
        raise BadFilter(f"model: no model {model!r}; models in this store: {have}")
    if layer is not None:
        where = select(Layer.name).join(Model, Layer.model_id == Model.id)
        where = where.where(Model.name == model) if model is not None else where
        names = sorted(set(session.scalars(where)))
        if layer not in names:
            raise BadFilter(f"layer: no layer {layer!r}{' in ' + model if model else ''}; layers: "
                            f"{', '.join(names) or 'none yet'}")


def filtered(session: Session, query: Select, label_col, model, layer, label, family, min_max_act, max_max_act,
             min_max_sigma) -> Select:
    check_names(session, model, layer)
    if model is not None:
        query = query.where(Model.name == model)
    if layer is not None:
        query = query.where(Layer.name == layer)
    if label is not None:
        query = query.where(func.lower(label_col).contains(label.lower(), autoescape=True))
    if family is not None:
        try:
            fam = get_family(session, family)
        except NotFound as e:
            raise BadFilter(f"family: {e.message}") from None
        query = query.where(exists().where(UnitFamily.unit_id == Unit.id, UnitFamily.family_id == fam.id))
    if min_max_act is not None:
        query = query.where(UnitStats.max >= min_max_act)
    if max_max_act is not None:
        query = query.where(UnitStats.max <= max_max_act)
    if min_max_sigma is not None:
        query = query.where(max_sigma() >= min_max_sigma)
    return query


def ordered(query: Select, sort: str, label_col) -> Select:
    key = [Model.name, Layer.position, Unit.index]
    first = {"key": [], "max_act": [UnitStats.max.asc().nulls_last()], "-max_act": [UnitStats.max.desc().nulls_last()],
             "max_sigma": [max_sigma().asc().nulls_last()], "-max_sigma": [max_sigma().desc().nulls_last()],
             "label": [label_col.asc().nulls_last()]}[sort]
    return query.order_by(*first, *key)


def families_of(session: Session, unit_ids: list[int]) -> dict[int, list[dict]]:
    rows = session.execute(select(UnitFamily.unit_id, Family.name, UnitFamily.source)
                           .join(Family, UnitFamily.family_id == Family.id).where(UnitFamily.unit_id.in_(unit_ids))
                           .order_by(UnitFamily.source.desc(), Family.position, Family.name)).all()
    out: dict[int, list[dict]] = {}
    for uid, name, source in rows:
        out.setdefault(uid, []).append({"name": name, "source": source})
    return out


def unit_out(row, families: dict[int, list[dict]]) -> dict:
    uid, index, layer, model, n, mean, std, lo, hi, human, auto = row
    key = UnitKey(model, layer, index)
    label = {"text": human, "source": "human"} if human is not None else (
        {"text": auto, "source": "auto"} if auto is not None else None)
    stats = None if n is None else {"n": n, "mean": mean, "std": std, "min": lo, "max": hi,
                                    "max_sigma": hi / std if std else None}
    return {"key": key.path, "model": model, "layer": layer, "unit": index, "url": urls.neuron(key),
            "json_url": urls.as_json(urls.neuron(key)), "label": label, "families": families.get(uid, []),
            "stats": stats}


@router.get("/api/units", name="units_api", response_model=UnitsPage)
def units_api(request: Request, session: SessionDep,
              model: str | None = Query(None, description="model name"),
              layer: str | None = Query(None, description="layer name (of `model`, or of any model)"),
              label: str | None = Query(None, max_length=200,
                                        description="current label (human, else auto) contains this, any case"),
              family: str | None = Query(None, description="member of this family (human or auto)"),
              min_max_act: float | None = Query(None, allow_inf_nan=False, description="max activation ≥"),
              max_max_act: float | None = Query(None, allow_inf_nan=False, description="max activation ≤"),
              min_max_sigma: float | None = Query(None, allow_inf_nan=False,
                                                  description="max activation in σ (max / std) ≥"),
              sort: Sort = Query("key", description="order; ties by model, layer, unit"),
              page: int = Query(1, ge=1, le=10**6), per_page: int = Query(50, ge=1, le=MAX_PER_PAGE)):
    """Units with their key, links, current label, families and activation statistics, a page at a time."""
    filters = {"model": model, "layer": layer, "label": label, "family": family, "min_max_act": min_max_act,
               "max_max_act": max_max_act, "min_max_sigma": min_max_sigma}
    query, label_col = base_query()
    try:
        query = filtered(session, query, label_col, **filters)
    except BadFilter as e:
        return error_page(request, 422, f"Invalid filter: {e}")
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.execute(ordered(query, sort, label_col).offset((page - 1) * per_page).limit(per_page)).all()
    families = families_of(session, [r[0] for r in rows])
    pages = max(1, -(-total // per_page))
    link = {k: v for k, v in filters.items() if v is not None} | {"sort": sort if sort != "key" else None,
                                                                    "per_page": per_page if per_page != 50 else None}
    return JSONResponse({
        "units": [unit_out(r, families) for r in rows], "total": total, "page": page, "per_page": per_page,
        "pages": pages, "filters": filters,
        "next": urls.units_api(page=page + 1, **link) if page < pages else None,
        "prev": urls.units_api(page=page - 1, **link) if 1 < page <= pages else None,
    })

