"""Concept pages of a layer: its modality summary (/models/M/L/modality) and concept directions
(/models/M/L/direction?q=…, saved with POST /models/M/L/directions). Registered before the browse router,
whose /models/{model}/{layer}/{unit} would catch these URLs.
"""
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app import urls
from app.activations import ARTIFACT as MATRIX
from app.activations import ActivationMatrix, MatrixError, sha_range
from app.deps import CacheDep, SessionDep, SettingsDep
from app.directions import (
    PROJECTIONS,
    DirectionError,
    canonical,
    combine,
    extremes,
    image_scores,
    nearest_units,
    parse,
    profile_of,
    row_norms,
)
from app.forms import body_of, done
from app.lookup import NotFound, get_layer
from app.modality import MODALITIES, heat, layer_profiles
from app.probe import ProbeBusy, ProbeUnavailable, engine_of, readout_artifact, spec_for
from app.sections.labels import label_scores
from app.security import EditorDep
from app.views.probe import probe_error, unit_cards
from app.web import error_page, respond
from store.keys import UnitKey
from store.schema import Artifact, Direction, Image, Label, Layer, Unit

router = APIRouter()
EXAMPLES = 12


@router.get("/models/{model}/{layer}/modality", name="modality")
def modality_page(request: Request, session: SessionDep, cache: CacheDep, model: str, layer: str):
    la = get_layer(session, model, layer)
    profiles = layer_profiles(session, cache, la)
    if profiles is None:
        raise NotFound(f"{model} {layer} has no modality profiles yet: run `microscope worker modality ARCH "
                       f"--name {model} --layer {layer}` (after `worker examples`).",
                       [(layer, urls.layer(model, layer))])
    summary = profiles.meta.get("summary", {})
    top = [(int(u), float(profiles.score[u])) for u in np.argsort(-np.asarray(profiles.score), kind="stable")[:24]]
    peak = max(summary.get("counts") or [1]) or 1
    data = {"model": model, "layer": layer, "summary": summary, "definition": profiles.meta.get("definition"),
            "null": profiles.meta.get("null"), "concept_set": profiles.meta.get("concept_set"),
            "n_concepts": len(profiles.concepts), "layer_url": urls.layer(model, layer),
            "sorted_url": urls.layer_sorted(model, layer, "multimodal"),
            "bars": [{"lo": lo, "hi": hi, "count": c, "null": n, "height": round(100 * c / peak, 1),
                      "null_height": round(100 * min(n, peak) / peak, 1)}
                     for lo, hi, c, n in zip(summary["edges"][:-1], summary["edges"][1:], summary["counts"],
                                             summary["null_share"], strict=True)],
            "top": unit_cards(session, model, layer, top)}
    for card, (u, _) in zip(data["top"], top, strict=True):
        card["best"] = profiles.concepts[int(profiles.arrays["best"][u])]
    return respond(request, "modality.html", data)


def layer_matrix(session: Session, settings, la: Layer) -> ActivationMatrix | None:
    art = session.scalar(select(Artifact).where(Artifact.model_id == la.model_id, Artifact.layer == la.name,
                                                Artifact.name == MATRIX))
    if art is None:
        return None
    try:
        return ActivationMatrix(Path(settings.data_dir) / art.path)
    except MatrixError:
        return None


def images_of(session: Session, hashes: list[int]) -> dict[int, Image]:
    """{content hash: stored image} for the rows' hashes that the image store holds."""
    if not hashes:
        return {}
    ranges = {h: sha_range(h) for h in set(hashes)}
    found = session.scalars(select(Image).where(or_(*(Image.sha256.between(lo, hi) for lo, hi in ranges.values()))))
    out = {}
    for image in found:
        for h, (lo, hi) in ranges.items():
            if lo <= image.sha256 < hi:
                out[h] = image
    return out


def example_cards(session: Session, matrix: ActivationMatrix, values: np.ndarray, rows: list[int]) -> list[dict]:
    hashes = matrix.hashes
    stored = images_of(session, [int(hashes[r]) for r in rows])
    cards = []
    for r in rows:
        image = stored.get(int(hashes[r]))
        cards.append({"row": r, "score": round(float(values[r]), 4),
                      "image": urls.cache(image.thumb or image.path) if image else None,
                      "full": urls.cache(image.path) if image else None,
                      "caption": image.caption if image else "", "source": image.source if image else ""})
    return cards


