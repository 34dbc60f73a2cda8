"""Scale-out: the examples stage (`microscope build --ray`) on one vs two Ray workers on this machine, and
the per-image costs docs/scale.md builds its 8 GPUs x N nodes estimate from.

One run, side by side:

  ray 1 / ray 2   the examples stage through `worker.pipeline.ray_executor.RayExecutor` on a local cluster of one and
                  then two CPUs (one task per CPU, one intra-op thread each), tiny-rn (tests/model_configs),
                  the same synthetic 480x360 JPEG corpus cut into listing ranges. Each cluster is warmed with
                  a small build first (worker start and imports are not the pipeline's rate). Timed: the
                  compute phase (ranges -> partial files) in images/s, the write phase (merge + store by
                  unit range) in units/s; peak RSS per worker process (ru_maxrss, reported by its tasks)
  per image       decode (PIL, JPEG draft) + RN50x4 preprocessing at 288 px on one thread; tiny-rn and
                  RN50x4 forward on one thread and their FLOPs (torch FlopCounterMode), so the tiny model's
                  rate scaled by FLOPs can be checked against RN50x4's own
  partial state   bytes of one RN50x4 partial (its four layers at K = 64), from the state layout

    .venv/bin/python bench/scale.py                      # 192 images, ranges of 24, K 16
    .venv/bin/python bench/scale.py --images 384 --range-entries 48
"""
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import typer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIG_DIR = ROOT / "tests" / "model_configs"

from worker.stages.examples import Examples  # noqa: E402

MARKS: dict[str, float] = {}


