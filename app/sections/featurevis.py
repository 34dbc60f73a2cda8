"""The neuron card's feature visualizations: the plain image, one per facet, and the diversity strip."""
from sqlalchemy import select

from app import urls
from app.db import FeatureVis
from app.sections import Section, UnitContext
from app.sections.rows import UNIT_ID, json_rows


def _item(r: dict) -> dict:
    return {"kind": r["kind"], "url": urls.cache(r["image"]), "thumb": urls.cache(r["thumb"] or r["image"]),
            "objective": r["objective"], "steps": r["steps"], "size": r["size"], "seed": r["seed"],
            "settings_hash": r["settings_hash"]}


def _strip_position(r: dict) -> int:
    tail = r["kind"].removeprefix("diversity-")
    return int(tail) if tail.isdigit() else 0


def columns(dialect: str) -> dict:
    f = FeatureVis
    rows = select(f.id, f.kind, f.image, f.thumb, f.objective, f.steps, f.size, f.seed, f.settings_hash).where(
        f.unit_id == UNIT_ID)
    return {"rows": json_rows(rows, dialect)}


def build(values: dict, _ctx: UnitContext):
    rows = sorted(values["rows"], key=lambda r: -r["id"])
    if not rows:
        return None
    newest: dict[str, dict] = {}
    for row in rows:
        newest.setdefault(row["kind"], row)
    # a strip is the images of one render (one settings hash), never a mix of two runs
    strip = next((r for r in rows if r["kind"].startswith("diversity-")), None)
    diversity = sorted((r for r in rows if strip and r["kind"].startswith("diversity-")
                        and r["settings_hash"] == strip["settings_hash"]), key=_strip_position)
    facets = sorted((r for k, r in newest.items() if k.startswith("facet:")), key=lambda r: r["kind"])
    return {
        "plain": _item(newest["plain"]) if "plain" in newest else None,
        "diversity": [_item(r) for r in diversity],
        "facets": [dict(_item(r), facet=r["kind"].removeprefix("facet:")) for r in facets],
    }


SECTION = Section("featurevis", "Feature visualization", columns, build,
                  "No feature visualization yet: run `microscope worker featurevis`.")
