"""`microscope build --ray` on a local Ray cluster (2 CPUs): the same store as the single-process build, bit
for bit; a Ray worker killed mid-run changes nothing; a killed driver's rerun computes only the missing
ranges; a partial state lives in a file of a stated, bounded size; the maps stage's grids and place scores
bit for bit too; `microscope worker examples --ray auto` runs the examples stage on the cluster."""
import os
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from store.schema import (
    ActivationSample,
    DatasetExample,
    Layer,
    MapActivation,
    PlaceScore,
    Unit,
    UnitHeatmaps,
    UnitStats,
    WordScore,
)
from store.schema import FeatureVis as FeatureVisRow
from store.schema import Image as ImageRow
from store.settings import Settings
from store.writes import open_store
from tests.synthetic import picture
from worker.analyses.example_parts import Range
from worker.analyses.examples import LayerState, Progress
from worker.analyses.examples import one_thread as examples_one_thread
from worker.compute import partials
from worker.pipeline.contract import BuildContext
from worker.pipeline.runner import run_pipeline
from worker.stages.examples import Examples
from worker.stages.words import Words

CONFIG_DIR = Path(__file__).parent / "model_configs"
OPTIONS = {"examples": {"k": 4, "samples": 8, "batch_size": 4, "range_entries": 8, "write_units": 200},
           "words": {"list": "common", "n": 24}}


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent),
                                                                     str(Path(__file__).parent)])}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """22 pictures in three listing ranges of 8, a byte copy of picture 3 in the last range, one bad file."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(22):
        picture(i).save(root / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    (root / "zz-copy-of-03.png").write_bytes((root / "03.png").read_bytes())
    (root / "zz-not-an-image.jpg").write_bytes(b"plain text")
    return root


def settings_at(root: Path, url: str | None = None) -> Settings:
    return Settings(data_dir=root / "data", database_url=url or f"sqlite:///{root / 'store.db'}",
                    cache_dir=root / "cache")


def build(root: Path, loaded, corpus: Path | None, executor=None, stages=None, options=OPTIONS,
          layers=("layer4",), url: str | None = None) -> dict:
    store = open_store(settings_at(root, url))
    ctx = BuildContext(store, loaded, "tiny", corpus, layers, options, (CONFIG_DIR,), progress=False)
    outcomes = run_pipeline(ctx, stages=stages or [Examples(), Words()], executor=executor, echo=lambda _: None)
    assert [o.status for o in outcomes] == ["done"] * len(outcomes), outcomes
    return {"store": store, "outcomes": outcomes}


def content(store) -> dict:
    """Every example, statistic, sample and word score, keyed by neuron and image hash (not row ids)."""
    with store.sessions() as s:
        key = {uid: (layer, index) for uid, layer, index in s.execute(
            select(Unit.id, Layer.name, Unit.index).join(Layer, Unit.layer_id == Layer.id)).all()}
        sha = dict(s.execute(select(ImageRow.id, ImageRow.sha256)).all())
        return {
            "images": sorted((i.sha256, i.source, i.path, i.thumb) for i in s.scalars(select(ImageRow))),
            "examples": sorted((*key[e.unit_id], e.sign, e.rank, sha[e.image_id], e.activation)
                               for e in s.scalars(select(DatasetExample))),
            "heatmaps": sorted((*key[h.unit_id], h.n_top, h.height, h.width, h.maps, h.lo, h.hi)
                               for h in s.scalars(select(UnitHeatmaps))),
            "stats": sorted((*key[u.unit_id], u.n, u.mean, u.std, u.min, u.max, u.quantiles, u.histogram)
                            for u in s.scalars(select(UnitStats))),
            "samples": sorted((*key[a.unit_id], sha[a.image_id], a.activation)
                              for a in s.scalars(select(ActivationSample))),
            "words": sorted((*key[w.unit_id], w.word_id, w.sign, w.rank, w.score)
                            for w in s.scalars(select(WordScore))),
            "matrix": matrix_of(store),
        }


def matrix_of(store) -> tuple:
    """The layer's registered activation matrix (one part per range): its values, hashes and entries."""
    from worker.analyses.activations import stored_matrix

    matrix = stored_matrix(store, "tiny", "layer4")
    return matrix.dense().tobytes(), matrix.hashes.tolist(), matrix.entries.tolist()


def one_thread():
    """One intra-op thread, as in a one-CPU Ray task (CPU convolutions differ by ~1e-7 with other counts)."""
    return examples_one_thread(torch.device("cpu"))


@pytest.fixture(scope="module")
def serial(tmp_path_factory, tiny_rn, corpus) -> dict:
    """The single-process build, at one intra-op thread like a one-CPU Ray task: a CPU convolution's float32
    rounding depends on how many threads split it (about 1e-7 relative), so bit-for-bit needs the same."""
    with one_thread():
        got = build(tmp_path_factory.mktemp("serial"), tiny_rn, corpus)
    return {"content": content(got["store"]), "report": got["outcomes"][0]}


