"""The prepared GPU check (issue 18): one call, well inside 8 minutes on one H200. Run it through
`bash bench/gpu_check.sh OUT` (which installs carried wheels first); `--cpu-smoke` runs every section on
the CPU with the tiny test model, to know the script runs end to end.

Sections, each timed in this one process, side by side:
  forward     bare forward (random pixels already on the device, no loading, no state updates) of random-init
              RN50x4 (bn3 revived, GUIDE.md) to layer4 at fp32, bf16 and fp16: images/s
  pipeline    `worker.analyses.examples.stream` over a synthetic JPEG corpus (decoded by the loader workers, and by
              nvJPEG on the device) at each precision: images/s and the ratio to the bare forward
  agreement   per unit, the fraction of the fp32 run's top-64 (and bottom-64) that bf16 / fp16 also keep;
              non-finite activations (fp16 overflow) dropped at each precision
  featurevis  seconds per neuron-step of `worker.compute.featurevis.render` at batch 32 (fp32, bf16)
  ray         two Ray actors sharing the one GPU (num_gpus=0.5 each), each computing every other listing
              range of the corpus (`worker.analyses.example_parts.compute_range`, as `--ray` tasks do),
              merged in range order, against the single-process run; skipped where ray is not importable
  state       the size of one layer's checkpoint (torch.save of the examples state)

Prints a compact table and writes OUT/gpu_check.json. Each section is skipped (and says so) once the
time budget (GPU_CHECK_BUDGET seconds, default 420) would be overrun.
"""
import argparse
import io
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

STARTED = time.monotonic()
PRECISIONS = ("fp32", "bf16", "fp16")


def elapsed() -> float:
    return time.monotonic() - STARTED


def profile(smoke: bool) -> dict:
    """What to run: RN50x4 at full size on a GPU, the tiny test model on the CPU."""
    if smoke:
        return {"arch": "tiny-rn", "device": "cpu", "images": int(os.environ.get("GPU_CHECK_IMAGES", 48)),
                "side": (160, 120), "batch": 16, "bare_iters": 3, "workers": 1, "k": 8, "fv_batch": 4,
                "fv_steps": 5, "actor_gpus": 0}
    return {"arch": "RN50x4", "device": "cuda", "images": int(os.environ.get("GPU_CHECK_IMAGES", 8192)),
            "side": (640, 480), "batch": 256, "bare_iters": 20, "workers": min(15, (os.cpu_count() or 2) - 1),
            "k": 64, "fv_batch": 32, "fv_steps": 12, "actor_gpus": 0.5}


# -- corpus --------------------------------------------------------------------------------------------

