from sqlalchemy import select
from sqlalchemy.orm import joinedload

from app import urls
from app.db import DatasetExample, Run
from app.sections import Section, UnitContext


def load(session, ctx: UnitContext):
    rows = session.scalars(
        select(DatasetExample)
        .options(joinedload(DatasetExample.image))
        .where(DatasetExample.unit_id == ctx.unit.id)
        .order_by(DatasetExample.sign.desc(), DatasetExample.rank)
    ).all()
    if not rows:
        return None
    run = session.get(Run, rows[0].run_id) if rows[0].run_id else None
    settings, report = (run.settings or {}, run.report or {}) if run else ({}, {})
    out = {"top": [], "bottom": [], "reduce": settings.get("reduce"), "signal": settings.get("signal"),
           "signal_text": settings.get("signal_text"),
           "images": report.get("images"), "run": run.id if run else None}
    for r in rows:
        out.setdefault(r.sign, []).append({
            "rank": r.rank,
            "activation": r.activation,
            "sigma": ctx.sigma(r.activation),
            "image": urls.cache(r.image.thumb or r.image.path),
            "full": urls.cache(r.image.path),
            "caption": r.image.caption,
            "source": r.image.source,
            "heatmap": r.heatmap,
            "heatmap_image": urls.cache(r.heatmap_image),
        })
    return out


SECTION = Section("examples", "Dataset examples", load,
                  "No dataset examples yet: run `microscope worker examples MODEL --corpus DIR`.")