def test_a_ray_build_gives_the_single_process_store_bit_for_bit(ray_cluster, serial, tiny_rn, corpus, tmp_path,
                                                               db_url):
    """On a SQLite file and on Postgres (the cluster's store: write pieces commit concurrently)."""
    from worker.pipeline.ray_executor import RayExecutor

    got = build(tmp_path, tiny_rn, corpus, RayExecutor(), url=db_url)
    assert content(got["store"]) == serial["content"]  # exact: no tolerance
    data = serial["content"]
    assert len(data["stats"]) == 512 and data["stats"][0][2] == 23  # the copy in another range counts in the moments
    assert serial["report"].units == 512
    assert data["heatmaps"] and len(data["heatmaps"]) == 512 and data["words"]
    assert len(data["matrix"][1]) == 23  # one row per image of each range: the copy has a row in its range too
    assert not (tmp_path / "data" / "partials").exists() or not any((tmp_path / "data" / "partials").iterdir())


class Flaky(Examples):
    """The examples stage whose first attempt at range 8 kills its Ray worker process (os._exit), noting
    each range it computes rather than finds in a partial file."""

    def __init__(self, marker: Path, log: Path):
        self.marker, self.log = marker, log

    def compute(self, ctx, item):
        if not partials.path_of(ctx.data_dir, item.payload[0], item.key).exists():
            with open(self.log, "a") as f:
                f.write(item.key + "\n")
        if item.key == "range-000000008" and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return super().compute(ctx, item)


def test_a_killed_worker_and_a_killed_driver_still_give_the_identical_store(ray_cluster, serial, tiny_rn, corpus,
                                                                             tmp_path):
    """A driver killed after range 0 left its partial file: the rerun computes ranges 8 and 16 only, and the
    worker computing range 8 dies on its first attempt; Ray retries it elsewhere."""
    from worker.pipeline.ray_executor import RayExecutor

    marker, log = tmp_path / "died", tmp_path / "computed"
    ctx = BuildContext(open_store(settings_at(tmp_path)), tiny_rn, "tiny", corpus, ("layer4",), OPTIONS, (CONFIG_DIR,),
                       progress=False)
    stage = Flaky(marker, tmp_path / "before")
    first = stage.items(ctx)[0]
    with one_thread():
        stage.compute(ctx, first)
    got = build(tmp_path, tiny_rn, corpus, RayExecutor(max_retries=2), [Flaky(marker, log), Words()])
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker process died, not the driver
    assert sorted(log.read_text().split()) == ["range-000000008", "range-000000008", "range-000000016"]
    assert content(got["store"]) == serial["content"]


def test_featurevis_unit_ranges_on_ray_render_what_one_process_renders(ray_cluster, tiny_rn, tmp_path):
    """layer1's 64 units in two unit ranges of 32, 2 steps: the same images (content-addressed paths) and
    objectives as the single-process build."""
    from worker.pipeline.ray_executor import RayExecutor
    from worker.stages.featurevis import FeatureVis

    def rendered(store) -> list:
        with store.sessions() as s:
            return sorted(s.execute(select(Unit.index, FeatureVisRow.kind, FeatureVisRow.image, FeatureVisRow.objective)
                                    .join(Unit, FeatureVisRow.unit_id == Unit.id)).all())

    options = {"featurevis": {"steps": 2, "batch": 8, "unit_range": 32}}
    with one_thread():
        serial = build(tmp_path / "serial", tiny_rn, None, None, [FeatureVis()], options, ("layer1",))
    got = build(tmp_path / "ray", tiny_rn, None, RayExecutor(), [FeatureVis()], options, ("layer1",))
    assert len(rendered(serial["store"])) == 64
    assert rendered(got["store"]) == rendered(serial["store"])
    assert got["outcomes"][0].units == 64


def test_maps_on_ray_store_the_single_process_grids_and_place_scores_bit_for_bit(ray_cluster, tiny_rn, tmp_path):
    """layer1's world-map grid and rendered place names computed as two Ray tasks: every unit's quantized
    grid, its range, its choropleth file and every country and city score as the single-process build."""
    from worker.pipeline.ray_executor import RayExecutor
    from worker.stages.maps import Maps

    def stored(store) -> dict:
        with store.sessions() as s:
            index = dict(s.execute(select(Unit.id, Unit.index)).all())
            return {"grids": sorted((index[m.unit_id], m.rows, m.cols, m.heat, m.lo, m.hi, m.choropleth)
                                    for m in s.scalars(select(MapActivation))),
                    "places": sorted((index[p.unit_id], p.kind, p.name, p.code, p.lat, p.lon, p.score)
                                     for p in s.scalars(select(PlaceScore)))}

    options = {"maps": {"crops": 8, "cities": 8, "batch_size": 64}}
    with one_thread():
        serial = build(tmp_path / "serial", tiny_rn, None, None, [Maps()], options, ("layer1",))
    got = build(tmp_path / "ray", tiny_rn, None, RayExecutor(), [Maps()], options, ("layer1",))
    want = stored(serial["store"])
    assert len(want["grids"]) == 64 and {p[1] for p in want["places"]} == {"country", "city"}
    assert stored(got["store"]) == want  # exact: no tolerance
    assert got["outcomes"][0].units == 64