def write_jpeg(args: tuple[Path, int, tuple[int, int]]) -> None:
    """A smooth random colour field with a random rectangle and disc: distinct bytes, spread activations."""
    path, seed, side = args
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((6, 8, 3)) * 255).astype("uint8")).resize(side, Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for shape in (draw.rectangle, draw.ellipse):
        x0, y0 = rng.integers(0, side[0] - 40), rng.integers(0, side[1] - 40)
        shape((x0, y0, x0 + rng.integers(20, side[0] // 2), y0 + rng.integers(20, side[1] // 2)),
              fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    img.save(path, "JPEG", quality=90)


def make_corpus(folder: Path, n: int, side: tuple[int, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(write_jpeg, [(folder / f"{i:06d}.jpg", i, side) for i in range(n)], chunksize=64))
    return folder


# -- model ---------------------------------------------------------------------------------------------

def load(arch: str, device: str):
    from worker.compute.models import load_model, revive_random_resnet

    torch.manual_seed(0)
    loaded = load_model(arch, None, device, (ROOT / "tests" / "model_configs",))
    revive_random_resnet(loaded.model)
    return loaded


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bare_forward(loaded, layer: str, batch: int, iters: int, precision: str) -> float:
    """Images/s of the forward alone: pixels already on the device, channels-last, inference mode."""
    from worker.compute.layers import activations
    from worker.compute.precision import autocast

    device = loaded.device.type
    loaded.model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, loaded.image_size, loaded.image_size, device=loaded.device)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(loaded.device, precision):
        for _ in range(2):
            activations(loaded, x, [layer])
        sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            activations(loaded, x, [layer])
        sync(device)
    return batch * iters / (time.perf_counter() - t)


def pipeline(loaded, corpus: Path, n: int, layer: str, p: dict, precision: str, decode: str):
    """`worker.analyses.examples.stream` as `microscope worker examples` runs it, minus the store: (progress, img/s)."""
    from worker.analyses.examples import LayerState, Progress, probe_grids, stream
    from worker.compute.layers import layer_spec

    spec = layer_spec(loaded, layer)
    opts = bench_options(p, precision, decode)
    grid = probe_grids(loaded, [spec])[0]
    progress = Progress({layer: LayerState(spec.n_units, p["k"], grid, loaded.device)})
    sync(loaded.device.type)
    t = time.perf_counter()
    stream(loaded, str(corpus), n, progress, opts, lambda _: None)
    sync(loaded.device.type)
    return progress, progress.counts["images"] / (time.perf_counter() - t)


def bench_options(p: dict, precision: str, decode: str, workers: int | None = None):
    from worker.analyses.examples import ExampleOptions

    return ExampleOptions(k=p["k"], batch_size=p["batch"], workers=p["workers"] if workers is None else workers,
                          checkpoint_seconds=1e9, samples=64, progress=False, precision=precision, jpeg_decode=decode)


def overlap(a, b) -> dict:
    """Per unit, |A ∩ B| / K of two TopK states' kept entries: mean, 5th percentile, min."""
    ea, eb = a.entries.cpu().numpy(), b.entries.cpu().numpy()
    frac = np.array([len(set(x[x >= 0]) & set(y[y >= 0])) / max(1, (x >= 0).sum())
                     for x, y in zip(ea, eb, strict=True)])
    return {"mean": round(float(frac.mean()), 4), "p5": round(float(np.percentile(frac, 5)), 4),
            "min": round(float(frac.min()), 4)}


def featurevis(loaded, layer: str, batch: int, steps: int, precision: str) -> float:
    """Seconds per neuron-step of a batch of `batch` neurons (median step after two warm-up steps)."""
    from worker.compute.featurevis import objectives as O
    from worker.compute.featurevis.render import RenderSettings, render
    from worker.compute.featurevis.speed import fast_model

    fast = fast_model(loaded)
    stamps = []
    render(fast, O.channel(layer, list(range(batch))), list(range(batch)),
           RenderSettings(steps=steps, precision=precision), on_step=lambda *_: stamps.append(time.perf_counter()))
    return float(np.median(np.diff(stamps[2:]))) / batch  # on_step sees .cpu() values: synchronised


def state_size(progress) -> int:
    buf = io.BytesIO()
    torch.save(progress.state_dict(), buf)
    return buf.tell()


# -- ray -----------------------------------------------------------------------------------------------

def ray_section(loaded_args: tuple[str, str], corpus: Path, n: int, layer: str, p: dict, single) -> dict:
    """Two actors on the one GPU, every other listing range each, merged in range order; against the
    single-process bf16/fp32 run."""
    try:
        import ray
    except ImportError:
        return {"skipped": "ray is not importable here (pip install 'clip-microscope[ray]'; too big to carry)"}
    precision = "bf16" if p["device"] == "cuda" else "fp32"

    from worker.analyses.example_parts import plan_ranges
    from worker.analyses.examples import Progress

    ranges = plan_ranges(corpus, size=max(1, -(-n // 4)))  # four ranges: two per actor

    @ray.remote(num_gpus=p["actor_gpus"], num_cpus=1)
    class RangeWorker:
        def __init__(self):
            sys.path.insert(0, str(ROOT))
            self.loaded = load(*loaded_args)  # before the clock starts: the same random weights in each

        def run(self, piece) -> tuple[bytes, float]:
            from worker.analyses.example_parts import compute_range

            opts = bench_options(p, precision, "workers", workers=max(1, p["workers"] // 2))
            sync(self.loaded.device.type)
            t = time.perf_counter()
            progress = compute_range(self.loaded, [layer], piece, opts)
            sync(self.loaded.device.type)
            rate = progress.counts["images"] / (time.perf_counter() - t)
            buf = io.BytesIO()
            torch.save(progress.state_dict(), buf)
            return buf.getvalue(), rate

    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    try:
        actors = [RangeWorker.remote() for _ in range(2)]
        ray.get([a.__ray_ready__.remote() for a in actors])
        t = time.perf_counter()
        parts = ray.get([actors[i % 2].run.remote(piece) for i, piece in enumerate(ranges)])
        seconds = time.perf_counter() - t
    finally:
        ray.shutdown()
    states = [Progress.from_state(torch.load(io.BytesIO(blob), weights_only=True)) for blob, _ in parts]
    merged = states[0]
    for other in states[1:]:  # in range order, as the stage's merge
        merged.merge(other)
    return {"precision": precision, "images_per_s": round(merged.counts["images"] / seconds, 1),
            "per_range_images_per_s": [round(r, 1) for _, r in parts],
            "top_overlap_vs_single": overlap(merged.layers[layer].top, single.layers[layer].top)}


# -- main ----------------------------------------------------------------------------------------------

class Sections:
    """Runs sections in order, each only while the budget allows, recording results or the error. The
    JSON is rewritten after every section, so a run cut short still leaves what it measured."""

    def __init__(self, budget: float, out: Path):
        self.budget, self.out, self.results = budget, out, {}

    def run(self, name: str, needs: float, fn) -> object:
        if elapsed() + needs > self.budget:
            self.results[name] = {"skipped": f"time budget: {elapsed():.0f} s used of {self.budget:.0f}"}
            return None
        t = time.monotonic()
        out = None
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 — one failing section must not lose the others' figures
            traceback.print_exc()
            self.results[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        if isinstance(out, dict):
            self.results[name] = out | {"seconds": round(time.monotonic() - t, 1)}
        print(f"[{elapsed():6.1f} s] {name}: {json.dumps(self.results.get(name), default=str)[:300]}")
        self.save()
        return out

    def save(self) -> None:
        self.results["total_seconds"] = round(elapsed(), 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2, default=str))


def environment(p: dict) -> dict:
    import torchvision

    env = {"torch": torch.__version__, "torchvision": torchvision.__version__, "cores": os.cpu_count(),
           "arch": p["arch"], "images": p["images"], "batch": p["batch"], "workers": p["workers"]}
    if p["device"] == "cuda":
        env |= {"gpu": torch.cuda.get_device_name(0), "bf16": torch.cuda.is_bf16_supported()}
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU, every section")
    args = parser.parse_args()
    smoke = args.cpu_smoke or os.environ.get("GPU_CHECK_SMOKE") == "1"
    p = profile(smoke)
    if p["device"] == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device (use --cpu-smoke to run it on the CPU)")
    args.out.mkdir(parents=True, exist_ok=True)
    s = Sections(float(os.environ.get("GPU_CHECK_BUDGET", 420)), args.out)
    s.results["environment"] = environment(p)
    layer = "layer4"
    corpus = Path(os.environ.get("GPU_CHECK_CORPUS", "/tmp/gpu_check_corpus"))
    s.run("corpus", 60, lambda: {"path": str(make_corpus(corpus, p["images"], p["side"]))})
    loaded = load(p["arch"], p["device"])
    print(f"[{elapsed():6.1f} s] model {p['arch']} on {p['device']}")
    bare = s.run("forward", 30, lambda: {pr: round(bare_forward(loaded, layer, p["batch"], p["bare_iters"], pr), 1)
                                         for pr in PRECISIONS}) or {}
    runs: dict = {}

    def pipelines() -> dict:
        out = {}
        decodes = [("workers", pr) for pr in PRECISIONS] + [("device", "bf16" if not smoke else "fp32")]
        for decode, pr in decodes:
            if elapsed() > s.budget - 60:
                out[f"{pr}/{decode}"] = "skipped: time budget"
                continue
            runs[(pr, decode)], rate = pipeline(loaded, corpus, p["images"], layer, p, pr, decode)
            nonfinite = runs[(pr, decode)].counts[f"non-finite:{layer}"]
            out[f"{pr}/{decode}"] = {"images_per_s": round(rate, 1), "non_finite": nonfinite,
                                     "vs_bare": round(rate / bare[pr], 3) if pr in bare else None}
        return out

    s.run("pipeline", 90, pipelines)

    def agreement() -> dict:
        ref = runs[("fp32", "workers")].layers[layer]
        out = {}
        for (pr, decode), progress in runs.items():
            if (pr, decode) != ("fp32", "workers"):
                state = progress.layers[layer]
                out[f"{pr}/{decode}"] = {"top": overlap(ref.top, state.top),
                                         "bottom": overlap(ref.bottom, state.bottom)}
        return out

    if ("fp32", "workers") in runs:
        s.run("agreement", 5, agreement)
        s.run("state", 5, lambda: {"layer": layer, "units": loaded_units(runs, layer), "k": p["k"],
                                   "checkpoint_bytes": state_size(runs[("fp32", "workers")])})
    s.run("featurevis", 60, lambda: {f"{pr}_s_per_neuron_step": round(featurevis(loaded, layer, p["fv_batch"],
                                                                                 p["fv_steps"], pr), 6)
                                     for pr in ("fp32", "bf16")} | {"batch": p["fv_batch"]})
    single = runs.get(("bf16" if not smoke else "fp32", "workers"))
    if single is not None:
        s.run("ray", 120, lambda: ray_section((p["arch"], p["device"]), corpus, p["images"], layer, p, single))
    s.save()
    print_table(s.results)


def loaded_units(runs: dict, layer: str) -> int:
    return runs[("fp32", "workers")].layers[layer].top.values.shape[0]


def print_table(results: dict) -> None:
    """One line per figure: section, what, value."""
    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            print(f"{prefix:<48} {value}")

    print("-" * 72)
    walk("", results)


if __name__ == "__main__":
    main()
