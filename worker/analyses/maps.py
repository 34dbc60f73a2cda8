"""World maps: each neuron's activation over an unlabeled world map, and over rendered place names.

1. An unlabeled political map (equirectangular, lon -180..180 x lat 90..-90) is drawn from the
   Natural Earth polygons. The model sees random square crops of it (plus a tiling of crops so every
   cell, corners included, is seen) at its native resolution; each crop's spatial activation map is
   sampled back onto a grid of map cells (bilinear, at the cell centres the crop covers), and every
   cell averages what its crops saw. The grid is stored per neuron, quantized (MapActivation.heat, rows x
   cols uint8); the app draws its overlay on request over one grey base map (app.heatmaps.MAP_BASE).
2. Country names (all Natural Earth countries) and the largest cities' names are rendered like words
   (`worker.compute.text_scores.score_texts`: spatial mean, max over positions, mean over sizes); PlaceScore keeps
   each neuron's top countries and cities, and a choropleth PNG colours every country by its name's
   score with dots for the cities.
"""
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from sqlalchemy import delete, select
from tqdm import tqdm

from app.heatmaps import MAP_BASE, MAP_SIZE, lut, map_overlay, normalise, quantize_grid
from store.keys import UnitKey
from store.schema import MapActivation, PlaceScore
from store.writes import Store, bulk_insert
from worker.analyses.artifacts import artifact, ensure_model, layer_units, npy_bytes, put_artifact, write_matrix
from worker.analyses.resumable import Checkpoints, score_resumable
from worker.compute.layers import activations, layer_spec
from worker.compute.models import LoadedModel
from worker.compute.precision import autocast
from worker.compute.render_text import RenderPlan
from worker.compute.text_scores import channels_last, default_plan, layer_reader, to_batch
from worker.data.places import cities, countries
from worker.pipeline.contract import model_fingerprint, settings_hash

STAGE = "maps"
MAP_WIDTH = 1024  # the map the crops come from; height is half
GRID = (36, 72)  # rows x cols: 5-degree cells
PICTURE_WIDTH = 720  # the choropleth images and the base map
OCEAN = (166, 206, 227)
LAND = [(222, 203, 164), (190, 214, 160), (237, 223, 179), (205, 185, 210), (242, 196, 166), (200, 200, 170)]
BORDER = (110, 110, 110)
TOP_PLACES = 20

MapReader = Callable[[torch.Tensor], torch.Tensor]  # normalised images -> (B, units, h, w)


def lonlat_to_px(lon, lat, width: int, height: int):
    return (np.asarray(lon) + 180.0) / 360.0 * width, (90.0 - np.asarray(lat)) / 180.0 * height


def _rings(geometry):
    polys = getattr(geometry, "geoms", [geometry])
    return [np.asarray(p.exterior.coords) for p in polys]


def country_raster(width: int = MAP_WIDTH) -> np.ndarray:
    """int32 (height, width): index into `countries()` of the country at each pixel, -1 for sea.
    Large countries are drawn first so enclaves (Lesotho in South Africa) stay on top."""
    height = width // 2
    img = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(img)
    order = sorted(range(len(countries())), key=lambda i: -countries()[i].geometry.area)
    for i in order:
        for ring in _rings(countries()[i].geometry):
            x, y = lonlat_to_px(ring[:, 0], ring[:, 1], width, height)
            draw.polygon(list(zip(x.tolist(), y.tolist(), strict=True)), fill=i + 1)
    return np.asarray(img, dtype=np.int32) - 1


