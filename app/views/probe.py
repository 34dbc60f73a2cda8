"""Live probes: type text → the neurons it is attributed to; upload an image → its top neurons with heatmaps.

Both run the model on the server's probe thread (app/probe.py); these views only read the store, do
numpy on the stored read-out and render. JSON twins: /probe.json?… and /probe/image.json?… (and a POST
to /probe/image with `Accept: application/json`).
"""
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from app import urls
from app.db import Artifact, Image, Model
from app.deps import CacheDep, SessionDep
from app.keys import UnitKey
from app.lookup import NotFound, get_model
from app.probe import ProbeBusy, ProbeUnavailable, engine_of, readout_artifact, spec_for
from app.probe_images import MAX_BYTES, OVERLAY_SIZE, BadImage, data_uri, model_view, overlay, read_image
from app.search import BadQuery, check_query
from app.views.browse import labels_for, thumbs_for
from app.web import error_page, respond

router = APIRouter()

NO_READOUT = ("No model in this store has a text read-out yet: run `microscope worker attribution ARCH "
              "--weights WEIGHTS --name MODEL` (it stores the matrix this page needs).")
STORED_IMAGES = 24


def text_models(session: Session) -> list[Model]:
    """Models with a stored read-out, by name."""
    return list(session.scalars(select(Model).join(Artifact, Artifact.model_id == Model.id)
                                .where(Artifact.name == "readout").order_by(Model.name).distinct()))


def image_models(session: Session) -> list[Model]:
    """Models registered with weights (the image probe needs no read-out)."""
    return list(session.scalars(select(Model).where(Model.weights.is_not(None)).order_by(Model.name)))


def unit_cards(session: Session, model: str, layer: str, rows: list[tuple[int, float]]) -> list[dict]:
    """Neuron cards (key, link, thumbnail, label, score) for (unit index, score) rows, in their order."""
    from app.search import unit_ids

    ids = unit_ids(session, model, layer, [u for u, _ in rows])
    thumbs, labels = thumbs_for(session, list(ids.values())), labels_for(session, list(ids.values()))
    cards = []
    for unit, score in rows:
        key, uid = UnitKey(model, layer, unit), ids.get(unit)
        label = labels.get(uid, {})
        cards.append({"unit": unit, "key": key.path, "url": urls.neuron(key), "score": round(float(score), 5),
                      "thumb": thumbs.get(uid), "label": label.get("text"), "label_auto": label.get("auto", False)})
    return cards


def probe_error(request: Request, exc: Exception):
    """ProbeUnavailable → its status (409 / 503), ProbeBusy → 503 with Retry-After, BadImage/BadQuery → 4xx."""
    if isinstance(exc, ProbeBusy):
        response = error_page(request, 503, exc.message)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, ProbeUnavailable | BadImage):
        return error_page(request, exc.status, exc.message)
    return error_page(request, 422, f"Invalid query: {exc}.")


def model_choices(models: list[Model], link) -> list[dict]:
    return [{"name": m.name, "arch": m.arch, "url": link(m.name)} for m in models]


@router.get("/probe", name="probe")
def text_probe(request: Request, session: SessionDep, cache: CacheDep,
               q: str = Query("", max_length=500, description="the text to attribute"),
               model: str | None = Query(None, max_length=128), k: int = Query(12, ge=1, le=100)):
    choices = text_models(session)
    name = model or (choices[0].name if choices else None)
    data = {"q": q, "model": name, "k": k, "models": model_choices(choices, lambda n: urls.probe(model=n)),
            "positive": [], "negative": [], "layer": None, "message": None if choices else NO_READOUT,
            "image_probe": urls.probe_image(model=name)}
    try:
        text = check_query(q)
    except BadQuery as e:
        return probe_error(request, e)
    if not text:
        return respond(request, "probe.html", data)
    if name is None:
        raise NotFound(NO_READOUT)
    m = get_model(session, name)
    art = readout_artifact(session, m)
    if art is None:
        raise NotFound(f"Model {m.name} has no text read-out: run `microscope worker attribution {m.arch} "
                       f"--weights WEIGHTS --name {m.name}`.",
                       [(c.name, urls.probe(text, model=c.name)) for c in choices])
    try:
        scores = attribution_scores(request, session, cache, m, art, text)
    except (ProbeBusy, ProbeUnavailable) as e:
        return probe_error(request, e)
    order = scores.argsort()
    top, bottom = order[::-1][:k], order[:k]
    cards = unit_cards(session, m.name, art.layer, [(int(i), scores[i]) for i in [*top, *bottom]])
    data.update(layer=art.layer, method=(art.meta or {}).get("method"), positive=cards[:len(top)],
                negative=cards[len(top):])
    return respond(request, "probe.html", data)


def attribution_scores(request: Request, session: Session, cache, model: Model, art: Artifact, text: str,
                       wait_s: float | None = None):
    """W · embedding(text) over the read-out's units (numpy here; the text tower runs on the probe thread)."""
    engine = engine_of(request.app)
    spec = spec_for(session, model, art)
    readout = engine.readout(cache, art)
    vec = engine.embed(spec, text, wait_s)
    if readout.shape[1] != vec.shape[0]:
        raise ProbeUnavailable(f"The stored read-out of {model.name} ({readout.shape[1]} dims) does not match its "
                               f"text tower ({vec.shape[0]} dims): re-run `microscope worker attribution`.")
    return readout @ vec


