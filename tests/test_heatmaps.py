"""Heatmaps as data: quantized maps round-trip, the server-rendered overlay PNG follows the stored map, and
migration 5e1f0c2a9b47 turns an old store's JSON maps and overlay PNG files into unit_heatmaps rows (and its
world-map grids into quantized columns), deleting the files."""
import io
import json

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import create_engine, inspect, text

from app.heatmaps import grid_values, quantize, unpack
from store.cache import Cache
from store.migrate import downgrade, upgrade
from tests.synthetic import K_EXAMPLES, populate


def test_quantized_maps_come_back_within_half_a_step_of_their_own_range():
    rng = np.random.default_rng(0)
    maps = np.stack([rng.normal(0, s, (7, 7)) for s in (1e-3, 1.0, 300.0)] + [np.full((7, 7), 2.5)])
    heat = unpack(quantize(maps, n_top=2))
    assert heat.maps.dtype == np.uint8 and heat.maps.shape == (4, 7, 7) and heat.n_top == 2
    for i, want in enumerate(maps):
        step = (want.max() - want.min()) / 255
        assert np.abs(heat.values(i) - want).max() <= step / 2 + 1e-6 * np.abs(want).max()
    assert (heat.row("top", 1), heat.row("bottom", 0), heat.row("bottom", 2), heat.row("top", 2)) == (1, 2, None, None)


def png_pixels(response) -> np.ndarray:
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return np.asarray(PILImage.open(io.BytesIO(response.content)).convert("RGBA"))


def test_heatmap_png_endpoint_draws_the_stored_map(store, client):
    """tests.synthetic's maps: top examples [[g, 0], [0, g/2]], bottom ones [[-g, 0], [0, g/2]] (g = 1)."""
    populate(store, "synth", {"layer4": 3})
    base = "/models/synth/layer4/1/examples"
    first = client.get(f"{base}/top/0/heatmap.png")
    top = png_pixels(first)
    assert first.headers["cache-control"] == "public, no-cache"  # revalidated: a worker rerun replaces it
    assert client.get(f"{base}/top/0/heatmap.png", headers={"If-None-Match": first.headers["etag"]}).status_code == 304
    assert top.shape == (2, 2, 4) and (top[..., :3] == (255, 110, 0)).all()
    assert top[..., 3].tolist() == [[230, 0], [0, 115]]  # the positive part relative to its peak
    bottom = png_pixels(client.get(f"{base}/bottom/{K_EXAMPLES - 1}/heatmap.png"))
    assert (bottom[..., :3] == (0, 110, 255)).all() and bottom[..., 3].tolist() == [[230, 0], [0, 0]]
    page = client.get("/models/synth/layer4/1.json").json()["sections"]["examples"]
    assert np.allclose(page["top"][0]["heatmap"], [[1, 0], [0, 0.5]], atol=1 / 255) and page["grid"] == [2, 2]
    assert page["top"][0]["heatmap_image"] == f"{base}/top/0/heatmap.png"
    missing = client.get(f"{base}/top/{K_EXAMPLES}/heatmap.png")
    assert missing.status_code == 404 and "no top dataset example" in missing.text
    assert client.get(f"{base}/sideways/0/heatmap.png").status_code == 422
    assert client.get("/models/synth/layer4/9/examples/top/0/heatmap.png").status_code == 404


# -- migration from the PNG store ---------------------------------------------------------------------------

OLD_UNITS = 3
OLD_GRID = np.linspace(-2, 5, 12, dtype=np.float32).reshape(3, 4)  # a world-map grid, 3 x 4 cells