def borders(labels: np.ndarray) -> np.ndarray:
    """bool mask of pixels whose right or lower neighbour belongs to another country (or the sea)."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def land_colours(labels: np.ndarray) -> np.ndarray:
    """A colour index per country such that neighbours on the map differ (greedy colouring)."""
    n = len(countries())
    pairs = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        m = (a != b) & (a >= 0) & (b >= 0)
        pairs |= set(zip(a[m].tolist(), b[m].tolist(), strict=True))
    neighbours: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in pairs:
        neighbours[a].add(b)
        neighbours[b].add(a)
    colour = np.zeros(n, dtype=np.int32)
    for i in sorted(range(n), key=lambda i: -len(neighbours[i])):
        used = {colour[j] for j in neighbours[i] if j in neighbours and colour[j] >= 0 and j != i}
        colour[i] = next(c for c in range(len(LAND)) if c not in used)
    return colour


@dataclass(eq=False)
class WorldMap:
    image: Image.Image  # the unlabeled map the model sees
    labels: np.ndarray  # country index per pixel, -1 = sea
    bases: dict = field(default_factory=dict)  # width -> plain_base(width), drawn once per map

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def world_map(width: int = MAP_WIDTH) -> WorldMap:
    """The unlabeled political world map: sea, countries in colours that differ from their neighbours, borders."""
    labels = country_raster(width)
    palette = np.asarray(LAND, dtype=np.uint8)[land_colours(labels)]
    pixels = np.where(labels[..., None] >= 0, palette[np.clip(labels, 0, None)], np.asarray(OCEAN, np.uint8))
    pixels[borders(labels)] = BORDER
    return WorldMap(Image.fromarray(pixels.astype(np.uint8)), labels)


def crop_boxes(width: int, height: int, n_random: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """(x0, y0, side) squares: a half-overlapping tiling at side height/3 (covers every cell), then
    n_random crops with side uniform in [height/4, height/2] at uniform positions."""
    side = height // 3
    xs = sorted(set(list(range(0, width - side, side // 2)) + [width - side]))
    ys = sorted(set(list(range(0, height - side, side // 2)) + [height - side]))
    boxes = [(x, y, side) for y in ys for x in xs]
    rng = np.random.default_rng(seed)
    for _ in range(n_random):
        s = int(rng.integers(height // 4, height // 2 + 1))
        boxes.append((int(rng.integers(0, width - s + 1)), int(rng.integers(0, height - s + 1)), s))
    return boxes


def cell_centres(width: int, height: int, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = grid
    cy = (np.arange(rows) + 0.5) * height / rows
    cx = (np.arange(cols) + 0.5) * width / cols
    return np.meshgrid(cx, cy)  # each (rows, cols)


@torch.inference_mode()
def map_grid(read: MapReader, image: Image.Image, boxes: list[tuple[int, int, int]], image_size: int,
             mean, std, grid: tuple[int, int] = GRID, batch_size: int = 64, device="cpu") -> np.ndarray:
    """float32 (units, rows, cols): each cell's activation averaged over the crops that cover its centre."""
    width, height = image.size
    cx, cy = cell_centres(width, height, grid)
    total = count = None
    for start in tqdm(range(0, len(boxes), batch_size), desc="map crops", unit="batch", dynamic_ncols=True):
        part = boxes[start:start + batch_size]
        crops = np.stack([np.asarray(image.crop((x, y, x + s, y + s)).resize((image_size, image_size),
                                                                              Image.Resampling.BICUBIC))
                          for x, y, s in part])
        maps = read(to_batch(crops, mean, std, device)).float().cpu()
        if total is None:
            total = torch.zeros(maps.shape[1], *grid, dtype=torch.float64)
            count = torch.zeros(grid, dtype=torch.float64)
        for (x, y, s), amap in zip(part, maps, strict=True):
            u, v = (cx - x) / s, (cy - y) / s
            inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
            coords = torch.from_numpy(np.stack([2 * u[inside] - 1, 2 * v[inside] - 1], -1)).float()
            sampled = F.grid_sample(amap[None], coords.view(1, 1, -1, 2), mode="bilinear",
                                    padding_mode="border", align_corners=False)[0, :, 0]  # (units, n)
            mask = torch.from_numpy(inside)
            total[:, mask] += sampled.double()
            count[mask] += 1
    return (total / count.clamp(min=1)).float().numpy()


def layer_maps(loaded: LoadedModel, layer: str) -> MapReader:
    """The layer's maps as the next module reads them (ResNets after the final ReLU; ViT patch tokens after
    the GELU): the activation whose pooling the words stage ranks top words by."""
    def read(images: torch.Tensor) -> torch.Tensor:
        with autocast(loaded.device, loaded.precision):  # the model's precision, as the words stage
            return activations(loaded, images, [layer], tap="write")[layer].float()

    return read


