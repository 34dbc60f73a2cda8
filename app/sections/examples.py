"""The neuron card's dataset examples: top and most negative images, each with its spatial map.

Maps come from the unit's one `unit_heatmaps` row (app/heatmaps.py), read as scalar columns of the page's one
statement. Each example carries the map as numbers (`heatmap`, for the JSON twin), its quantized bytes for
the canvas the page draws (`heat`: base64 uint8, static/heatmaps.js), and the URL of the server-rendered
overlay PNG.
"""
from sqlalchemy import select

from app import urls
from app.heatmaps import Heatmaps, unpack
from app.sections import Section, UnitContext
from app.sections.rows import PAGE_UNIT, UNIT_ID, json_rows
from store.schema import DatasetExample, Image, Run, UnitHeatmaps

HEAT_COLUMNS = ("n_top", "height", "width", "maps", "lo", "hi")


def columns(dialect: str) -> dict:
    uid = UNIT_ID
    rows = (select(DatasetExample.sign, DatasetExample.rank, DatasetExample.activation, DatasetExample.run_id,
                   Image.id.label("image_id"), Image.thumb, Image.path, Image.caption, Image.source)
            .join(Image, DatasetExample.image_id == Image.id).where(DatasetExample.unit_id == uid))
    runs = select(Run.id, Run.settings, Run.report).where(
        Run.id.in_(select(DatasetExample.run_id).where(DatasetExample.unit_id == uid)))
    heat = {f"heat_{c}": getattr(UnitHeatmaps, c) for c in HEAT_COLUMNS}  # a join of the page's statement
    return {"rows": json_rows(rows, dialect), "runs": json_rows(runs, dialect), **heat}


def heatmaps_of(values: dict) -> Heatmaps | None:
    stored = {c: values[f"heat_{c}"] for c in HEAT_COLUMNS}
    return unpack(stored) if stored["maps"] is not None else None


def example(r: dict, ctx: UnitContext, heat: Heatmaps | None) -> dict:
    out = {"rank": r["rank"], "activation": r["activation"], "sigma": ctx.sigma(r["activation"]),
           "image": urls.cache(r["thumb"] or r["path"]), "full": urls.cache(r["path"]),
           "caption": r["caption"], "source": r["source"], "heatmap": None, "heat": None, "heatmap_image": None}
    i = heat.row(r["sign"], r["rank"]) if heat else None
    if i is not None:
        if ctx.twin:  # the page draws the quantized bytes; only the twin lists the map's numbers
            out["heatmap"] = [[float(f"{v:.4g}") for v in line] for line in heat.values(i).tolist()]
        out["heat"] = {"q": heat.b64(i), "lo": float(heat.lo[i]), "hi": float(heat.hi[i])}
        out["heatmap_image"] = urls.example_heatmap(ctx.key, r["sign"], r["rank"])
    return out


def build(values: dict, ctx: UnitContext):
    rows = sorted(values["rows"], key=lambda r: (r["sign"] != "top", r["rank"]))
    if not rows:
        return None
    run = next((r for r in values["runs"] if r["id"] == rows[0]["run_id"]), None)
    settings, report = (run["settings"] or {}, run["report"] or {}) if run else ({}, {})
    heat = heatmaps_of(values)
    out = {"top": [], "bottom": [], "reduce": settings.get("reduce"), "signal": settings.get("signal"),
           "signal_text": settings.get("signal_text"), "images": report.get("images"),
           "run": run["id"] if run else None, "grid": list(heat.maps.shape[1:]) if heat else None}
    for r in rows:
        out.setdefault(r["sign"], []).append(example(r, ctx, heat))
    return out


SECTION = Section("examples", "Dataset examples", columns, build,
                  "No dataset examples yet: run `microscope worker examples MODEL --corpus DIR`.",
                  joins=((UnitHeatmaps.__table__, UnitHeatmaps.unit_id == PAGE_UNIT.c.unit_id),))