def old_store(db_url: str, cache: Cache) -> list[str]:
    """A store at revision 0004 as the old worker left it: per example a JSON map and an overlay PNG; unit 2's
    bottom example has lost its JSON map (only its PNG is left). Returns the overlay files' paths."""
    upgrade(db_url, "0004")
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    paths = []
    with engine.begin() as c:
        c.execute(text("INSERT INTO models (id, name, arch, image_size, description, created_at) "
                       "VALUES (1, 'old', 'RN50', 224, '', CURRENT_TIMESTAMP)"))
        c.execute(text("INSERT INTO layers (id, model_id, name, module, n_units, kind, position, is_default) "
                       "VALUES (1, 1, 'layer4', 'visual.layer4', :n, 'conv', 0, true)"), {"n": OLD_UNITS})
        c.execute(text("INSERT INTO images (id, sha256, source, caption, width, height, path) "
                       "VALUES (1, 'ab', 's', 'c', 1, 1, 'images/ab.webp')"))
        for unit in range(OLD_UNITS):
            c.execute(text('INSERT INTO units (id, layer_id, "index") VALUES (:u, 1, :i)'), {"u": unit + 1, "i": unit})
            for sign, rank, heat in old_maps(unit):
                rel = cache.write(f"units/old/layer4/{unit}/examples-{sign}-{rank:03d}.png", overlay_png(heat, sign))
                paths.append(rel)
                stored = [] if (unit, sign) == (2, "bottom") else heat.tolist()
                c.execute(text("INSERT INTO dataset_examples (unit_id, sign, rank, activation, image_id, heatmap, "
                               "heatmap_image) VALUES (:u, :s, :r, 1.0, 1, :h, :p)"),
                          {"u": unit + 1, "s": sign, "r": rank, "h": json.dumps(stored), "p": rel})
        paths.append(cache.write("units/old/layer4/0/map-overlay-abc.png", overlay_png(OLD_GRID, "top")))
        c.execute(text("INSERT INTO map_activations (unit_id, grid, overlay) VALUES (1, :g, :p)"),
                  {"g": json.dumps(OLD_GRID.tolist()), "p": paths[-1]})
    engine.dispose()
    return paths


def old_maps(unit: int) -> list[tuple[str, int, np.ndarray]]:
    grid = np.arange(9, dtype=np.float32).reshape(3, 3) - 3.0 + unit
    return [("top", 0, grid), ("top", 1, grid * 2), ("bottom", 0, -grid)]


def overlay_png(heat: np.ndarray, sign: str) -> bytes:
    """The old worker's overlay (worker/analyses/examples.py heat_overlay before issue 19), written out here."""
    part = np.clip(heat if sign == "top" else -heat, 0, None)
    rgba = np.zeros((*heat.shape, 4), np.uint8)
    rgba[..., :3] = (255, 110, 0) if sign == "top" else (0, 110, 255)
    rgba[..., 3] = np.round(part / part.max() * 230)
    buf = io.BytesIO()
    PILImage.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def test_migration_turns_json_maps_and_overlay_files_into_one_row_a_unit(db_url, tmp_path):
    cache = Cache(tmp_path / "cache")
    paths = old_store(db_url, cache)
    upgrade(db_url, cache_root=cache.root)
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as c:  # SQLite batch rebuilds of a parent table (models) must not cascade
        assert [c.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in ("layers", "units")] == [1, 3]
    assert not any((cache.root / p).exists() for p in paths)
    columns = {c["name"] for c in inspect(engine).get_columns("dataset_examples")}
    assert not {"heatmap", "heatmap_image"} & columns
    with engine.connect() as c:
        rows = {r.unit_id: unpack(dict(r._mapping)) for r in c.execute(text("SELECT * FROM unit_heatmaps"))}
    assert sorted(rows) == [1, 2, 3]
    for unit in range(OLD_UNITS):
        heat = rows[unit + 1]
        assert heat.n_top == 2 and heat.maps.shape == (3, 3, 3)
        for sign, rank, want in old_maps(unit)[: 3 if unit < 2 else 2]:  # from the JSON: the map itself
            step = float(want.max() - want.min()) / 255
            assert np.abs(heat.values(heat.row(sign, rank)) - want).max() <= step / 2 + 1e-5
    recovered = rows[3].values(rows[3].row("bottom", 0))  # from the PNG: the negative part over its peak
    want = np.clip(old_maps(2)[2][2], None, 0) / -old_maps(2)[2][2].min()
    assert np.abs(recovered - want).max() <= 2 / 230
    with engine.connect() as c:
        grid = c.execute(text("SELECT rows, cols, heat, lo, hi FROM map_activations WHERE unit_id = 1")).one()
    assert (grid.rows, grid.cols) == (3, 4) and np.abs(grid_values(grid) - OLD_GRID).max() <= 7 / 255 / 2 + 1e-6
    downgrade(db_url, "0004")
    with engine.connect() as c:
        back = c.execute(text("SELECT heatmap FROM dataset_examples WHERE unit_id = 1 AND sign = 'top' "
                              "AND rank = 1")).scalar()
    back = json.loads(back) if isinstance(back, str) else back
    assert np.allclose(back, old_maps(0)[1][2], atol=8 / 255)
    with engine.connect() as c:
        grid = c.execute(text("SELECT grid FROM map_activations WHERE unit_id = 1")).scalar()
    assert np.allclose(json.loads(grid) if isinstance(grid, str) else grid, OLD_GRID, atol=7 / 255)
    engine.dispose()
