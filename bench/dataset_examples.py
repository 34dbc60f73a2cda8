"""Dataset examples: the whole streaming pipeline against the bare model forward, and memory vs corpus size.

One run, one model (random-init RN50 at 224 px, bn3 revived as GUIDE.md advises), one batch size, the
same synthetic images (JPEGs of 256-320 px written to a temp folder):

  bare       the images already decoded and preprocessed in memory; timed: layer4 pre-ReLU capture with
             early stop (the same forward the pipeline runs), inference_mode, channels_last
  pipeline   worker.analyses.examples.stream over the folder: listing, reading, hashing, de-duplication, decoding and
             preprocessing in DataLoader workers, the forward, top-K / bottom-K / moments / sketch / sample
             updates, checkpoints (the store write phase is not part of it; --write times it separately)

The two are timed in alternating rounds so that load from other processes hits both alike (this machine is
shared: the load average is printed with the figures). Target:
pipeline / bare >= 0.9. Peak memory (RSS of the worker process, and tracemalloc's Python peak) is measured
in a fresh process per corpus size, at 1x and 10x the corpus. Target: flat.

    .venv/bin/python bench/dataset_examples.py            # ratio: 320 images x 3 rounds; memory: 48, 480; batch 16;
                                                          # loader workers as the worker picks (0 on 2 cores)
    .venv/bin/python bench/dataset_examples.py --ratio-images 256 --batch-size 32 --workers 2 --rounds 2
"""
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import typer
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

