"""World maps: the projection, crop coverage, overlays that line up with the map, the stage on a tiny model."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import select

from app.heatmaps import grid_values
from store.schema import Artifact, MapActivation, PlaceScore, Unit
from worker.analyses.maps import (
    GRID,
    cell_centres,
    crop_boxes,
    lonlat_to_px,
    map_grid,
    overlay_image,
    plain_base,
    run_maps,
    world_map,
)
from worker.compute.render_text import RenderPlan
from worker.data.places import countries, geographic_words

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
PATCH = (10.0, 40.0, -10.0, 20.0)  # lon0, lon1, lat0, lat1: central Africa


@pytest.fixture(scope="module")
def world():
    return world_map()


def label_at(world, lon: float, lat: float) -> str | None:
    x, y = lonlat_to_px(lon, lat, *world.size)
    i = world.labels[int(y), int(x)]
    return None if i < 0 else countries()[i].name


def test_the_map_is_deterministic_and_countries_sit_where_they_should(world):
    assert np.array_equal(np.asarray(world.image), np.asarray(world_map().image))
    assert world.size == (1024, 512) and len(countries()) == 177
    assert label_at(world, 2.35, 48.85) == "France"
    assert label_at(world, -50, -10) == "Brazil"
    assert label_at(world, 135, -25) == "Australia"
    assert label_at(world, -30, 0) is None  # mid-Atlantic
    assert label_at(world, 28.2, -29.5) == "Lesotho"  # an enclave stays on top of South Africa


def test_crops_cover_every_grid_cell_including_corners(world):
    boxes = crop_boxes(*world.size, n_random=0)
    cx, cy = cell_centres(*world.size, GRID)
    covered = np.zeros(GRID, dtype=bool)
    for x, y, s in boxes:
        covered |= (cx >= x) & (cx < x + s) & (cy >= y) & (cy < y + s)
    assert covered.all()
    assert crop_boxes(1024, 512, 10, seed=3) == crop_boxes(1024, 512, 10, seed=3)


class MagentaDetector(torch.nn.Module):
    """A hand-set conv 'neuron' that fires on magenta pixels (R and B high, G low), pooled 8x8 like a CNN's map."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        with torch.no_grad():  # on CLIP-normalised input: undo the normalisation, then R + B - 2G - 1.2
            w = torch.tensor([1.0, -2.0, 1.0]) * torch.tensor(STD)
            self.conv.weight.copy_(w.view(1, 3, 1, 1))
            self.conv.bias.fill_(float(torch.tensor([1.0, -2.0, 1.0]) @ torch.tensor(MEAN)) - 1.2)

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(torch.relu(self.conv(x)), 8)


def painted(world):
    img = world.image.copy()
    x0, y1 = lonlat_to_px(PATCH[0], PATCH[2], *world.size)
    x1, y0 = lonlat_to_px(PATCH[1], PATCH[3], *world.size)
    img.paste((255, 0, 255), (int(x0), int(y0), int(x1), int(y1)))
    return img


def px_to_lonlat(x, y, width, height):
    return x / width * 360 - 180, 90 - y / height * 180


def test_a_neuron_driven_by_a_coloured_patch_peaks_there_on_grid_and_overlay(world):
    grid = map_grid(MagentaDetector(), painted(world), crop_boxes(*world.size, 64), 64, MEAN, STD)[0]
    assert grid.shape == GRID
    lon_c = (np.arange(GRID[1]) + 0.5) * 360 / GRID[1] - 180
    lat_c = 90 - (np.arange(GRID[0]) + 0.5) * 180 / GRID[0]
    in_lon = (lon_c > PATCH[0]) & (lon_c < PATCH[1])
    in_lat = (lat_c > PATCH[2]) & (lat_c < PATCH[3])
    inside = np.outer(in_lat, in_lon)
    r, c = np.unravel_index(grid.argmax(), grid.shape)
    assert inside[r, c]
    # a crop's activation cell spans up to ~11 degrees, so heat may bleed ~1.5 of them; beyond 20 degrees, nothing
    far = ~np.outer(np.convolve(in_lat, np.ones(9), "same") > 0, np.convolve(in_lon, np.ones(9), "same") > 0)
    assert grid[inside].mean() > 0.5 * grid.max() and grid[far].max() < 0.01 * grid.max()

    overlay = np.asarray(overlay_image(world, grid).convert("RGB"), dtype=np.float32)
    base, _ = plain_base(world, overlay.shape[1])
    heat = np.abs(overlay - base).sum(-1)
    y, x = np.unravel_index(heat.argmax(), heat.shape)
    lon, lat = px_to_lonlat(x, y, overlay.shape[1], overlay.shape[0])
    assert PATCH[0] - 5 < lon < PATCH[1] + 5 and PATCH[2] - 5 < lat < PATCH[3] + 5


