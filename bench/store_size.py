"""Store size and write speed of the dataset-examples stage, old path against new, side by side in one run.

A demo-sized layer without the model: a synthetic LayerState (768 units, 64 top + 64 bottom examples each,
7x7 maps, random activations over 512 images) written by
  old  the writer before issue 19 (copied below from git history): 128 overlay PNGs a unit through the
       cache, each map also as JSON floats in dataset_examples, on a store migrated to just before
       revision 5e1f0c2a9b47;
  new  worker.analyses.examples.write_layer: one quantized unit_heatmaps row a unit, bulk inserts (Postgres COPY),
       on a store at head.
Per neuron it prints the store bytes (database growth: SQLite file after a WAL checkpoint, Postgres
pg_database_size) plus the unit files in the cache (their bytes, and the disk they take in whole 4 KB
blocks), the file count, and units written per second.

    .venv/bin/python bench/store_size.py                    # SQLite and Postgres
    .venv/bin/python bench/store_size.py --backends sqlite --units 256
"""
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import typer
from PIL import Image as PILImage
from sqlalchemy import MetaData, Table, delete, insert, select, text
from sqlalchemy.exc import IntegrityError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import temp_store  # noqa: E402

from store.cache import Cache  # noqa: E402
from store.keys import UnitKey  # noqa: E402
from store.migrate import upgrade  # noqa: E402
from store.schema import Image, Layer, Model, Unit, make_engine, make_sessionmaker  # noqa: E402
from store.writes import Store, register_model, start_run  # noqa: E402
from worker.analyses.examples import ExampleOptions, LayerState, unit_sample, unit_stats, write_layer  # noqa: E402
from worker.compute.layers import LayerSpec, Reading  # noqa: E402

MODEL, LAYER = "bench", "layer4"
HEATMAPS_REVISION = "5e1f0c2a9b47"  # the migration that made heatmaps data: the old path runs just before it


def synthetic_state(units: int, k: int, grid: int, images: int, seed: int = 0) -> LayerState:
    """Top/bottom-K, moments, sketch and samples of random activations, as the stream leaves them."""
    state = LayerState(units, k, (grid, grid))
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, images, 64):
        n = min(64, images - start)
        ids = torch.arange(start, start + n)
        maps = torch.randn(n, units, grid, grid, generator=gen)
        pooled = maps.mean((2, 3))
        state.update(Reading(pooled, pooled, maps, maps), ids * 7919 + 1, ids, "mean")
    return state


def old_revisions(url: str) -> list[str]:
    from alembic.script import ScriptDirectory

    from store.migrate import alembic_config

    down = ScriptDirectory.from_config(alembic_config(url)).get_revision(HEATMAPS_REVISION).down_revision
    return [down] if isinstance(down, str) else list(down)


def prepare(settings, revision: str, units: int, images: int) -> tuple[Store, dict[int, int], int]:
    """A store at `revision` ("old": just before the heatmaps migration) with the model, its layer's unit
    rows, image rows and a run."""
    for target in old_revisions(settings.db_url) if revision == "old" else [revision]:
        upgrade(settings.db_url, target)
    store = Store(make_sessionmaker(make_engine(settings.db_url)), Cache(settings.cache_root), settings)
    with store.sessions.begin() as s:
        model = register_model(s, MODEL, "RN50", None, 224, [LayerSpec(LAYER, f"visual.{LAYER}", units, True)])
        rows = [Image(sha256=f"{i:064x}", source=f"bench:{i}", path=f"images/{i}.webp") for i in range(images)]
        s.add_all(rows)
        s.flush()
        run_id = start_run(s, "examples", model, {"bench": True}, layer=LAYER).id
        return store, {i: r.id for i, r in enumerate(rows)}, run_id


def db_bytes(store: Store) -> int:
    with store.sessions() as s:
        if s.get_bind().dialect.name == "postgresql":
            return s.execute(text("SELECT pg_database_size(current_database())")).scalar()
        s.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        return Path(store.settings.db_url.removeprefix("sqlite:///")).stat().st_size


def unit_files(store: Store) -> tuple[int, int, int]:
    """Files under the cache's units/, their bytes and their disk use (whole blocks)."""
    files = [p.stat() for p in (store.cache.root / "units").rglob("*") if p.is_file()]
    return len(files), sum(f.st_size for f in files), sum(f.st_blocks * 512 for f in files)


def measure(name: str, backend: str, writer, revision: str, state: LayerState, images: int) -> dict:
    units = state.top.values.shape[0]
    with temp_store(backend) as settings:
        store, image_ids, run_id = prepare(settings, revision, units, images)
        before = db_bytes(store)
        opts = ExampleOptions(k=state.top.k, samples=256, progress=False, workers=2)
        started = time.perf_counter()
        writer(store, MODEL, LAYER, state, image_ids, opts, run_id)
        seconds = time.perf_counter() - started
        n_files, file_bytes, disk = unit_files(store)
        grown = db_bytes(store) - before
        store.sessions.kw["bind"].dispose()
    return {"path": name, "backend": backend, "units_per_s": units / seconds, "seconds": seconds,
            "db_kb": grown / units / 1e3, "file_kb": file_bytes / units / 1e3, "files": n_files / units,
            "disk_kb": disk / units / 1e3}