def synthetic(seed: int) -> Image.Image:
    """A smooth random colour field with a few shapes and a little noise (decodes like a photo-sized JPEG)."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(256, 321)), int(rng.integers(256, 321))
    img = Image.fromarray((rng.random((6, 6, 3)) * 255).astype("uint8")).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        s = int(rng.integers(20, 120))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + s, y + s), fill=fill)
    noisy = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
    return Image.fromarray(noisy.clip(0, 255).astype("uint8"))


def write_corpus(folder: Path, n: int, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, n):
        synthetic(i).save(folder / f"{i:06d}.jpg", quality=90)
    return folder


def load_rn50():
    import torch

    from worker.compute.models import load_model, revive_random_resnet

    torch.manual_seed(0)
    loaded = load_model("RN50", None, "cpu")
    revive_random_resnet(loaded.model)
    loaded.model.to(memory_format=torch.channels_last)
    return loaded


def new_progress(loaded, k: int):
    from worker.analyses.examples import LayerState, Progress, probe_grids
    from worker.compute.layers import layer_spec

    spec = layer_spec(loaded, "layer4")
    return Progress({spec.name: LayerState(spec.n_units, k, probe_grids(loaded, [spec])[0])})


def time_pipeline(loaded, corpus: Path, opts, checkpoint: Path) -> tuple[float, int]:
    from worker.analyses.examples import save_checkpoint, stream
    from worker.compute.corpus import survey

    progress = new_progress(loaded, opts.k)
    start = time.perf_counter()
    stream(loaded, str(corpus), survey(corpus)[0], progress, opts, lambda p: save_checkpoint(checkpoint, p))
    return time.perf_counter() - start, progress.counts["images"]


def time_bare(loaded, batches) -> float:
    import torch

    from worker.compute.layers import activations

    start = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            activations(loaded, x, ["layer4"])
    return time.perf_counter() - start


def preprocessed_batches(loaded, corpus: Path, batch_size: int):
    import torch

    from worker.compute.corpus import iter_entries, open_entry

    pixels = [loaded.preprocess(open_entry(e)[1]) for e in iter_entries(corpus)]
    return [torch.stack(pixels[i:i + batch_size]).contiguous(memory_format=torch.channels_last)
            for i in range(0, len(pixels), batch_size)]


def options(batch_size: int, workers: int, k: int, checkpoint_seconds: float = 60):
    from worker.analyses.examples import ExampleOptions

    return ExampleOptions(k=k, batch_size=batch_size, workers=workers, progress=False,
                          checkpoint_seconds=checkpoint_seconds)


def child(mode: str, corpus: Path, batch_size: int, workers: int, k: int, rounds: int = 1, keep_heap: bool = True):
    """(internal) One measurement in a fresh process; prints one JSON line."""
    from worker.compute.allocator import keep_freed_memory

    if keep_heap:
        keep_freed_memory()  # what the worker does: both sides of the ratio run with the same allocator
    if mode != "ratio":  # tracing every Python allocation slows the pipeline's Python side (0.79-0.84 vs 0.90)
        tracemalloc.start()
    loaded = load_rn50()
    # the ratio uses the default checkpoint interval; the memory runs checkpoint after every batch, so
    # that both corpus sizes include the checkpoint's transient memory
    opts = options(batch_size, workers, k, 60 if mode == "ratio" else 0)
    checkpoint = Path(tempfile.mkdtemp()) / "state.pt"
    out: dict = {"mode": mode}
    if mode == "ratio":
        batches = preprocessed_batches(loaded, corpus, batch_size)
        n = sum(len(b) for b in batches)
        time_bare(loaded, batches[:1])  # warm both paths up once (allocator, oneDNN primitives)
        time_pipeline(loaded, corpus, options(batch_size, 0, k), checkpoint)
        bare, pipe = [], []
        for _ in range(rounds):
            bare.append(time_bare(loaded, batches))
            seconds, images = time_pipeline(loaded, corpus, opts, checkpoint)
            assert images == n, (images, n)
            pipe.append(seconds)
        ratios = sorted(b / p for b, p in zip(bare, pipe, strict=True))
        out |= {"images": n * rounds, "bare_s": sum(bare), "pipeline_s": sum(pipe), "ratios": ratios,
                "median_ratio": statistics.median(ratios)}
    else:
        seconds, images = time_pipeline(loaded, corpus, opts, checkpoint)
        out |= {"images": images, "pipeline_s": seconds}
        if mode == "write":
            out |= {"write_s": time_write(loaded, corpus, opts)}
    out["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["children_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    out["minor_faults_per_image"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt / max(1, out["images"])
    print(json.dumps(out))


def time_write(loaded, corpus: Path, opts) -> float:
    """The store write phase of a full run_examples (images, overlays, unit rows) into a temp SQLite store."""
    from store.settings import Settings
    from store.writes import open_store
    from worker.analyses.examples import run_examples

    root = Path(tempfile.mkdtemp())
    store = open_store(Settings(data_dir=root, database_url=f"sqlite:///{root / 'store.db'}", cache_dir=root / "c"))
    report = run_examples(store, loaded, "bench", corpus, ["layer4"], opts)
    return report["timing"]["write_seconds"]


def run_child(*args) -> dict:
    cmd = [sys.executable, __file__, "child", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode:
        sys.exit(f"child {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(images: int = typer.Option(48, help="1x corpus size for the memory runs"),
         scale: int = typer.Option(10, help="the large corpus is this many times the 1x one"),
         ratio_images: int = typer.Option(320, help="images timed through both the bare forward and the pipeline "
                                                       "(well past the first K, where every image enters top-K)"),
         batch_size: int = 16,
         workers: int = typer.Option(-1, help="DataLoader decode workers (-1: what the worker picks here)"),
         k: int = typer.Option(64, help="examples kept per unit and sign"),
         rounds: int = typer.Option(3, help="alternating bare / pipeline rounds (the ratio is their median: "
                                            "a shared VM's noise moves single rounds by +-15 %)"),
         write: bool = typer.Option(False, help="also time the store write phase (1x)"),
         allocator: bool = typer.Option(False, help="also time both with glibc's default malloc thresholds")):
    """Run the benchmark and print the side-by-side figures."""
    started = time.perf_counter()
    if workers < 0:
        import torch

        from worker.analyses.examples import loader_workers

        workers = loader_workers(None, torch.device("cpu"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-examples-"))
    timed = write_corpus(tmp / "timed", ratio_images)
    small = write_corpus(tmp / "1x", images)
    large = write_corpus(tmp / f"{scale}x", images * scale)
    print(f"RN50 random init @224, layer4 pre-ReLU (2048 units), batch {batch_size}, k {k}, "
          f"{workers} loader worker(s), {os.cpu_count()} CPUs, torch threads {torch_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    ratio = run_child("ratio", timed, batch_size, workers, k, "--rounds", rounds)
    bare_ips = ratio["images"] / ratio["bare_s"]
    pipe_ips = ratio["images"] / ratio["pipeline_s"]
    print(f"bare forward      {bare_ips:7.2f} img/s   ({ratio['images']} images in {ratio['bare_s']:.1f} s)")
    print(f"pipeline          {pipe_ips:7.2f} img/s   ({ratio['images']} images in {ratio['pipeline_s']:.1f} s)")
    print(f"pipeline / bare   {ratio['median_ratio']:7.3f}        (target >= 0.9; median of {rounds} "
          f"alternating rounds, all rounds together {pipe_ips / bare_ips:.3f}, "
          f"range {ratio['ratios'][0]:.3f}-{ratio['ratios'][-1]:.3f}; minor page faults per image "
          f"{ratio['minor_faults_per_image']:.0f})")
    if allocator:
        plain = run_child("ratio", timed, batch_size, workers, k, "--rounds", rounds, "--no-keep-heap")
        plain_ips = plain["images"] / plain["pipeline_s"]
        print(f"glibc malloc defaults (what the worker changes): bare {plain['images'] / plain['bare_s']:.2f} img/s, "
              f"pipeline {plain_ips:.2f} img/s, {plain['minor_faults_per_image']:.0f} faults/image; "
              f"the kept heap gives the pipeline {pipe_ips / plain_ips:.2f}x")
    rows = [("1x", images, run_child("write" if write else "memory", small, batch_size, workers, k)),
            (f"{scale}x", images * scale, run_child("memory", large, batch_size, workers, k))]
    print(f"{'corpus':<8}{'images':>8}{'img/s':>9}{'peak RSS MiB':>14}{'loader RSS MiB':>16}{'tracemalloc MiB':>17}")
    for name, n, r in rows:
        print(f"{name:<8}{n:>8}{r['images'] / r['pipeline_s']:>9.2f}{r['rss_mib']:>14.0f}"
              f"{r['children_rss_mib']:>16.0f}{r['tracemalloc_peak_mib']:>17.1f}")
    print(f"peak RSS {scale}x / 1x: {rows[1][2]['rss_mib'] / rows[0][2]['rss_mib']:.3f} (target: flat); "
          f"load average now {os.getloadavg()[0]:.1f}")
    if write:
        print(f"write phase (1x, 2048 units, k {k}): {rows[0][2]['write_s']:.1f} s")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"total {time.perf_counter() - started:.0f} s")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.argv.pop(1)
        typer.run(child)
    else:
        typer.run(main)
