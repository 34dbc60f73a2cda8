"""Typographic attack pages: stored results of the attack lab and the Stroop test, and a live lab.

The lab runs the model on the server's probe thread (app/probe.py, shared with the live probes) and
reuses the probes' upload checks (app/probe_images.py); these views only validate, read the store and render.
"""
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import urls
from app.deps import CacheDep, SessionDep
from app.lookup import NotFound, get_model
from app.probe import ProbeBusy, ProbeUnavailable, engine_of, spec_for
from app.probe_images import MAX_BYTES, BadImage, read_image
from app.views.probe import parse_k, probe_error, uploaded_image
from app.web import error_page, respond
from store.schema import Image, Model, Run

router = APIRouter()


def attack_run(run: Run) -> dict:
    r = run.report or {}
    return {"id": run.id, "finished_at": run.finished_at, "code_version": run.code_version,
            "images": r.get("images") or (run.settings or {}).get("images"), "n_images": r.get("n_images"),
            "skipped": r.get("skipped", {}), "labels": len(r.get("labels", [])), "template": r.get("template"),
            "clean_accuracy": r.get("clean_accuracy"), "attacks": r.get("attacks", []),
            "examples": [{**e, "before": urls.cache(e["before"]), "after": urls.cache(e["after"])}
                         for e in r.get("examples", [])]}


def stroop_run(run: Run) -> dict:
    r = run.report or {}
    return {"id": run.id, "finished_at": run.finished_at, "template": r.get("template"),
            "colours": r.get("colours", []), "scores": r.get("scores", {}), "matrix": r.get("matrix", []),
            "sheet": urls.cache(r.get("sheet"))}


def done_runs(session, model_id: int, stage: str) -> list[Run]:
    return list(session.scalars(select(Run).where(Run.model_id == model_id, Run.stage == stage,
                                                  Run.status == "done").order_by(Run.id.desc())))


@router.get("/models/{model}/attacks", name="attacks")
def attacks_page(request: Request, session: SessionDep, model: str):
    m = get_model(session, model)
    attacks = [attack_run(r) for r in done_runs(session, m.id, "typographic")]
    stroop = [stroop_run(r) for r in done_runs(session, m.id, "stroop")[:1]]
    return respond(request, "attacks.html", {
        "model": m.name, "runs": attacks, "stroop": stroop[0] if stroop else None,
        "lab_url": urls.attack_lab(m.name),
        "empty": f"No typographic attack run yet: run `microscope worker typographic {m.name} IMAGES`.",
        "stroop_empty": f"No Stroop test yet: run `microscope worker stroop {m.name}`."})


# -- the live lab ----------------------------------------------------------------------------------

MAX_TEXT, MAX_LABELS, MAX_LABEL = 40, 300, 60
STORED_IMAGES = 24


def check_text(text: str) -> str:
    """The attack: TEXT or TEXT=CLASS, short and printable, else BadImage (422) saying why."""
    text = " ".join(text.split())
    if not text:
        return ""
    if len(text) > MAX_TEXT or not text.isprintable():
        raise BadImage(f"The attack text must be at most {MAX_TEXT} printable characters.")
    text_part, sep, target = text.partition("=")
    if not text_part.strip() or (sep and not target.strip()):
        raise BadImage("Write the attack as TEXT or TEXT=CLASS, both non-empty.")
    return text


def check_labels(raw: str) -> list[str]:
    """Comma-separated class names (empty: the default set), each short and printable."""
    labels = list(dict.fromkeys(" ".join(p.split()) for p in raw.split(",") if p.strip()))
    if len(labels) > MAX_LABELS:
        raise BadImage(f"At most {MAX_LABELS} classes, got {len(labels)}.")
    bad = [lab for lab in labels if len(lab) > MAX_LABEL or not lab.isprintable()]
    if bad:
        raise BadImage(f"Class names must be at most {MAX_LABEL} printable characters: {bad[0][:80]!r}.")
    return labels


def default_labels(session: Session, model: Model) -> tuple[list[str], str]:
    """The classes of the model's newest attack run, or ImageNet's (chosen on the probe thread)."""
    runs = done_runs(session, model.id, "typographic")
    if runs and runs[0].report.get("labels"):
        return list(runs[0].report["labels"]), f"the classes of attack run {runs[0].id}"
    return [], "the 1,000 ImageNet classes"


def lab_data(session: Session, m: Model, text: str, labels: list[str], k: int) -> dict:
    stored = session.scalars(select(Image).order_by(Image.id.desc()).limit(STORED_IMAGES)).all()
    chosen, where = (labels, "your classes") if labels else default_labels(session, m)
    return {"model": m.name, "text": text, "labels": ", ".join(labels), "k": k, "label_source": where,
            "max_mb": MAX_BYTES // 1_000_000, "results_url": urls.attacks(m.name), "result": None,
            "stored": [{"id": i.id, "caption": i.caption, "thumb": urls.cache(i.thumb or i.path)} for i in stored],
            "_classes": chosen}


def run_lab(request: Request, session: Session, data: dict, m: Model, img, source: dict):
    classes = data.pop("_classes")
    if not data["text"]:
        return error_page(request, 422, "Type the attack text (a word, or TEXT=CLASS).")
    try:
        spec = spec_for(session, m)
        result = engine_of(request.app).typographic_lab(spec, img, data["text"], classes, data["k"])
    except (ProbeBusy, ProbeUnavailable) as e:
        return probe_error(request, e)
    after_top = result["after"][0]["label"] if result["after"] else None
    before_top = result["before"][0]["label"] if result["before"] else None
    data["result"] = {**result, "source": source, "succeeded": after_top == result["target"] != before_top}
    return respond(request, "attack_lab.html", data)


@router.get("/models/{model}/attacks/try", name="attack_lab")
def lab_get(request: Request, session: SessionDep, cache: CacheDep, model: str,
            image_id: int | None = Query(None, ge=1, le=2**31 - 1),
            text: str = Query("", max_length=200), labels: str = Query("", max_length=20000),
            k: int = Query(5, ge=1, le=20)):
    m = get_model(session, model)
    try:
        data = lab_data(session, m, check_text(text), check_labels(labels), k)
    except BadImage as e:
        return probe_error(request, e)
    if image_id is None:
        data.pop("_classes")
        return respond(request, "attack_lab.html", data)
    row = session.get(Image, image_id)
    path = cache.resolve(row.path) if row is not None else None
    if path is None:
        raise NotFound(f"No stored image {image_id}" + (" in the cache" if row else "") + ".",
                       [("pick another", urls.attack_lab(m.name))])
    try:
        img = read_image(path.read_bytes())
    except BadImage as e:
        return probe_error(request, e)
    return run_lab(request, session, data, m, img, {"image_id": image_id, "caption": row.caption})


@router.post("/models/{model}/attacks/try")
async def lab_post(request: Request, model: str):
    """An uploaded image (multipart field `file`) with `text`, optional `labels` and `k`."""
    try:
        form, img, filename = await uploaded_image(request)
        text, labels = check_text(str(form.get("text") or "")), check_labels(str(form.get("labels") or "")[:20000])
        k = parse_k(form.get("k"), default=5, most=20)
    except BadImage as e:
        return probe_error(request, e)
    return await run_in_threadpool(_post_lab, request, model, text, labels, k, img, filename)


def _post_lab(request: Request, model: str, text: str, labels: list[str], k: int, img, filename: str):
    with request.app.state.sessions() as session:
        m = get_model(session, model)
        data = lab_data(session, m, text, labels, k)
        return run_lab(request, session, data, m, img, {"upload": filename[:200]})
