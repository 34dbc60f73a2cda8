"""Typographic attack pages: stored results of the attack lab and the Stroop test, and a live lab."""
from fastapi import APIRouter, Request
from sqlalchemy import select

from app import urls
from app.db import Run
from app.deps import SessionDep
from app.lookup import get_model
from app.web import respond

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