def direction_vector(request: Request, session: Session, cache, la: Layer, terms) -> tuple[np.ndarray, np.ndarray]:
    """(v in the embedding space, d = W v in the layer) through the live text probe and the stored read-out."""
    art = readout_artifact(session, la.model)
    if art is None or art.layer != la.name:
        have = f" (it has one for {art.layer})" if art is not None else ""
        raise NotFound(f"Directions are defined through the text read-out, and {la.model.name} has none for "
                       f"{la.name}{have}: run `microscope worker attribution`.",
                       [(art.layer, urls.direction(la.model.name, art.layer))] if art is not None else [])
    engine = engine_of(request.app)
    spec = spec_for(session, la.model, art)
    readout = engine.readout(cache, art)
    v = combine(terms, [engine.embed(spec, text) for _, text in terms])
    if readout.shape[1] != v.shape[0]:
        raise ProbeUnavailable(f"The stored read-out of {la.model.name} does not match its text tower: re-run "
                               "`microscope worker attribution`.")
    return v, readout @ v


@router.get("/models/{model}/{layer}/direction", name="direction")
def direction_page(request: Request, session: SessionDep, cache: CacheDep, settings: SettingsDep, model: str,
                   layer: str, q: str = Query("", max_length=500, description="a text or 'a - b + c'"),
                   k: int = Query(EXAMPLES, ge=1, le=64)):
    la = get_layer(session, model, layer)
    if not q.strip():
        return respond(request, "direction.html", {"model": model, "layer": layer, "q": "",
                                                   "saved": saved(session, la)})
    try:
        terms = parse(q)
    except DirectionError as e:
        return error_page(request, 422, f"Invalid direction q: {e}.")
    try:
        v, d = direction_vector(request, session, cache, la, terms)
    except (ProbeBusy, ProbeUnavailable) as e:
        return probe_error(request, e)
    query = canonical(terms)
    base = settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")
    readout = engine_of(request.app).readout(cache, readout_artifact(session, la.model))
    data = {"model": model, "layer": layer, "q": query, "terms": [{"sign": s, "text": t} for s, t in terms],
            "url": urls.direction(model, layer, query), "share_url": base + urls.direction(model, layer, query),
            "nearest": unit_cards(session, model, layer, nearest_units(readout, v, k)),
            "saved": saved(session, la), "this_saved": None, "featurevis": None}
    data.update(matrix_part(session, settings, la, query, d, readout, k))
    data.update(profile_part(session, cache, la, d))
    data["best_unit"] = best_unit(session, settings, cache, la, d, k)
    data.update(saved_part(session, la, query))
    return respond(request, "direction.html", data, modalities=MODALITIES, heat=heat)


def matrix_part(session: Session, settings, la: Layer, query: str, d: np.ndarray, readout: np.ndarray,
                k: int) -> dict:
    matrix = layer_matrix(session, settings, la)
    if matrix is None:
        return {"examples": None, "examples_empty": f"No activation matrix for {la.name} yet: run `microscope "
                                                     f"worker examples … --layer {la.name}`."}
    rectify = matrix.meta[0].get("signal") == "pre-relu"
    key = (str(matrix.folder), matrix.rows, id(readout))
    norms = PROJECTIONS.get(key, lambda: row_norms(matrix, readout, rectify))
    values = PROJECTIONS.get((*key, query), lambda: image_scores(matrix, d, norms, rectify))
    top, bottom = extremes(values, k)
    return {"examples": {"rows": matrix.rows, "rectified": rectify,
                         "top": example_cards(session, matrix, values, top),
                         "bottom": example_cards(session, matrix, values, bottom)}}


def profile_part(session: Session, cache, la: Layer, d: np.ndarray) -> dict:
    profiles = layer_profiles(session, cache, la)
    if profiles is None:
        return {"profile": None}
    out = profile_of(profiles, d)
    out["p99"] = profiles.meta.get("summary", {}).get("p99")
    return {"profile": out}


def best_unit(session: Session, settings, cache, la: Layer, d: np.ndarray, k: int) -> dict:
    """The single unit the direction weighs most (the text probe's top unit), shown beside it."""
    unit = int(np.argmax(d))
    out = unit_cards(session, la.model.name, la.name, [(unit, d[unit])])[0]
    out["share"] = round(float(d[unit] ** 2 / max(float(d @ d), 1e-12)), 4)  # of the direction's squared length
    matrix = layer_matrix(session, settings, la)
    if matrix is not None:
        values = matrix.columns([unit])[:, 0]
        out["top"] = example_cards(session, matrix, values, extremes(values, k)[0])
    profiles = layer_profiles(session, cache, la)
    if profiles is not None:
        out["multimodality"] = round(float(profiles.score[unit]), 3)
        out["best_concept"] = profiles.concepts[int(profiles.arrays["best"][unit])]
    return out


