"""Dataset examples end to end on tiny random-init open_clip models (ResNet and ViT):
top/bottom-K and statistics equal a brute-force computation; `microscope worker examples` killed with
SIGKILL and restarted computes only the listing ranges it had not finished and leaves the same store as an
uninterrupted run; bad files are counted."""
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from sqlalchemy import select
from typer.testing import CliRunner

from app.heatmaps import unpack
from store.schema import ActivationSample, DatasetExample, Layer, Model, Run, Unit, UnitHeatmaps, UnitStats
from store.schema import Image as ImageRow
from store.settings import Settings
from store.writes import open_store
from worker.analyses.examples import ExampleOptions, run_examples
from worker.cli.stages import worker_cli
from worker.compute.corpus import Skip, content_hash, decode, iter_entries, read_bytes
from worker.compute.layers import readings
from worker.compute.models import load_model, save_checkpoint
from worker.compute.stats import QUANTILES, Moments, Sketch, spread
from worker.compute.topk import TopK

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(__file__).parent / "model_configs"


# -- corpora and brute force ------------------------------------------------------------------------

def pattern(seed: int) -> Image.Image:
    """A smooth random colour field with a random rectangle: varied enough to spread activations."""
    rng = np.random.default_rng(seed)
    size = (64 + seed % 17, 64 + (seed * 7) % 23)
    img = Image.fromarray((rng.random((4, 4, 3)) * 255).astype("uint8")).resize(size, Image.BICUBIC)
    box = sorted(rng.integers(0, 60, 2).tolist()) + sorted(rng.integers(0, 60, 2).tolist())
    ImageDraw.Draw(img).rectangle((box[0], box[2], box[1] + 2, box[3] + 2), fill=tuple(rng.integers(0, 256, 3)))
    return img


