"""The neuron card's world map: heat over an unlabeled map, rendered country and city names (`microscope worker maps`),
and the region report's geographic share of its top words (`microscope worker regions`).

The page shows the top TOP places of each kind; the JSON twin's `data` holds every score and the map grid."""
from types import SimpleNamespace

from sqlalchemy import select

from app import urls
from app.heatmaps import grid_values
from app.sections import Section, UnitContext
from app.sections.rows import LAYER, MODEL_ID, UNIT_ID, json_rows
from store.schema import Artifact, MapActivation, PlaceScore

TOP = 10


def columns(dialect: str) -> dict:
    uid = UNIT_ID
    m, p = MapActivation, PlaceScore
    region = select(Artifact.meta).where(Artifact.model_id == MODEL_ID, Artifact.layer == LAYER,
                                         Artifact.name == "regions")
    return {"map": json_rows(select(m.rows, m.cols, m.lo, m.hi, m.choropleth).where(m.unit_id == uid), dialect),
            "heat": select(m.heat).where(m.unit_id == uid).scalar_subquery(),
            "places": json_rows(select(p.kind, p.name, p.code, p.lat, p.lon, p.score).where(p.unit_id == uid),
                                dialect),
            "region": json_rows(region, dialect)}


def region_entry(artifacts: list[dict], ctx: UnitContext) -> dict | None:
    if not artifacts:
        return None
    entry = next((u for u in artifacts[0]["meta"].get("units", []) if u["unit"] == ctx.unit.index), None)
    return {"fraction": entry["fraction"] if entry else 0.0, "geographic": entry["geographic"] if entry else [],
            "url": urls.regions(ctx.key.model, ctx.key.layer)}


def scores(places: list[dict], kind: str) -> list[dict]:
    """Every place of `kind`, highest score first (cities keep their coordinates)."""
    keep = ("name", "code", "score", "lat", "lon") if kind == "city" else ("name", "code", "score")
    rows = sorted((p for p in places if p["kind"] == kind), key=lambda p: (-p["score"], p["name"]))
    return [{k: p[k] for k in keep} for p in rows]


def map_grid(m: dict | None, heat: bytes | None) -> list[list[float]] | None:
    """The stored grid over the world map as numbers (the twin's data; the page shows the server's overlay)."""
    if m is None or heat is None:
        return None
    return [[float(f"{v:.4g}") for v in line] for line in grid_values(SimpleNamespace(heat=heat, **m)).tolist()]


def build(values: dict, ctx: UnitContext):
    m = values["map"][0] if values["map"] else None
    region = region_entry(values["region"], ctx)
    if m is None and not values["places"] and region is None:
        return None
    countries, cities = scores(values["places"], "country"), scores(values["places"], "city")
    return {
        "overlay": urls.map_overlay(ctx.key) if m else None,
        "choropleth": urls.cache(m["choropleth"]) if m else None,
        "countries": countries[:TOP],
        "cities": cities[:TOP],
        "region": region,
        "data": {"countries": countries, "cities": cities,
                 "grid": map_grid(m, values["heat"]) if ctx.twin else None},  # the page shows it as a picture
    }


SECTION = Section("places", "World map and place names", columns, build,
                  "No map activations yet: run `microscope worker maps ARCH --name MODEL`.")
