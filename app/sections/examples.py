from sqlalchemy import select

from app import urls
from app.db import DatasetExample, Image, Run
from app.sections import Section, UnitContext
from app.sections.rows import UNIT_ID, json_rows


def columns(dialect: str) -> dict:
    uid = UNIT_ID
    rows = (select(DatasetExample.sign, DatasetExample.rank, DatasetExample.activation, DatasetExample.heatmap,
                   DatasetExample.heatmap_image, DatasetExample.run_id, Image.id.label("image_id"),
                   Image.thumb, Image.path, Image.caption, Image.source)
            .join(Image, DatasetExample.image_id == Image.id).where(DatasetExample.unit_id == uid))
    runs = select(Run.id, Run.settings, Run.report).where(
        Run.id.in_(select(DatasetExample.run_id).where(DatasetExample.unit_id == uid)))
    return {"rows": json_rows(rows, dialect), "runs": json_rows(runs, dialect)}


def example(r: dict, ctx: UnitContext) -> dict:
    return {
        "rank": r["rank"],
        "activation": r["activation"],
        "sigma": ctx.sigma(r["activation"]),
        "image": urls.cache(r["thumb"] or r["path"]),
        "full": urls.cache(r["path"]),
        "caption": r["caption"],
        "source": r["source"],
        "heatmap": r["heatmap"],
        "heatmap_image": urls.cache(r["heatmap_image"]),
    }


def build(values: dict, ctx: UnitContext):
    rows = sorted(values["rows"], key=lambda r: (r["sign"] != "top", r["rank"]))
    if not rows:
        return None
    run = next((r for r in values["runs"] if r["id"] == rows[0]["run_id"]), None)
    settings, report = (run["settings"] or {}, run["report"] or {}) if run else ({}, {})
    out = {"top": [], "bottom": [], "reduce": settings.get("reduce"), "signal": settings.get("signal"),
           "signal_text": settings.get("signal_text"),
           "images": report.get("images"), "run": run["id"] if run else None}
    for r in rows:
        out.setdefault(r["sign"], []).append(example(r, ctx))
    return out


SECTION = Section("examples", "Dataset examples", columns, build,
                  "No dataset examples yet: run `microscope worker examples MODEL --corpus DIR`.")