class Timed(Examples):
    """The examples stage, marking when compute ends (merge starts) and the write ends, and each range's
    worker pid and peak RSS."""

    def compute(self, ctx, item):
        part = super().compute(ctx, item)
        return part | {"pid": os.getpid(), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def items(self, ctx):
        got = super().items(ctx)
        MARKS.setdefault("items", time.perf_counter())
        return got

    def merge(self, ctx, parts):
        MARKS.setdefault("merge", time.perf_counter())
        MARKS["rss"] = {p["pid"]: max(p["rss_mb"], MARKS.get("rss", {}).get(p["pid"], 0)) for p in parts}
        return super().merge(ctx, parts)

    def finish(self, ctx, plan, pieces, run_id):
        MARKS["finish"] = time.perf_counter()
        return super().finish(ctx, plan, pieces, run_id)


def make_corpus(root: Path, n: int) -> Path:
    from tests.synthetic import picture

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        picture(i, 360).resize((480, 360)).save(root / f"{i:05d}.jpg", quality=90)
    return root


def tiny():
    from worker.compute.models import load_model, revive_random_resnet

    torch.manual_seed(0)
    loaded = load_model("tiny-rn", config_dirs=(CONFIG_DIR,))
    revive_random_resnet(loaded.model)
    return loaded


def build(root: Path, loaded, corpus: Path, options: dict) -> dict:
    from store.settings import Settings
    from store.writes import open_store
    from worker.pipeline.contract import BuildContext
    from worker.pipeline.ray_executor import RayExecutor
    from worker.pipeline.runner import run_pipeline

    settings = Settings(data_dir=root / "data", database_url=f"sqlite:///{root / 'store.db'}", cache_dir=root / "cache")
    ctx = BuildContext(open_store(settings), loaded, "tiny", corpus, ("layer4",), {"examples": options},
                       (CONFIG_DIR,), progress=False)
    import scale  # this file by its module name: Ray workers unpickle Timed by reference (bench/ on their path)

    scale.MARKS.clear()
    [outcome] = run_pipeline(ctx, stages=[scale.Timed()], executor=RayExecutor(), echo=lambda _: None)
    assert outcome.status == "done", outcome
    return dict(scale.MARKS)


def ray_run(workers: int, loaded, corpus: Path, warm: Path, tmp: Path, options: dict) -> dict:
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")])}})
    try:
        build(tmp / f"warm{workers}", loaded, warm, options | {"range_entries": 4})  # start every worker
        marks = build(tmp / f"run{workers}", loaded, corpus, options)
    finally:
        ray.shutdown()
    return marks


def per_image_decode(corpus: Path, preprocess, n: int = 64) -> float:
    from worker.compute.corpus import decode

    files = sorted(corpus.iterdir())[:n]
    started = time.perf_counter()
    for f in files:
        preprocess(decode(f.read_bytes(), draft=288))
    return (time.perf_counter() - started) / len(files)


def forward_cost(loaded, layer: str, batch: int, repeats: int = 3) -> tuple[float, float]:
    """(seconds per image on one thread, FLOPs per image) of the capture forward."""
    from torch.utils.flop_counter import FlopCounterMode

    from worker.compute.layers import activations

    x = torch.randn(batch, 3, loaded.image_size, loaded.image_size).contiguous(memory_format=torch.channels_last)
    loaded.model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        activations(loaded, x[:1], [layer], pre_relu=True)
        counter = FlopCounterMode(display=False)
        with counter:
            activations(loaded, x[:1], [layer], pre_relu=True)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            activations(loaded, x, [layer], pre_relu=True)
            times.append((time.perf_counter() - started) / batch)
    return min(times), counter.get_total_flops()


def rn50x4_state(k: int = 64) -> tuple[dict[str, tuple], int, object]:
    """RN50x4's four stage layers (units, grid) and one partial's bytes for them, and the model."""
    from worker.analyses.examples import LayerState, probe_grids
    from worker.compute import partials
    from worker.compute.layers import layer_spec
    from worker.compute.models import load_model

    loaded = load_model("RN50x4")
    specs = [layer_spec(loaded, f"layer{i}") for i in range(1, 5)]
    grids = probe_grids(loaded, specs)
    layers = {s.name: (s.n_units, g) for s, g in zip(specs, grids, strict=True)}
    size = sum(partials.tensor_bytes(LayerState(u, k, g).state_dict()) for u, g in layers.values())
    return layers, size, loaded


def main(images: int = typer.Option(192, help="corpus size for the Ray runs"),
         range_entries: int = typer.Option(24, help="entries per listing range (items)"),
         k: int = typer.Option(16, help="top-K for the Ray runs"),
         batch_size: int = typer.Option(8)):
    tmp = Path(tempfile.mkdtemp(prefix="scale-"))
    corpus, warm = make_corpus(tmp / "corpus", images), make_corpus(tmp / "warm", 8)
    loaded = tiny()
    options = {"k": k, "samples": 16, "batch_size": batch_size, "range_entries": range_entries, "workers": 0}
    runs = {w: ray_run(w, loaded, corpus, warm, tmp, options) for w in (1, 2)}
    out = {"load_average": os.getloadavg()[0], "images": images, "ranges": -(-images // range_entries)}
    for w, m in runs.items():
        out[f"ray{w}"] = {"images_per_s": round(images / (m["merge"] - m["items"]), 2),
                          "write_units_per_s": round(512 / (m["finish"] - m["merge"]), 1),
                          "rss_mb_per_worker": sorted(round(v) for v in m["rss"].values())}
    out["ratio_2_over_1"] = round(out["ray2"]["images_per_s"] / out["ray1"]["images_per_s"], 2)
    torch.set_num_threads(1)
    layers, state_bytes, rn50x4 = rn50x4_state()
    tiny_s, tiny_flops = forward_cost(loaded, "layer4", 32)
    big_s, big_flops = forward_cost(rn50x4, "layer4", 2, repeats=2)
    decode_s = per_image_decode(corpus, rn50x4.preprocess)
    out["per_image"] = {"decode_s_1thread": round(decode_s, 4), "tiny_forward_s": round(tiny_s, 5),
                        "tiny_gflops": round(tiny_flops / 1e9, 4), "rn50x4_gflops": round(big_flops / 1e9, 2),
                        "rn50x4_forward_s_1thread": round(big_s, 3),
                        "rn50x4_forward_s_scaled_from_tiny": round(tiny_s * big_flops / tiny_flops, 3),
                        "jpeg_kb": round(statistics.mean(f.stat().st_size for f in corpus.iterdir()) / 1e3, 1)}
    out["rn50x4_partial"] = {"layers": {n: [u, list(g)] for n, (u, g) in layers.items()},
                             "bytes_k64": state_bytes, "mb_k64": round(state_bytes / 2**20, 1)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    typer.run(main)
