"""The neuron card's dataset examples: top and most negative images, each with its spatial map.

Maps come from the unit's one `unit_heatmaps` row (app/heatmaps.py). Each example carries the map as
numbers (`heatmap`, for the JSON twin), its quantized bytes for the canvas the page draws
(`heat`: base64 uint8, static/heatmaps.js), and the URL of the server-rendered overlay PNG.
"""
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from app import urls
from app.db import DatasetExample, Run, UnitHeatmaps
from app.heatmaps import Heatmaps, unpack
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
    stored, run = heatmaps_and_run(session, ctx.unit.id, rows[0].run_id)
    settings, report = (run.settings or {}, run.report or {}) if run else ({}, {})
    heat = unpack(stored) if stored else None
    out = {"top": [], "bottom": [], "reduce": settings.get("reduce"), "signal": settings.get("signal"),
           "signal_text": settings.get("signal_text"),
           "images": report.get("images"), "run": run.id if run else None,
           "grid": list(heat.maps.shape[1:]) if heat else None}
    for r in rows:
        out.setdefault(r.sign, []).append(example(ctx, r, heat))
    return out


def heatmaps_and_run(session, unit_id: int, run_id: int | None) -> tuple[UnitHeatmaps | None, Run | None]:
    """The unit's heatmaps row and the examples' run, in one query."""
    found = session.execute(select(UnitHeatmaps, Run).select_from(UnitHeatmaps).outerjoin(Run, Run.id == run_id)
                            .where(UnitHeatmaps.unit_id == unit_id)).first()
    if found is not None:
        return found[0], found[1]
    return None, session.get(Run, run_id) if run_id else None


def example(ctx: UnitContext, r: DatasetExample, heat: Heatmaps | None) -> dict:
    i = heat.row(r.sign, r.rank) if heat else None
    out = {"rank": r.rank, "activation": r.activation, "sigma": ctx.sigma(r.activation),
           "image": urls.cache(r.image.thumb or r.image.path), "full": urls.cache(r.image.path),
           "caption": r.image.caption, "source": r.image.source, "heatmap": None, "heat": None,
           "heatmap_image": None}
    if i is not None:
        values = heat.values(i)
        out["heatmap"] = [[float(f"{v:.4g}") for v in line] for line in values.tolist()]
        out["heat"] = {"q": heat.b64(i), "lo": float(heat.lo[i]), "hi": float(heat.hi[i])}
        out["heatmap_image"] = urls.example_heatmap(ctx.key, r.sign, r.rank)
    return out


SECTION = Section("examples", "Dataset examples", load,
                  "No dataset examples yet: run `microscope worker examples MODEL --corpus DIR`.")
