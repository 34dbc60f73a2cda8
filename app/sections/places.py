"""The neuron card's world map: heat over an unlabeled map, rendered country and city names (`microscope worker maps`),
and the region report's geographic share of its top words (`microscope worker regions`)."""
from sqlalchemy import select

from app import urls
from app.db import Artifact, MapActivation, PlaceScore
from app.sections import Section, UnitContext


def region_entry(session, ctx: UnitContext) -> dict | None:
    art = session.scalar(select(Artifact).where(Artifact.model_id == ctx.model.id, Artifact.layer == ctx.layer.name,
                                                Artifact.name == "regions"))
    if art is None:
        return None
    entry = next((u for u in art.meta.get("units", []) if u["unit"] == ctx.unit.index), None)
    return {"fraction": entry["fraction"] if entry else 0.0, "geographic": entry["geographic"] if entry else [],
            "url": urls.regions(ctx.key.model, ctx.key.layer)}


def load(session, ctx: UnitContext):
    m = session.get(MapActivation, ctx.unit.id)
    places = session.scalars(
        select(PlaceScore).where(PlaceScore.unit_id == ctx.unit.id).order_by(PlaceScore.score.desc())
    ).all()
    region = region_entry(session, ctx)
    if m is None and not places and region is None:
        return None
    return {
        "overlay": urls.map_overlay(ctx.key) if m else None,
        "choropleth": urls.cache(m.choropleth) if m else None,
        "countries": [{"name": p.name, "code": p.code, "score": p.score} for p in places if p.kind == "country"][:10],
        "cities": [{"name": p.name, "code": p.code, "score": p.score, "lat": p.lat, "lon": p.lon}
                   for p in places if p.kind == "city"][:10],
        "region": region,
    }


SECTION = Section("places", "World map and place names", load,
                  "No map activations yet: run `microscope worker maps ARCH --name MODEL`.")
