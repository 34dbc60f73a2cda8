"""Overlays drawn by the server from the stored maps: a dataset example's (for clients without JavaScript and
for the JSON twin's links; the page itself draws them on a canvas, static/heatmaps.js) and a neuron's
activation over the world map."""
from typing import Literal

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from sqlalchemy import select

from app import urls
from app.db import MapActivation, UnitHeatmaps
from app.deps import SessionDep
from app.heatmaps import MAP_BASE, grid_values, map_base, map_overlay_jpeg, overlay_png, unpack
from app.httpcache import REVALIDATE
from app.lookup import NotFound, get_unit, key_of

router = APIRouter()


@router.get("/models/{model}/{layer}/{unit}/examples/{sign}/{rank}/heatmap.png", name="example_heatmap",
            response_class=Response, responses={200: {"content": {"image/png": {}}}})
def example_heatmap(session: SessionDep, model: str, layer: str, unit: str, sign: Literal["top", "bottom"],
                    rank: int = Path(ge=0)):
    """One example's overlay: a PNG with one pixel per map position, opacity = the sign's part of the map
    relative to its peak. Revalidated by ETag (a worker rerun replaces the map)."""
    la, u = get_unit(session, model, layer, unit)
    stored = session.scalar(select(UnitHeatmaps).where(UnitHeatmaps.unit_id == u.id))
    heat = unpack(stored) if stored else None
    i = heat.row(sign, rank) if heat else None
    if i is None:
        key = key_of(la, u)
        raise NotFound(f"{key.path} has no {sign} dataset example {rank} with a heatmap.",
                       [(f"{key.path}", urls.neuron(key))])
    return Response(overlay_png(heat.values(i), sign), media_type="image/png",
                    headers={"Cache-Control": REVALIDATE})


@router.get("/models/{model}/{layer}/{unit}/map.jpg", name="map_overlay", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}})
def map_overlay(request: Request, session: SessionDep, model: str, layer: str, unit: str):
    """The neuron's activation over the unlabeled world map, drawn from its stored grid (~15 ms)."""
    la, u = get_unit(session, model, layer, unit)
    row = session.get(MapActivation, u.id)
    if row is None:
        key = key_of(la, u)
        raise NotFound(f"{key.path} has no world-map activation yet: run `microscope worker maps`.",
                       [(f"{key.path}", urls.neuron(key))])
    base = map_base(request.app.state.cache.resolve(MAP_BASE))
    return Response(map_overlay_jpeg(grid_values(row), base), media_type="image/jpeg",
                    headers={"Cache-Control": REVALIDATE})