def saved(session: Session, la: Layer) -> list[dict]:
    rows = session.scalars(select(Direction).where(Direction.model_id == la.model_id, Direction.layer == la.name)
                           .order_by(Direction.name)).all()
    return [{"name": r.name, "q": r.query, "url": urls.direction(la.model.name, la.name, r.query)} for r in rows]


def saved_part(session: Session, la: Layer, query: str) -> dict:
    row = session.scalar(select(Direction).where(Direction.model_id == la.model_id, Direction.layer == la.name,
                                                 Direction.query == query))
    if row is None:
        return {}
    art = session.scalar(select(Artifact).where(Artifact.model_id == la.model_id, Artifact.layer == la.name,
                                                Artifact.name == f"direction-featurevis:{row.id}"))
    return {"this_saved": {"name": row.name, "author": row.author},
            "featurevis": urls.cache(art.path) if art is not None else None}


class DirectionIn(BaseModel):
    q: str = Field(min_length=1, max_length=500)
    name: str | None = Field(None, max_length=200)
    author: str | None = Field(None, max_length=128)


@router.post("/models/{model}/{layer}/directions")
def save_direction(request: Request, editor: EditorDep, session: SessionDep, model: str, layer: str,
                   body: DirectionIn = body_of(DirectionIn)):
    """Save a direction (curated): the worker's `directions` command then renders its feature visualization."""
    la = get_layer(session, model, layer)
    try:
        query = canonical(parse(body.q))
    except DirectionError as e:
        return error_page(request, 422, f"Invalid direction q: {e}.")
    row = session.scalar(select(Direction).where(Direction.model_id == la.model_id, Direction.layer == la.name,
                                                 Direction.query == query))
    if row is None:
        row = Direction(model_id=la.model_id, layer=la.name, query=query, name=(body.name or query)[:200],
                        author=editor.author(body.author))
        session.add(row)
        session.commit()
    return done(request, {"q": query, "name": row.name, "url": urls.direction(model, layer, query)},
                urls.direction(model, layer, query), 201)



@router.get("/models/{model}/{layer}/labels", name="layer_labels")
def layer_labels(request: Request, session: SessionDep, model: str, layer: str,
                 sort: str = Query("score", pattern="^(score|unit)$", description="score: most faithful first"),
                 source: str = Query("all", pattern="^(all|human|auto)$"),
                 min_score: float | None = Query(None, ge=0, le=1, description="only labels with AUC at least this")):
    """The layer's current labels with their faithfulness (held-out AUC), sorted and filtered by it."""
    la = get_layer(session, model, layer)
    rows = current_labels(session, la, source)
    if min_score is not None:
        rows = [r for r in rows if r["auc"] is not None and r["auc"] >= min_score]
    key = (lambda r: (r["auc"] is None, -(r["auc"] or 0), r["unit"])) if sort == "score" else (lambda r: r["unit"])
    rows.sort(key=key)
    data = {"model": model, "layer": layer, "sort": sort, "source": source, "min_score": min_score, "labels": rows,
            "layer_url": urls.layer(model, layer)}
    return respond(request, "layer_labels.html", data)


def current_labels(session: Session, la: Layer, source: str) -> list[dict]:
    """Each unit's current label per source, with its score row if the worker scored it."""
    q = (select(Unit.index, Label).join(Label, Label.unit_id == Unit.id).where(Unit.layer_id == la.id)
         .order_by(Label.version))
    if source != "all":
        q = q.where(Label.source == source)
    current: dict[tuple[int, str], Label] = {}
    for unit, label in session.execute(q).all():
        current[(unit, label.source)] = label  # later versions overwrite earlier ones
    scores = label_scores(session, [lab.id for lab in current.values()])
    out = []
    for (unit, src), label in current.items():
        s = scores.get(label.id)
        out.append({"unit": unit, "url": urls.neuron(UnitKey(la.model.name, la.name, unit)), "text": label.text,
                    "source": src, "author": label.author, "method": s.method if s else None,
                    "auc": None if s is None or s.score is None else round(s.score, 3)})
    return out
