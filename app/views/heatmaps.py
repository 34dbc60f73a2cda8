"""Dataset-example overlays drawn by the server from the stored maps, for clients without JavaScript and
for the JSON twin's links (the page itself draws them on a canvas, static/heatmaps.js)."""
from typing import Literal

from fastapi import APIRouter, Path
from fastapi.responses import Response
from sqlalchemy import select

from app import urls
from app.db import UnitHeatmaps
from app.deps import SessionDep
from app.heatmaps import overlay_png, unpack
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