# -- the writer before issue 19 (worker/analyses/examples.py at 85f55bb), on reflected tables of the old schema -----

HEAT_COLOURS = {"top": (255, 110, 0), "bottom": (0, 110, 255)}
UNITS_PER_TRANSACTION = 32


def old_write_layer(store, model_name, layer_name, state, image_ids, opts, run_id) -> None:
    tables = MetaData()
    engine = store.sessions.kw["bind"]
    reflected = {n: Table(n, tables, autoload_with=engine)
                 for n in ("dataset_examples", "activation_samples", "unit_stats")}
    with store.sessions() as session:
        unit_ids = dict(session.execute(
            select(Unit.index, Unit.id).join(Layer, Unit.layer_id == Layer.id).join(Model, Layer.model_id == Model.id)
            .where(Model.name == model_name, Layer.name == layer_name)).all())
    stats = unit_stats(state, run_id)
    units = len(stats)

    def rows(unit: int):
        uid, key = unit_ids[unit], UnitKey(model_name, layer_name, unit)
        examples = [row | {"unit_id": uid, "run_id": run_id}
                    for sign, part in (("top", state.top), ("bottom", state.bottom))
                    for row in old_example_rows(store, key, sign, part.rows(unit), state.grid, image_ids)]
        samples = [{"unit_id": uid, "image_id": image_ids[e], "activation": v}
                   for v, e in unit_sample(state, unit, opts) if e in image_ids]
        return stats[unit] | {"unit_id": uid}, examples, samples

    with ThreadPoolExecutor(max(2, opts.workers or 0)) as pool:
        for start in range(0, units, UNITS_PER_TRANSACTION):
            group = range(start, min(units, start + UNITS_PER_TRANSACTION))
            old_write_units(store, reflected, [unit_ids[u] for u in group], list(pool.map(rows, group)))


def old_example_rows(store, key, sign, rows, grid, image_ids) -> list[dict]:
    out = []
    for value, entry, flat in rows:
        if entry not in image_ids:
            continue
        rank = len(out)
        heat = flat.reshape(grid)
        overlay = store.cache.put_unit_image(key, f"examples-{sign}-{rank:03d}", old_heat_overlay(heat, sign))
        out.append({"sign": sign, "rank": rank, "activation": value, "image_id": image_ids[entry],
                    "heatmap": [[float(f"{v:.4g}") for v in row] for row in heat.tolist()],
                    "heatmap_image": overlay})
    return out


def old_heat_overlay(heat: torch.Tensor, sign: str) -> PILImage.Image:
    part = (heat if sign == "top" else -heat).clamp_min(0)
    peak = float(part.max())
    alpha = (part / peak * 230).round() if peak > 0 else torch.zeros_like(part)
    rgba = np.zeros((*heat.shape, 4), dtype=np.uint8)
    rgba[..., :3] = HEAT_COLOURS[sign]
    rgba[..., 3] = alpha.numpy().astype(np.uint8)
    return PILImage.fromarray(rgba, "RGBA")


def old_write_units(store, tables, unit_ids, rows) -> None:
    examples_t, samples_t, stats_t = (tables[n] for n in ("dataset_examples", "activation_samples", "unit_stats"))
    for attempt in range(2):
        try:
            with store.sessions.begin() as session:
                for table in (examples_t, samples_t, stats_t):
                    session.execute(delete(table).where(table.c.unit_id.in_(unit_ids)))
                session.execute(insert(stats_t), [stats for stats, _, _ in rows])
                examples = [e for _, unit_examples, _ in rows for e in unit_examples]
                samples = [s for _, _, unit_samples in rows for s in unit_samples]
                if examples:
                    session.execute(insert(examples_t), examples)
                if samples:
                    session.execute(insert(samples_t), samples)
            return
        except IntegrityError:
            if attempt:
                raise


# -- the rest of a neuron: words and maps, by their real writers ------------------------------------------