def test_a_range_reads_its_own_images_once_and_no_other(tiny_rn, corpus, tmp_path, monkeypatch):
    """What `--shard i/N` could not do: the task of range 8 reads (and hashes) entries 8-15 only."""
    import worker.compute.corpus

    read = []
    original = worker.compute.corpus.read_bytes
    monkeypatch.setattr(worker.compute.corpus, "read_bytes",
                        lambda entry, *a: read.append(entry.source) or original(entry, *a))
    ctx = BuildContext(open_store(settings_at(tmp_path)), tiny_rn, "tiny", corpus, ("layer4",), OPTIONS, (CONFIG_DIR,),
                       progress=False)
    items = Examples().items(ctx)
    assert [i.key for i in items] == ["range-000000000", "range-000000008", "range-000000016"]
    assert read == []  # listing reads no image
    part = Examples().compute(ctx, items[1])
    assert read == [e.source for e in items[1].payload[1].entries] == [f"{i:02d}.{'png' if i % 2 else 'jpg'}"
                                                                       for i in range(8, 16)]
    assert part["counts"]["images"] == 8 and Path(part["path"]).is_file()


def test_the_default_build_never_imports_ray(tmp_path):
    import subprocess
    import sys

    code = ("import sys, worker.pipeline.runner, worker.stages, worker.cli.stages, app.web; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ}, cwd=Path(__file__).parent.parent)


# -- partial states: in files, of a bounded size ------------------------------------------------------------

RN50X4_UNITS, RN50X4_GRID, K = 2560, (9, 9), 64
BOUND = 128 * 2**20  # stated: an RN50x4-sized layer's partial is under 128 MiB


def test_an_rn50x4_sized_partial_is_a_file_of_bounded_size(tmp_path):
    """The layout: per unit, top and bottom K slots of (key, hash, entry: 8 B; value, map scale: 4 B; map:
    81 × 2 B), the moments (n, mean, m2: 8 B; min, max: 4 B), the sketch (757 int64 bins) and the samples
    (379 bins of hash, entry, value): 2 × 64 × 194 + 32 + 6,056 + 7,580 = 38,500 B per unit, 98.6 MB for
    2,560 units."""
    state = LayerState(RN50X4_UNITS, K, RN50X4_GRID)
    g = torch.Generator().manual_seed(0)
    for part in (state.top, state.bottom):  # full slots, as after a long run
        part.keys = torch.randint(-2**62, 2**62, part.keys.shape, generator=g)
        part.values, part.maps = torch.randn(part.values.shape), torch.randn(part.maps.shape).half()
        part.entries = torch.randint(0, 10**6, part.entries.shape, generator=g)
    progress = Progress({"layer4": state})
    progress.seen.recent = set(range(4096))  # the range's content hashes: 8 B per image
    layout = partials.tensor_bytes(progress.state_dict())
    assert layout == RN50X4_UNITS * 38_500 + 4096 * 8 < BOUND  # the docstring's arithmetic, and the range's hashes
    path = partials.path_of(tmp_path, "fp", Range(0, ()).key)
    size = partials.save(path, progress.state_dict())
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))  # written atomically
    assert layout <= size <= layout * 1.01 + 2**20, (layout, size)  # the file is the tensors and little else
    assert size < BOUND, size
    back = partials.load(path)
    assert torch.equal(back["layers"]["layer4"]["top"]["maps"], state.top.maps)


def test_microscope_build_ray_auto_joins_the_running_cluster(ray_cluster, corpus, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from worker.cli.root import cli

    monkeypatch.setenv("MICROSCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MICROSCOPE_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    got = CliRunner().invoke(cli, ["build", "tiny-rn", "--config-dir", str(CONFIG_DIR), "--corpus", str(corpus),
                                   "--only", "examples", "--ray", "auto", "--no-progress"])
    assert got.exit_code == 0, got.output
    assert "examples" in got.output and "done" in got.output
    with open_store(settings_at(tmp_path)).sessions() as s:
        assert s.scalar(select(UnitStats.n).limit(1)) == 22  # one range (4096 entries): the copy meets its original


def test_microscope_worker_examples_ray_auto_runs_the_stage_on_the_cluster(ray_cluster, corpus, tmp_path,
                                                                          monkeypatch):
    from typer.testing import CliRunner

    from worker.cli.root import cli

    monkeypatch.setenv("MICROSCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MICROSCOPE_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    got = CliRunner().invoke(cli, ["worker", "examples", "tiny-rn", "--config-dir", str(CONFIG_DIR), "--corpus",
                                   str(corpus), "--k", "2", "--samples", "0", "--range-entries", "12", "--ray", "auto",
                                   "--no-progress"])
    assert got.exit_code == 0, got.output
    assert "tiny-rn: 22 images (1 duplicates, skipped: 1 not-image) in 2 ranges" in got.output
    with open_store(settings_at(tmp_path)).sessions() as s:
        assert s.scalar(select(UnitStats.n).limit(1)) == 23  # the copy in the second range counts in the moments
