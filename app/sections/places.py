from sqlalchemy import select

from app import urls
from app.db import MapActivation, PlaceScore
from app.sections import Section, UnitContext


def load(session, ctx: UnitContext):
    m = session.get(MapActivation, ctx.unit.id)
    places = session.scalars(
        select(PlaceScore).where(PlaceScore.unit_id == ctx.unit.id).order_by(PlaceScore.score.desc())
    ).all()
    if m is None and not places:
        return None
    return {
        "overlay": urls.cache(m.overlay) if m else None,
        "choropleth": urls.cache(m.choropleth) if m else None,
        "countries": [{"name": p.name, "code": p.code, "score": p.score} for p in places if p.kind == "country"][:10],
        "cities": [{"name": p.name, "score": p.score} for p in places if p.kind == "city"][:10],
    }


SECTION = Section("places", "World map and place names", load, "No map activations yet: run `microscope worker maps`.")