def plain_base(world: WorldMap, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(grey RGB map: light sea, mid-grey land, dark borders; the labels at that width), cached on the map."""
    if width not in world.bases:
        labels = np.asarray(Image.fromarray(world.labels + 1).resize((width, width // 2),
                                                                     Image.Resampling.NEAREST)) - 1
        grey = np.where(labels >= 0, 205.0, 240.0)
        grey[borders(labels)] = 95.0
        world.bases[width] = (np.repeat(grey[..., None], 3, -1).astype(np.float32), labels)
    return world.bases[width]


def overlay_image(world: WorldMap, grid: np.ndarray, width: int = PICTURE_WIDTH) -> Image.Image:
    """The map in greys with the neuron's activation grid as heat on top (more opaque where higher): what the
    app draws on request (app.heatmaps.map_overlay) over the base that `write_base` stores."""
    return map_overlay(grid, plain_base(world, width)[0])


def write_base(store: Store, world: WorldMap) -> str:
    """The grey base map every neuron's overlay is drawn on: one file for the whole store."""
    base, _ = plain_base(world, MAP_SIZE[0])
    return store.cache.write(MAP_BASE, png_bytes(Image.fromarray(base.astype(np.uint8))))


def choropleth_image(world: WorldMap, country_scores: np.ndarray, city_scores: np.ndarray,
                     width: int = PICTURE_WIDTH) -> Image.Image:
    """Countries coloured by their rendered name's score, cities as dots sized and coloured by theirs."""
    height = width // 2
    _, labels = plain_base(world, width)
    viridis = lut("viridis")
    colours = viridis[(normalise(country_scores) * 255).astype(np.uint8)]
    pixels = np.where(labels[..., None] >= 0, colours[np.clip(labels, 0, None)], np.uint8(245))
    base, _ = plain_base(world, width)
    pixels[base[..., 0] == 95.0] = (255, 255, 255)  # the borders
    img = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    city_list = cities(len(city_scores))
    norm = normalise(city_scores)
    xs, ys = lonlat_to_px([c.lon for c in city_list], [c.lat for c in city_list], width, height)
    plasma = lut("plasma")
    for i in np.argsort(norm):  # hottest drawn last, on top
        r = 1.5 + 3.5 * norm[i]
        fill = tuple(int(v) for v in plasma[int(norm[i] * 255)])
        draw.ellipse((xs[i] - r, ys[i] - r, xs[i] + r, ys[i] + r), fill=fill, outline=(0, 0, 0))
    return img.quantize(colors=128, method=Image.Quantize.FASTOCTREE)


def place_texts(n_cities: int) -> tuple[list[str], list[dict]]:
    """Texts to render and their descriptions: every Natural Earth country, then the largest cities."""
    texts, info = [], []
    for c in countries():
        texts.append(c.name)
        info.append({"kind": "country", "name": c.name, "code": c.iso3, "lat": None, "lon": None})
    for c in cities(n_cities):
        texts.append(c.name)
        info.append({"kind": "city", "name": c.name, "code": c.country, "lat": c.lat, "lon": c.lon})
    return texts, info


def map_settings(loaded: LoadedModel, layer: str, plan: RenderPlan, n_crops: int, seed: int, n_cities: int) -> dict:
    return {"stage": STAGE, "layer": layer, "map_width": MAP_WIDTH, "grid": list(GRID), "n_crops": n_crops,
            "seed": seed, "n_cities": n_cities, "plan": plan.describe(), "model": model_fingerprint(loaded),
            "picture_width": PICTURE_WIDTH, "top_places": TOP_PLACES}


def write_unit_maps(store: Store, model_name: str, layer: str, world: WorldMap, grids: np.ndarray,
                    scores: np.ndarray, info: list[dict], digest: str, run_id: int, only: set[int] | None = None,
                    units_per_commit: int = 32) -> dict:
    """MapActivation (quantized grid, choropleth) and PlaceScore rows per unit, skipping units this settings
    hash already finished (the choropleth's name carries it). One transaction per batch of units; the
    overlays are drawn from the grids on request, over the base map written here."""
    is_country = np.array([i["kind"] == "country" for i in info])
    write_base(store, world)
    with store.sessions.begin() as session:
        _, _, units = layer_units(session, model_name, layer)
        done = {m.unit_id for m in session.scalars(select(MapActivation).where(
            MapActivation.unit_id.in_([u.id for u in units]))) if (m.choropleth or "").endswith(f"-{digest[:8]}.png")}
        todo = [(u.id, u.index) for u in units if u.id not in done and (only is None or u.index in only)]
    for start in tqdm(range(0, len(todo), units_per_commit), desc="map pictures", unit="batch", dynamic_ncols=True):
        batch = todo[start:start + units_per_commit]
        maps, places = [], []
        for uid, index in batch:
            col = scores[:, index]
            chart = store.cache.put_unit_image(UnitKey(model_name, layer, index), f"map-places-{digest[:8]}",
                                               choropleth_image(world, col[is_country], col[~is_country]))
            maps.append({"unit_id": uid, **quantize_grid(grids[index]), "choropleth": chart, "run_id": run_id})
            places += top_places(uid, col, is_country, info, run_id)
        with store.sessions.begin() as session:
            ids = [uid for uid, _ in batch]
            session.execute(delete(PlaceScore).where(PlaceScore.unit_id.in_(ids)))
            session.execute(delete(MapActivation).where(MapActivation.unit_id.in_(ids)))
            bulk_insert(session, MapActivation, maps)
            bulk_insert(session, PlaceScore, places)
    return {"units_written": len(todo), "units_resumed": len(done)}


def top_places(unit_id: int, col: np.ndarray, is_country: np.ndarray, info: list[dict], run_id: int) -> list[dict]:
    """The unit's TOP_PLACES countries and cities by score, as PlaceScore rows."""
    rows = []
    for kind_mask in (is_country, ~is_country):
        idx = np.flatnonzero(kind_mask)
        for j in idx[np.argsort(-col[idx], kind="stable")[:TOP_PLACES]]:
            p = info[j]
            rows.append({"unit_id": unit_id, "kind": p["kind"], "name": p["name"], "code": p["code"], "lat": p["lat"],
                         "lon": p["lon"], "score": float(col[j]), "run_id": run_id})
    return rows


def run_maps(store: Store, loaded: LoadedModel, model_name: str, layer: str | None = None, n_crops: int = 256,
             seed: int = 0, n_cities: int = 300, plan: RenderPlan | None = None, batch_size: int = 256,
             device: str = "cpu", force: bool = False, units: list[int] | None = None) -> dict:
    """The maps stage: map grids + overlays, place-name scores + choropleths, for every unit of the layer
    (or only `units`; the layer-wide matrices are computed whole either way)."""
    from store.writes import recorded_run

    spec = layer_spec(loaded, layer)
    plan = plan or default_plan(loaded)
    settings = map_settings(loaded, spec.name, plan, n_crops, seed, n_cities)
    digest = settings_hash(settings)
    ensure_model(store, loaded, model_name)
    done = artifact(store, model_name, spec.name, "map")
    if done is not None and done.meta.get("hash") == digest and done.meta.get("complete") and not force:
        return {"skipped": "up to date", "hash": digest}
    with channels_last(loaded), recorded_run(store, STAGE, model_name, settings, layer=spec.name) as report:
        world = world_map()
        grids, crops = map_grids(loaded, spec.name, world, n_crops, seed, batch_size, device)
        texts, info = place_texts(n_cities)
        pre, post, counts = score_resumable(store, places_job(model_name, spec.name, digest),
                                            layer_reader(loaded, spec.name), texts, plan, loaded.mean,
                                            loaded.std, batch_size=batch_size, device=device, desc="place names")
        report.update(counts)
        report.update(write_maps(store, model_name, spec.name, world, (grids, crops), (texts, info, pre, post),
                                 digest, report["run_id"], units))
    return report


def places_job(model_name: str, layer: str, digest: str) -> str:
    return f"places/{model_name}/{layer}/{digest}"


def map_grids(loaded: LoadedModel, layer: str, world: WorldMap, n_crops: int, seed: int, batch_size: int,
              device) -> tuple[np.ndarray, int]:
    """((units, rows, cols), number of crops): each unit's mean activation per map cell over the crops."""
    boxes = crop_boxes(*world.size, n_crops, seed)
    return map_grid(layer_maps(loaded, layer), world.image, boxes, loaded.image_size, loaded.mean, loaded.std,
                    batch_size=max(1, batch_size // 4), device=device), len(boxes)


def write_maps(store: Store, model_name: str, layer: str, world: WorldMap, grids: tuple, places: tuple,
               digest: str, run_id: int, units: list[int] | None = None) -> dict:
    """Per-unit maps and place scores, then the layer's matrices; the "map" artifact goes last (its hash
    and `complete` mark the layer done). `grids` is (grids, crops) from `map_grids`, `places` is (texts, info,
    pre, post) of the rendered place names."""
    (grids, crops), (texts, info, pre, post) = grids, places
    report = {"crops": crops, "places": len(texts), "hash": digest, "units": int(grids.shape[0])}
    report.update(write_unit_maps(store, model_name, layer, world, grids, post, info, digest, run_id,
                                  set(units) if units is not None else None))
    write_matrix(store, model_name, layer, "places", texts, {"post": post, "pre": pre},
                 {"hash": digest, "places": info}, run_id)
    base = store.cache.write(f"artifacts/{model_name}/{layer}/world-map-{digest}.png", png_bytes(world.image))
    grid_path = store.cache.write(f"artifacts/{model_name}/{layer}/map-{digest}.npy", npy_bytes(grids))
    put_artifact(store, model_name, layer, "map", grid_path,
                 {"hash": digest, "complete": units is None, "grid": list(GRID), "map_image": base,
                  "crops": crops,
                  "projection": "equirectangular lon -180..180, lat 90..-90"}, run_id)
    if units is None:  # a partial run keeps its place-name chunks for the rest of the units
        Checkpoints(store, f"work/{places_job(model_name, layer, digest)}").clear()
    return report


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