def test_geographic_words_cover_places_demonyms_and_currencies():
    words, sources = geographic_words()
    assert {"france", "paris", "tokyo", "japanese", "french", "euro", "dollars", "texas", "africa"} <= words
    assert not {"the", "see", "town", "won", "real", "man"} & words
    assert len(sources) >= 4


def test_maps_stage_writes_grids_pictures_and_place_scores(store, tiny_rn, client):
    plan = RenderPlan(tiny_rn.image_size)
    units = [0, 1, 2]
    report = run_maps(store, tiny_rn, "tiny", "layer1", n_crops=8, n_cities=20, plan=plan, batch_size=128,
                      units=units)
    assert report["units_written"] == 3 and report["places"] == 177 + 20
    with store.sessions() as s:
        rows = s.execute(select(Unit.index, MapActivation).join(Unit, Unit.id == MapActivation.unit_id)).all()
        places = s.scalars(select(PlaceScore).join(Unit, Unit.id == PlaceScore.unit_id).where(Unit.index == 0)).all()
        meta = s.scalar(select(Artifact).where(Artifact.name == "places")).meta
    assert sorted(i for i, _ in rows) == units
    world = world_map()
    for index, m in rows:
        assert (m.rows, m.cols) == GRID and len(m.heat) == GRID[0] * GRID[1]
        pictures = ((f"/models/tiny/layer1/{index}/map.jpg", "image/jpeg"), (f"/cache/{m.choropleth}", "image/png"))
        for url, kind in pictures:
            r = client.get(url)
            assert r.status_code == 200 and r.headers["content-type"] == kind
            img = Image.open(io.BytesIO(r.content))
            assert img.size == (720, 360) and len(img.convert("RGB").getcolors(1 << 16)) > 8
        drawn = np.asarray(Image.open(io.BytesIO(client.get(f"/models/tiny/layer1/{index}/map.jpg").content)))
        want = np.asarray(overlay_image(world, grid_values(m)))  # the stored grid over the stored base map
        assert np.abs(drawn.astype(np.float32) - want).mean() < 3  # JPEG's loss only
    assert not list((store.settings.cache_root / "units").rglob("map-overlay-*"))  # no overlay files
    matrix = np.load(store.cache.resolve(meta["paths"]["post"]))
    assert matrix.shape == (197, 64)
    countries_0 = sorted((p for p in places if p.kind == "country"), key=lambda p: -p.score)
    assert len(countries_0) == 20 and len([p for p in places if p.kind == "city"]) == 20
    assert countries_0[0].score == pytest.approx(matrix[:177, 0].max(), rel=1e-5)
    card = client.get("/models/tiny/layer1/0.json").json()["sections"]["places"]
    assert card["overlay"] == "/models/tiny/layer1/0/map.jpg" and len(card["countries"]) == 10
    assert client.get("/models/tiny/layer1/9/map.jpg").status_code == 404  # no grid for that unit

    again = run_maps(store, tiny_rn, "tiny", "layer1", n_crops=8, n_cities=20, plan=plan, batch_size=128,
                     units=[0, 1, 2, 3])
    assert again["units_resumed"] == 3 and again["units_written"] == 1  # finished units are not redrawn
    assert again["chunks_resumed"] == again["chunks"]  # nor the place names re-rendered