def make_corpus(root: Path, n: int = 30, bad: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pattern(i).save(root / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    if bad:
        (root / "sub").mkdir()
        (root / "sub" / "not-an-image.jpg").write_bytes(b"plain text")
        (root / "sub" / "empty.png").write_bytes(b"")
        (root / "sub" / "truncated.png").write_bytes((root / "001.png").read_bytes()[:300])
        (root / "sub" / "copy-of-004.jpg").write_bytes((root / "004.jpg").read_bytes())
    return root


def hash64(sha: str) -> int:
    return int(sha[:16], 16) >> 1


def brute_force(loaded, corpus: Path, layer: str, reduce: str):
    """Every distinct good image through the model at once: (shas, top scalars, bottom scalars, maps)."""
    images: dict[str, Image.Image] = {}
    for entry in iter_entries(corpus):
        try:
            data = read_bytes(entry)
            img = decode(data, draft=loaded.image_size)  # as the pipeline decodes (JPEG draft scaling)
        except Skip:
            continue
        images.setdefault(content_hash(data)[0], img)
    shas = list(images)
    x = torch.stack([loaded.preprocess(images[s]) for s in shas])
    with torch.inference_mode():
        r = readings(loaded, x, [layer])[layer]
    maps, low_maps = r.heat.flatten(2).float(), r.heat_negative.flatten(2).float()
    high = r.value if reduce == "mean" else maps.amax(2)
    low = r.negative if reduce == "mean" else low_maps.amin(2)
    return shas, high, low, (maps, low_maps)


def ranked(shas, values, unit: int, k: int, descending: bool) -> list[int]:
    sign = -1 if descending else 1
    return sorted(range(len(shas)), key=lambda i: (sign * float(values[i, unit]), hash64(shas[i])))[:k]


def stored_examples(store, model: str, layer: str) -> dict[tuple[int, str], list[tuple[str, float, np.ndarray]]]:
    """(image hash, activation, map dequantized from unit_heatmaps) per (unit, sign), best first."""
    with store.sessions() as s:
        rows = s.execute(
            select(Unit.index, DatasetExample.sign, DatasetExample.rank, ImageRow.sha256, DatasetExample.activation)
            .join(Unit, DatasetExample.unit_id == Unit.id).join(Layer, Unit.layer_id == Layer.id)
            .join(Model, Layer.model_id == Model.id).join(ImageRow, DatasetExample.image_id == ImageRow.id)
            .where(Model.name == model, Layer.name == layer).order_by(Unit.index, DatasetExample.sign,
                                                                       DatasetExample.rank)).all()
        heat = {index: unpack(h) for index, h in s.execute(
            select(Unit.index, UnitHeatmaps).join(Unit, UnitHeatmaps.unit_id == Unit.id)
            .join(Layer, Unit.layer_id == Layer.id).where(Layer.name == layer)).all()}
    out: dict = {}
    for unit, sign, rank, sha, act in rows:
        out.setdefault((unit, sign), []).append((sha, act, heat[unit].values(heat[unit].row(sign, rank))))
    return out


def stored_stats(store, model: str, layer: str) -> dict[int, UnitStats]:
    with store.sessions() as s:
        return dict(s.execute(select(Unit.index, UnitStats).join(Unit, UnitStats.unit_id == Unit.id)
                              .join(Layer, Unit.layer_id == Layer.id).join(Model, Layer.model_id == Model.id)
                              .where(Model.name == model, Layer.name == layer)).all())


def check_against_brute_force(store, loaded, corpus, model, layer, reduce, k):
    shas, high, low, (maps, low_maps) = brute_force(loaded, corpus, layer, reduce)
    examples = stored_examples(store, model, layer)
    units = high.shape[1]
    index = {sha: i for i, sha in enumerate(shas)}
    assert len(examples) == 2 * units
    exact = 0
    for unit in range(units):
        for sign, values, desc, heats in (("top", high, True, maps), ("bottom", low, False, low_maps)):
            want = ranked(shas, values, unit, k, desc)
            got = examples[(unit, sign)]
            mine = [index[sha] for sha, _, _ in got]
            exact += mine == want
            # float32 results move in the 6th digit with batch composition: only near-ties may swap
            assert np.allclose([float(values[i, unit]) for i in mine], [float(values[i, unit]) for i in want],
                               rtol=1e-5, atol=1e-6), (unit, sign)
            for (_, act, heat), i in zip(got, mine, strict=True):
                assert math.isclose(act, float(values[i, unit]), rel_tol=1e-4, abs_tol=1e-5)
                want_map = heats[i, unit].numpy()
                step = float(want_map.max() - want_map.min()) / 255  # uint8 over the map's own range
                assert np.allclose(heat.ravel(), want_map, rtol=2e-3, atol=step / 2 + 2e-3)
    assert exact >= 0.98 * 2 * units  # and almost every list is exactly the brute-force one
    stats = stored_stats(store, model, layer)
    n = len(shas)
    sorted_high = high.double().sort(0).values
    for unit in range(units):
        st = stats[unit]
        assert st.n == n
        assert math.isclose(st.mean, float(high[:, unit].double().mean()), rel_tol=1e-6, abs_tol=1e-7)
        assert math.isclose(st.std, float(high[:, unit].double().std(unbiased=False)), rel_tol=1e-5, abs_tol=1e-7)
        # float32 conv results differ in the 6th digit with batch composition
        assert math.isclose(st.min, float(sorted_high[0, unit]), rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(st.max, float(sorted_high[-1, unit]), rel_tol=1e-5, abs_tol=1e-6)
        for q in QUANTILES:
            exact = float(sorted_high[int(q * (n - 1)), unit])
            assert math.isclose(st.quantiles[str(q)], exact, rel_tol=0.03, abs_tol=2e-4), (unit, q)
        assert sum(st.histogram["counts"]) == n and len(st.histogram["edges"]) == len(st.histogram["counts"]) + 1
    return shas, high


def settings_at(root: Path) -> Settings:
    return Settings(data_dir=root / "data", database_url=f"sqlite:///{root / 'store.db'}", cache_dir=root / "cache")


def snapshot(store, runs: bool = True) -> dict:
    """The store's dataset-example content, keyed by neuron and image hash (not by row ids)."""
    with store.sessions() as s:
        key = {uid: (layer, index) for uid, layer, index in s.execute(
            select(Unit.id, Layer.name, Unit.index).join(Layer, Unit.layer_id == Layer.id)).all()}
        sha = dict(s.execute(select(ImageRow.id, ImageRow.sha256)).all())
        out = {
            "images": sorted((i.sha256, i.source, i.caption, i.width, i.height, i.path, i.thumb)
                             for i in s.scalars(select(ImageRow))),
            "examples": sorted(((*key[e.unit_id], e.sign, e.rank, sha[e.image_id], e.activation)
                                for e in s.scalars(select(DatasetExample))), key=lambda t: t[:4]),
            "heatmaps": sorted((*key[h.unit_id], h.n_top, h.height, h.width, h.maps, h.lo, h.hi)
                               for h in s.scalars(select(UnitHeatmaps))),
            "stats": sorted(((*key[u.unit_id], u.n, u.mean, u.std, u.min, u.max, u.quantiles, u.histogram)
                             for u in s.scalars(select(UnitStats))), key=lambda t: t[:2]),
            "samples": sorted((*key[a.unit_id], sha[a.image_id], a.activation)
                              for a in s.scalars(select(ActivationSample))),
        }
        if runs:
            out["runs"] = [(r.stage, r.status, r.layer, r.weights, r.settings,
                            {k: v for k, v in r.report.items() if k != "timing"})
                           for r in s.scalars(select(Run).order_by(Run.id))]
    return out


def same(a, b, path: str = "") -> None:
    """Equal, floats up to float32 noise."""
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), (path, a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), (path, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def cache_files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def wait_for_partials(folder: Path, keys: list[str], proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until the worker has saved the partial files of the listing ranges `keys` (it then blocks on the FIFO)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()
        if sorted(p.stem for p in folder.glob("*/range-*.pt")) == keys:
            return
        time.sleep(0.2)
    pytest.fail(f"no partials {keys} within {timeout} s")


# -- the tests ---------------------------------------------------------------------------------------

def test_resnet_top_and_bottom_k_and_stats_equal_brute_force(store, client, tiny_rn, tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    opts = ExampleOptions(k=4, batch_size=7, workers=0, progress=False, samples=12)
    report = run_examples(store, tiny_rn, "tiny", corpus, ["layer4"], opts)
    assert report["images"] == 30 and report["duplicates"] == 1 and report["entries"] == 34
    assert report["skipped"] == {"empty": 1, "not-image": 1, "truncated": 1}
    shas, high = check_against_brute_force(store, tiny_rn, corpus, "tiny", "layer4", "mean", 4)

    with store.sessions() as s:
        run = s.scalars(select(Run)).one()
        assert (run.stage, run.status, run.layer, run.settings["signal"]) == ("examples", "done", "layer4", "pre-relu")
        assert run.report["skipped"] == report["skipped"]
        assert {r.sha256 for r in s.scalars(select(ImageRow))} <= set(shas)
        samples = s.execute(select(Unit.index, ActivationSample.activation)
                            .join(Unit, ActivationSample.unit_id == Unit.id)).all()
    per_unit: dict[int, list[float]] = {}
    for unit, act in samples:
        per_unit.setdefault(unit, []).append(act)
    assert len(per_unit) == 512 and all(5 <= len(v) <= 12 for v in per_unit.values())
    for unit in (0, 100, 511):  # a bounded sample that spans the range, extremes included
        assert math.isclose(max(per_unit[unit]), float(high[:, unit].max()), rel_tol=1e-5)
        assert math.isclose(min(per_unit[unit]), float(high[:, unit].min()), rel_tol=1e-5)

    page = client.get("/models/tiny/layer4/3")
    assert page.status_code == 200
    html = page.text
    assert "Most activating" in html and "Most negative" in html and "<svg" in html
    assert "Value shown: the mean over positions of the channel before the final ReLU" in html
    assert '<canvas class="heat"' in html and 'data-heat="' in html and "/static/heatmaps.js" in html
    assert "/models/tiny/layer4/3/examples/top/0/heatmap.png" in html  # the <noscript> fallback
    data = client.get("/models/tiny/layer4/3.json").json()["sections"]
    assert len(data["examples"]["top"]) == 4 and len(data["examples"]["bottom"]) == 4
    assert data["stats"]["n"] == 30 and data["examples"]["grid"] == [2, 2]
    overlay = client.get(data["examples"]["top"][0]["heatmap_image"])
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    assert not list((store.settings.cache_root / "units").rglob("examples-*.png"))  # no overlay files
    assert client.get(data["examples"]["top"][0]["image"]).status_code == 200


def test_vit_max_reduction_equals_brute_force_and_a_rerun_replaces_rows(tmp_path, tiny_vit):
    store = open_store(settings_at(tmp_path / "store"))
    corpus = make_corpus(tmp_path / "corpus", n=24, bad=False)
    opts = ExampleOptions(k=4, reduce="max", batch_size=10, workers=0, progress=False, samples=6)
    run_examples(store, tiny_vit, "vit", corpus, None, opts)  # default: the last block's MLP
    check_against_brute_force(store, tiny_vit, corpus, "vit", "resblocks.1.mlp", "max", 4)
    before = snapshot(store, runs=False)
    assert len(before["examples"]) == 256 * 2 * 4 and len(before["stats"]) == 256
    run_examples(store, tiny_vit, "vit", corpus, None, opts)
    same(snapshot(store, runs=False), before)
    with store.sessions() as s:
        runs = s.scalars(select(Run).order_by(Run.id)).all()
    assert [(r.status, r.settings["signal"]) for r in runs] == [("done", "cls")] * 2
    assert "class token" in runs[0].settings["signal_text"]


def gelu_tokens(loaded, x, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(GELU output, c_fc output) tokens (B, T, units) of one ViT block, read by hooks of their own."""
    mlp, seen = loaded.visual.transformer.resblocks[block].mlp, {}
    hooks = [mlp.gelu.register_forward_hook(lambda m, i, o: seen.setdefault("post", o.clone())),
             mlp.c_fc.register_forward_hook(lambda m, i, o: seen.setdefault("pre", o.clone()))]
    try:
        with torch.inference_mode():
            loaded.visual(x)
    finally:
        for h in hooks:
            h.remove()
    return seen["post"], seen["pre"]


@pytest.mark.parametrize("arch, pool", [("tiny-vit", "tok"), ("tiny-vit-avg", "avg")])
def test_vit_examples_rank_by_what_the_pooling_passes_on_and_bottoms_by_pre_gelu(tmp_path, arch, pool):
    """tok: the class token's GELU output ranks the top, its pre-GELU value the bottom; avg: the means over
    the patch tokens. The heatmaps stay the patch tokens' maps."""
    torch.manual_seed(0)
    loaded = load_model(arch, config_dirs=(CONFIG_DIR,))
    store = open_store(settings_at(tmp_path / "store"))
    corpus = make_corpus(tmp_path / "corpus", n=16, bad=False)
    run_examples(store, loaded, "vit", corpus, None, ExampleOptions(k=3, batch_size=8, workers=0, progress=False,
                                                                     samples=4))
    shas, images = [], {}
    for entry in iter_entries(corpus):
        data = read_bytes(entry)
        images.setdefault(content_hash(data)[0], decode(data, draft=loaded.image_size))
    shas = list(images)
    post, pre = gelu_tokens(loaded, torch.stack([loaded.preprocess(images[s]) for s in shas]), 1)
    pick = (lambda t: t[:, 0]) if pool == "tok" else (lambda t: t[:, 1:].mean(1))
    high, low = pick(post), pick(pre)
    assert float(low.min()) < -0.5 < -0.17 < float(high.min())  # pre-GELU reaches where GELU cannot
    examples, index = stored_examples(store, "vit", "resblocks.1.mlp"), {s: i for i, s in enumerate(shas)}
    for unit in range(0, 256, 17):
        for sign, values, desc in (("top", high, True), ("bottom", low, False)):
            got = examples[(unit, sign)]
            assert [index[sha] for sha, _, _ in got] == ranked(shas, values, unit, 3, desc), (unit, sign)
            assert np.allclose([a for _, a, _ in got], [float(values[index[s], unit]) for s, _, _ in got], atol=1e-5)
        sha, _, heat = examples[(unit, "top")][0]
        want_map = post[index[sha], 1:, unit].numpy()
        step = float(want_map.max() - want_map.min()) / 255  # stored as uint8 over the map's own range
        assert np.allclose(heat.ravel(), want_map, rtol=5e-3, atol=step / 2 + 2e-3)
    with store.sessions() as s:
        settings = s.scalar(select(Run).where(Run.stage == "examples")).settings
    assert settings["signal"] == {"tok": "cls", "avg": "patches"}[pool]


def test_a_run_killed_with_sigkill_resumes_to_the_same_store(tmp_path, tiny_rn, monkeypatch):
    """Ranges of 4 entries; the run blocks in range 8 and is killed: the rerun computes ranges 8-20 only."""
    from worker.analyses import example_parts

    weights = save_checkpoint(tiny_rn.model, tmp_path / "tiny.safetensors")
    images = make_corpus(tmp_path / "images", n=20, bad=False)
    blocker = images / "blocker.png"
    os.mkfifo(blocker)  # reading it blocks: the run stops there, deterministically, until it is killed
    names = sorted(p.name for p in images.iterdir() if p != blocker)
    names.insert(9, blocker.name)  # in range 8 (ranges of 4)
    manifest = tmp_path / "corpus.jsonl"
    manifest.write_text("".join(json.dumps({"path": f"images/{n}", "caption": f"picture {n}"}) + "\n" for n in names))
    killed = settings_at(tmp_path / "killed")
    args = ["examples", "tiny-rn", "--config-dir", str(CONFIG_DIR), "--weights", str(weights), "--name", "tiny",
            "--corpus", str(manifest), "--layer", "layer1", "--k", "4", "--batch-size", "4", "--samples", "8",
            "--range-entries", "4", "--no-progress", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-c", "from worker.cli.root import main; main()", "worker", *args,
                             "--workers", "1"], cwd=ROOT, env={**os.environ, **store_env(killed)},
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_partials(killed.data_dir / "partials", ["range-000000000", "range-000000004"], proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    store = open_store(killed)
    with store.sessions() as s:
        assert [r.status for r in s.scalars(select(Run))] == ["running"]
        assert s.scalars(select(DatasetExample.id)).first() is None
    blocker.unlink()
    pattern(99).save(blocker, "PNG")
    computed, compute_range = [], example_parts.compute_range
    monkeypatch.setattr(example_parts, "compute_range",
                        lambda loaded, layers, piece, *a: computed.append(piece.start) or compute_range(loaded, layers,
                                                                                                      piece, *a))
    resumed = invoke(monkeypatch, killed, [*args, "--workers", "0"])
    assert "tiny: 21 images (0 duplicates, skipped: none) in 6 ranges" in resumed.stdout
    assert computed == [8, 12, 16, 20]
    reference = settings_at(tmp_path / "reference")
    invoke(monkeypatch, reference, [*args, "--workers", "0"])
    same(snapshot(store), snapshot(open_store(reference)))
    with store.sessions() as s:
        assert [r.status for r in s.scalars(select(Run))] == ["done"]  # the killed run's row, taken over
    assert cache_files(killed.cache_dir) == cache_files(reference.cache_dir)
    assert list((killed.data_dir / "partials").iterdir()) == []


def store_env(settings: Settings) -> dict[str, str]:
    return {"MICROSCOPE_DATA_DIR": str(settings.data_dir), "MICROSCOPE_CACHE_DIR": str(settings.cache_dir),
            "MICROSCOPE_DATABASE_URL": settings.db_url}


def invoke(monkeypatch, settings: Settings, args: list[str]):
    """`microscope worker …` in this process, on the store at `settings`; exit code 0 asserted."""
    for name, value in store_env(settings).items():
        monkeypatch.setenv(name, value)
    got = CliRunner().invoke(worker_cli, args)
    assert got.exit_code == 0, got.output
    return got


def test_worker_examples_skips_while_up_to_date_reruns_with_force_and_retires_shard(tmp_path, tiny_rn,
                                                                                      monkeypatch):
    corpus = make_corpus(tmp_path / "corpus", n=6, bad=False)
    settings = settings_at(tmp_path / "store")
    weights = save_checkpoint(tiny_rn.model, tmp_path / "tiny.safetensors")
    args = ["examples", "tiny-rn", "--config-dir", str(CONFIG_DIR), "--weights", str(weights), "--corpus", str(corpus),
            "--layer", "layer1",
            "--k", "2", "--batch-size", "4", "--samples", "0", "--workers", "0", "--no-progress", "--device", "cpu"]
    first = invoke(monkeypatch, settings, args)
    assert "6 images (0 duplicates, skipped: none) in 1 ranges" in first.stdout and "up to date" not in first.stdout
    again = invoke(monkeypatch, settings, args)
    assert "examples is up to date" in again.stdout and "6 images" in again.stdout
    invoke(monkeypatch, settings, [*args, "--force"])
    with open_store(settings).sessions() as s:
        assert [r.status for r in s.scalars(select(Run).where(Run.stage == "examples"))] == ["done", "done"]
    for bad, says in (([*args, "--shard", "0/2"], "--shard is retired: use every GPU with --ray"),
                      ([*args, "--jpeg-decode", "gpu"], "--jpeg-decode must be one of"),
                      ([*args[:7], str(tmp_path / "nowhere"), *args[8:]], "no such file or folder")):
        got = CliRunner().invoke(worker_cli, bad)
        assert got.exit_code == 2 and says in got.stderr and got.stderr.count("\n") == 1, got.output


def test_topk_is_independent_of_batching_and_merges_exactly():
    torch.manual_seed(0)
    values, maps = torch.randn(40, 6), torch.randn(40, 6, 4)
    values[5, :] = values[9, :]  # ties are broken by content hash, not by arrival order
    hashes, entries = torch.randperm(1000)[:40].long() << 40, torch.arange(40)
    whole = TopK(6, 7, 4)
    whole.update(values, hashes, entries, maps)
    parts = [TopK(6, 7, 4) for _ in range(3)]
    for i, chunk in enumerate(torch.arange(40).split(9)):
        parts[i % 3].update(values[chunk], hashes[chunk], entries[chunk], maps[chunk])
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    assert torch.equal(parts[0].ranked_entries(), whole.ranked_entries())
    for unit in range(6):
        want = sorted(range(40), key=lambda i: (-float(values[i, unit]), int(hashes[i])))[:7]
        got = whole.rows(unit)
        assert [e for _, e, _ in got] == want
        assert [v for v, _, _ in got] == [float(values[i, unit]) for i in want]
        assert all(torch.allclose(m, maps[i, unit], atol=1e-2) for (_, _, m), i in zip(got, want, strict=True))
    bottom = TopK(6, 3, 4, sign=-1)
    bottom.update(values, hashes, entries, maps)
    assert [v for v, _, _ in bottom.rows(2)] == values[:, 2].sort().values[:3].tolist()


def test_moments_and_sketch_merge_to_the_whole_and_estimate_quantiles():
    torch.manual_seed(1)
    values = torch.cat([torch.randn(3000, 3) * 2, torch.rand(3000, 3) * 9 - 1])
    whole_m, whole_s = Moments(3), Sketch(3)
    whole_m.update(values)
    whole_s.update(values)
    a_m, a_s, b_m, b_s = Moments(3), Sketch(3), Moments(3), Sketch(3)
    for chunk in values[:2500].split(333):
        a_m.update(chunk)
        a_s.update(chunk)
    b_m.update(values[2500:])
    b_s.update(values[2500:])
    a_m.merge(b_m)
    a_s.merge(b_s)
    assert torch.equal(a_s.counts, whole_s.counts)
    assert torch.allclose(a_m.mean, values.double().mean(0)) and torch.allclose(a_m.std, values.double().std(0, False))
    q = whole_s.quantiles(whole_m.min, whole_m.max)
    exact = torch.quantile(values.double(), torch.tensor(QUANTILES, dtype=torch.float64), dim=0).T
    assert torch.allclose(q, exact, rtol=0.03, atol=0.02)
    hist = whole_s.histogram(whole_m.min, whole_m.max)
    assert hist.sum(1).tolist() == [6000] * 3


def test_spread_covers_the_range_with_a_bounded_sample():
    candidates = [(float(v), i) for i, v in enumerate(np.r_[np.linspace(0, 1, 200), [5.0, -3.0]])]
    picked = spread(candidates, 10)
    assert len(picked) <= 10 and (5.0, 200) in picked and (-3.0, 201) in picked
    assert spread(candidates[:4], 10) == sorted(candidates[:4])


def test_loader_workers_leave_the_cores_to_the_forward(monkeypatch):
    import torch

    from worker.analyses import examples

    assert examples.loader_workers(3, torch.device("cpu")) == 3  # asked for: as asked
    monkeypatch.setattr(examples.os, "cpu_count", lambda: 2)
    assert examples.loader_workers(None, torch.device("cpu")) == 0
    assert examples.loader_workers(None, torch.device("cuda")) == 1
    monkeypatch.setattr(examples.os, "cpu_count", lambda: 16)
    assert examples.loader_workers(None, torch.device("cpu")) == 1
    assert examples.loader_workers(None, torch.device("cuda")) == 15


def test_a_partial_file_is_the_same_bytes_whichever_process_wrote_it(tmp_path, monkeypatch):
    """The resumed run's report compares partial bytes with an unbroken run's; a pid in the file made them differ."""
    from worker.compute import partials

    state = {"counts": {"images": 3}, "top": torch.arange(12.0).reshape(3, 4)}
    written = []
    for pid in (7, 4_194_301):
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        path = tmp_path / f"{pid}" / "range-000000000.pt"
        written.append((partials.save(path, state), path.read_bytes()))
    assert written[0] == written[1]
    assert torch.equal(partials.load(path)["top"], state["top"])