# -- image probe ---------------------------------------------------------------------------------------

def image_page_data(session: Session, name: str | None, k: int) -> dict:
    choices = image_models(session)
    name = name or (choices[0].name if choices else None)
    stored = session.scalars(select(Image).order_by(Image.id.desc()).limit(STORED_IMAGES)).all()
    return {"model": name, "k": k, "models": model_choices(choices, lambda n: urls.probe_image(model=n)),
            "stored": [{"id": i.id, "caption": i.caption, "thumb": urls.cache(i.thumb or i.path),
                        "url": urls.probe_image(model=name, image_id=i.id)} for i in stored],
            "max_mb": MAX_BYTES // 1_000_000, "result": None,
            "message": None if choices else "No model in this store was registered with weights, so none can be "
                                            "probed: register one with `microscope worker register ARCH --weights …`."}


def probe_image(request: Request, session: Session, data: dict, img, source: dict):
    """Run the image through the model's layer; the top-k units by their value (the one the dataset examples
    rank by), each with its heatmap."""
    if data["model"] is None:
        raise NotFound(data["message"])
    m = get_model(session, data["model"])
    try:
        spec = spec_for(session, m)
        means, acts, signal = engine_of(request.app).image_activations(spec, img)
    except (ProbeBusy, ProbeUnavailable) as e:
        return probe_error(request, e)
    top = means.argsort()[::-1][: data["k"]]
    view = model_view(img, max(m.image_size, OVERLAY_SIZE))  # the model's crop, sharp enough to look at
    vmax = float(acts[top].max()) if len(top) else 0.0
    cards = unit_cards(session, m.name, spec.layer, [(int(u), means[u]) for u in top])
    for card, u in zip(cards, top, strict=True):
        card["heatmap"] = [[round(float(v), 4) for v in row] for row in acts[u]]
        card["overlay"] = data_uri(overlay(view, acts[u], vmax))
    data["result"] = {"layer": spec.layer, "source": source, "image": data_uri(view), "signal": signal,
                      "grid": list(acts.shape[1:]), "units": cards}
    return respond(request, "probe_image.html", data)


@router.get("/probe/image", name="probe_image")
def image_probe_get(request: Request, session: SessionDep, cache: CacheDep,
                    model: str | None = Query(None, max_length=128),
                    image_id: int | None = Query(None, ge=1, le=2**31 - 1), k: int = Query(12, ge=1, le=64)):
    data = image_page_data(session, model, k)
    if image_id is None:
        return respond(request, "probe_image.html", data)
    row = session.get(Image, image_id)
    if row is None:
        raise NotFound(f"No stored image {image_id}.", [("pick another", urls.probe_image(model=data["model"]))])
    path = cache.resolve(row.path)
    if path is None:
        raise NotFound(f"Stored image {image_id} is missing from the cache ({row.path}).")
    try:
        img = read_image(path.read_bytes())
    except BadImage as e:
        return probe_error(request, e)
    return probe_image(request, session, data, img, {"image_id": image_id, "caption": row.caption})


@router.post("/probe/image")
async def image_probe_post(request: Request):
    """An uploaded image (multipart field `file`, plus `model` and `k`): read at most MAX_BYTES of the body."""
    try:
        form, img, filename = await uploaded_image(request)
        model, k = str(form.get("model") or "") or None, parse_k(form.get("k"))
    except BadImage as e:
        return probe_error(request, e)
    if model is not None and len(model) > 128:
        return error_page(request, 422, "Invalid request: model: at most 128 characters.")
    return await run_in_threadpool(_post_probe, request, model, k, img, filename)


def _post_probe(request: Request, model: str | None, k: int, img, filename: str):
    with request.app.state.sessions() as session:
        data = image_page_data(session, model, k)
        return probe_image(request, session, data, img, {"upload": filename[:200]})


def parse_k(value, default: int = 12, most: int = 64) -> int:
    if value in (None, ""):
        return default
    if not str(value).isdigit() or not 1 <= int(value) <= most:
        raise BadImage(f"k must be a whole number from 1 to {most}, got {str(value)[:20]!r}")
    return int(value)


async def uploaded_image(request: Request):
    """(form, image, filename) of a multipart upload whose image is the field `file`; BadImage otherwise."""
    form = await capped_form(request, MAX_BYTES + 64 * 1024)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadImage("Send the image as the multipart form field `file`.")
    return form, read_image(await upload.read(MAX_BYTES + 1)), upload.filename or "upload"


async def capped_form(request: Request, limit: int):
    """The multipart form, refusing a body over `limit` bytes before it is spooled anywhere."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadImage(f"The upload is {int(declared) / 1e6:.1f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB.", 413)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadImage("Upload the image as multipart/form-data (an HTML file form).", 415)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadImage(f"The upload is over the {MAX_BYTES / 1e6:.0f} MB limit.", 413)
        chunks.append(chunk)
    body = b"".join(chunks)

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception as e:  # noqa: BLE001 — a malformed multipart body is the client's error
        raise BadImage(f"The form could not be read: {e}") from None