def whole_neuron(backend: str, state: LayerState, images: int, n_words: int, map_units: int) -> list[tuple]:
    """(part, KB a neuron in the database, files a neuron, KB of those files, units/s) for examples, word
    scores and maps (first `map_units` units: its pictures take ~0.2 s a unit), and the layer-wide artifacts
    (word and place-name matrices, map grids) shared out per neuron."""
    from scipy.ndimage import gaussian_filter

    from worker.analyses import maps
    from worker.analyses.words import write_matrix, write_word_scores

    units = state.top.values.shape[0]
    rng = np.random.default_rng(0)
    words = [f"word{i}" for i in range(n_words)]
    pre, post = rng.standard_normal((2, n_words, units), dtype=np.float32)
    world = maps.world_map()
    grids = gaussian_filter(rng.standard_normal((units, *maps.GRID)), (0, 2, 2)).astype(np.float32)
    texts, info = maps.place_texts(300)
    places = rng.standard_normal((len(texts), units), dtype=np.float32)
    out = []
    with temp_store(backend) as settings:
        store, image_ids, run_id = prepare(settings, "head", units, images)
        opts = ExampleOptions(k=state.top.k, samples=256, progress=False)
        stages = [("examples", units, lambda: write_layer(store, MODEL, LAYER, state, image_ids, opts, run_id)),
                  ("words", units, lambda: write_word_scores(store, MODEL, LAYER, words, pre, post, run_id)),
                  ("maps", map_units, lambda: maps.write_unit_maps(store, MODEL, LAYER, world, grids, places, info,
                                                                  "bench", run_id, set(range(map_units)))),
                  ("layer artifacts", units, lambda: layer_artifacts(store, write_matrix, words, pre, post, texts,
                                                                      places, grids))]
        for part, n, write in stages:
            before, (files_before, bytes_before, _) = db_bytes(store), unit_or_artifact_files(store)
            started = time.perf_counter()
            write()
            seconds = time.perf_counter() - started
            files, file_bytes, _ = unit_or_artifact_files(store)
            out.append((part, (db_bytes(store) - before) / n / 1e3, (files - files_before) / n,
                        (file_bytes - bytes_before) / n / 1e3, n / seconds))
        store.sessions.kw["bind"].dispose()
    return out


def layer_artifacts(store, write_matrix, words, pre, post, texts, places, grids) -> None:
    """What the words and maps stages keep for the whole layer, as they write it."""
    from worker.analyses.words import npy_bytes

    write_matrix(store, MODEL, LAYER, "words", words, {"post": post, "pre": pre}, {"hash": "bench"}, None)
    write_matrix(store, MODEL, LAYER, "places", texts, {"post": places, "pre": places}, {"hash": "bench"}, None)
    store.cache.write(f"artifacts/{MODEL}/{LAYER}/map-bench.npy", npy_bytes(grids))


def unit_or_artifact_files(store: Store) -> tuple[int, int, int]:
    counts = [unit_files(store)]
    artifacts = [p.stat() for p in (store.cache.root / "artifacts").rglob("*") if p.is_file()]
    counts.append((len(artifacts), sum(f.st_size for f in artifacts), 0))
    return tuple(sum(c[i] for c in counts) for i in range(3))


def print_whole(backend: str, parts: list[tuple]) -> None:
    print(f"{backend}: the whole neuron on the new path (feature-vis images aside), per neuron")
    print(f"  {'part':16} {'db KB':>7} {'files':>6} {'files KB':>9} {'units/s':>8}")
    for part, db, files, kb, rate in parts:
        print(f"  {part:16} {db:7.1f} {files:6.2f} {kb:9.1f} {rate:8.0f}")
    neuron = [p for p in parts if p[0] != "layer artifacts"]
    print(f"  {'neuron total':16} {sum(p[1] for p in neuron):7.1f} {sum(p[2] for p in neuron):6.2f}"
          f" {sum(p[3] for p in neuron):9.1f}   = {sum(p[1] + p[3] for p in neuron):.1f} KB; with the layer's"
          f" artifacts {sum(p[1] + p[3] for p in parts):.1f} KB")


# -- report -----------------------------------------------------------------------------------------------

def main(units: int = typer.Option(768, help="units of the layer (the demo's layer4: 768)"),
         k: int = typer.Option(64, help="examples per sign"),
         grid: int = typer.Option(7, help="map side"),
         images: int = typer.Option(512, help="synthetic images the examples are drawn from"),
         backends: str = typer.Option("sqlite,postgres", help="comma-separated: sqlite, postgres"),
         words: int = typer.Option(10_000, help="rendered words scored (the words stage's default list)"),
         map_units: int = typer.Option(96, help="units whose map pictures are drawn (0: skip the whole neuron)")):
    state = synthetic_state(units, k, grid, images)
    print(f"{units} units, {k}+{k} examples each, {grid}x{grid} maps; per neuron:")
    print(f"{'backend':9} {'path':4} {'units/s':>8} {'seconds':>8} {'db KB':>7} {'files KB':>9} {'files':>6}"
          f" {'total KB':>9} {'files on disk KB':>16}")
    for backend in backends.split(","):
        results = [measure("old", backend, old_write_layer, "old", state, images),
                   measure("new", backend, write_layer, "head", state, images)]
        for r in results:
            print(f"{backend:9} {r['path']:4} {r['units_per_s']:8.0f} {r['seconds']:8.2f} {r['db_kb']:7.1f}"
                  f" {r['file_kb']:9.1f} {r['files']:6.1f} {r['db_kb'] + r['file_kb']:9.1f} {r['disk_kb']:16.1f}")
        old, new = results
        print(f"{backend:9} new/old: {new['units_per_s'] / old['units_per_s']:.1f}x units/s, "
              f"{(new['db_kb'] + new['file_kb']) / (old['db_kb'] + old['file_kb']):.2f}x bytes")
    for backend in backends.split(",") if map_units else []:
        print_whole(backend, whole_neuron(backend, state, images, words, map_units))


if __name__ == "__main__":
    typer.run(main)
