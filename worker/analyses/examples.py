"""Dataset examples: per unit of the chosen layers, the K corpus images that excite it most and the K
that drive it most negative, each with its spatial map (a unit's maps quantized in one `unit_heatmaps` row,
app/heatmaps.py), plus activation statistics (mean, std, min, max, quantiles, histogram) and a sample spread
over the activation range.

Signal (one definition per tower family, `worker.compute.towers`; the run's settings name it and the neuron page
shows it): with `--reduce mean` the top-K, statistics and sample rank by the unit's value pooled the way
the embedding pools it, and the bottom-K by its pooled pre-activation. A ResNet layer is read before its
final ReLU (the input of `layer[-1].act3`) and averaged over positions, so one scalar per (image, unit)
covers both directions (pages show values in σ from zero). A ViT MLP unit is its GELU output at the class
token (`tok` pooling), averaged over the patch tokens (`avg`) or weighted as the attention pool weights
the tokens (CoCa, SigLIP's map head); its most negative examples rank by the same pooling of the
pre-GELU value, since GELU is bounded below at −0.17. The heatmaps stay the patch/position maps (value
for the top, pre-activation for the bottom). `max` ranks the top by the map's peak and the bottom by
the pre-activation map's trough.

Images are decoded as open_clip's preprocessing expects, except that a JPEG much larger than the model's
input is decoded at a reduced DCT scale that still covers it (`corpus.decode(draft=…)`): the resize that
follows makes the difference small, and a 12-megapixel JPEG decodes 5-10x faster (0.07-0.13 s -> 0.013 s).

`run_examples` streams the corpus once in one process with memory O(units × K), checkpointing its
state to a file every `checkpoint_seconds`, so a killed run resumes where it stopped; writing replaces
whole units per transaction, and is idempotent. (The examples stage of the pipeline, what `microscope
build` and `microscope worker examples` run, cuts the corpus into listing ranges instead, with one
partial state file per range, on one process or a Ray cluster: `worker.analyses.example_parts`. Both
share the states, the forward and the writer here.)

The forward runs at `precision` (fp32, or bf16 / fp16 autocast: `worker.compute.precision`), and JPEGs may be
decoded on the model's device (`worker.compute.device_decode`); both are part of the job's fingerprint, and a
checkpoint made with another value stops the run with one line instead of mixing.
"""
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from torch.utils.data import DataLoader
from tqdm import tqdm

from app.heatmaps import quantize
from store.schema import ActivationSample, DatasetExample, Layer, Model, Run, Unit, UnitHeatmaps, UnitStats
from store.writes import Store, bulk_insert, finish_run, register_model, start_run
from worker.analyses.activations import matrix_sink, register_matrices
from worker.analyses.images import store_images
from worker.compute.allocator import keep_freed_memory
from worker.compute.corpus import MAX_PIXELS, Batch, CorpusBatches, SeenHashes, survey
from worker.compute.device_decode import DeviceDecoder
from worker.compute.layers import (
    LayerSpec,
    Reading,
    catalogue,
    family_of,
    layer_spec,
    neuron_layers,
    readings,
    signal_description,
)
from worker.compute.models import LoadedModel
from worker.compute.precision import DTYPES, PrecisionMismatch, autocast
from worker.compute.stats import QUANTILES, Moments, Samples, Sketch, restore, spread, state_of
from worker.compute.topk import Ranked, TopK

STAGE = "examples"
REDUCTIONS = {"mean": ("mean", "mean"), "max": ("amax", "amin")}  # (top, bottom) over positions
UNITS_PER_TRANSACTION = 32  # whole units only: a reader never sees half a neuron


@dataclass
class ExampleOptions:
    k: int = 64
    reduce: str = "mean"
    batch_size: int = 64
    workers: int | None = None  # DataLoader decode processes; None: loader_workers() picks
    checkpoint_seconds: float = 60.0
    samples: int = 256  # activation samples per unit (for conditional-probability studies)
    max_pixels: int = MAX_PIXELS
    progress: bool = True
    precision: str = "fp32"  # fp32 | bf16 | fp16 (worker.compute.precision; the command resolves "auto")
    jpeg_decode: str = "workers"  # workers (PIL) | device (worker.compute.device_decode; the command resolves "auto")

    def check(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"--reduce must be one of {', '.join(REDUCTIONS)}, got {self.reduce!r}")
        if self.k < 1 or self.batch_size < 1 or self.samples < 0 or (self.workers or 0) < 0:
            raise ValueError("--k and --batch-size must be >= 1, --samples and --workers >= 0")
        if self.jpeg_decode not in ("workers", "device"):
            raise ValueError(f"--jpeg-decode must be workers or device, got {self.jpeg_decode!r}")
        if self.precision not in DTYPES:
            raise ValueError(f"--precision must be one of {', '.join(DTYPES)}, got {self.precision!r}")


@dataclass(frozen=True)
class Job:
    """What a run computes; its fingerprint names its checkpoint and activation matrix."""

    model: str
    arch: str
    weights: str | None
    corpus: str
    corpus_digest: str
    entries: int
    layers: tuple[str, ...]
    k: int
    reduce: str
    batch_size: int
    samples: int
    precision: str
    jpeg_decode: str  # the decoders round differently: a few 1/255 steps, enough to reorder near-ties
    signal: str = ""  # which value ranks the examples (worker.compute.layers.signal_description)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]

    def settings(self, signal: str) -> dict:
        return {"corpus": self.corpus, "entries": self.entries, "layers": list(self.layers), "k": self.k,
                "reduce": self.reduce, "batch_size": self.batch_size, "samples": self.samples,
                "signal": signal, "signal_text": self.signal, "precision": self.precision,
                "jpeg_decode": self.jpeg_decode, "fingerprint": self.fingerprint}


class LayerState:
    """Everything kept about one layer while streaming: top/bottom-K, moments, sketch, samples."""

    def __init__(self, units: int, k: int, grid: tuple[int, int], device: str | torch.device = "cpu",
                 one_scalar: bool = True):
        size = grid[0] * grid[1]
        self.grid = grid
        self.one_scalar = one_scalar  # the bottom examples rank by the value the statistics describe
        self.top, self.bottom = TopK(units, k, size, 1, device), TopK(units, k, size, -1, device)
        self.moments, self.sketch, self.samples = Moments(units, device), Sketch(units, device), Samples(units, device)

    def update(self, reading: Reading, hashes: torch.Tensor, entries: torch.Tensor, reduce: str) -> int:
        """One layer's reading for de-duplicated images: `mean` ranks by the pooled value (top) and pooled
        pre-activation (bottom); `max` by the peak of the value's map and the trough of the negative's.
        Returns how many (image, unit) readings were dropped as non-finite: an fp16 overflow (inf) or NaN
        is left out of that unit's top and bottom, statistics and sample, instead of ranking first as a
        huge number and poisoning its std."""
        maps, low_maps = reading.heat.flatten(2).float(), reading.heat_negative.flatten(2).float()
        if reduce == "mean":
            high, low = reading.value.float(), reading.negative.float()
        else:
            high, low = maps.amax(2), low_maps.amin(2)
        valid = (torch.isfinite(maps).all(2) & torch.isfinite(low_maps).all(2) & torch.isfinite(high)
                 & torch.isfinite(low))
        self.top.update(high, hashes, entries, maps, valid)
        self.bottom.update(low, hashes, entries, low_maps, valid)
        self.moments.update(high, valid)
        self.sketch.update(high, valid)
        self.samples.update(high, hashes, entries, valid)
        self.pooled = high  # the (B, U) values it ranks by: the activation matrix's rows
        return int(valid.numel() - valid.sum())

    def ranked(self) -> tuple[Ranked, Ranked]:
        """Top and bottom, every unit sorted best first in one go (what the writer reads)."""
        return self.top.ranked(), self.bottom.ranked()

    def merge(self, other: "LayerState") -> None:
        for part in ("top", "bottom", "moments", "sketch", "samples"):
            getattr(self, part).merge(getattr(other, part))

    def state_dict(self) -> dict:
        return {"grid": list(self.grid), "one_scalar": self.one_scalar, "top": self.top.state_dict(),
                "bottom": self.bottom.state_dict(),
                "moments": state_of(self.moments), "sketch": state_of(self.sketch),
                "samples": state_of(self.samples)}

    @classmethod
    def from_state(cls, state: dict, device: str | torch.device = "cpu") -> "LayerState":
        layer = cls.__new__(cls)
        layer.grid = tuple(state["grid"])
        layer.one_scalar = state.get("one_scalar", True)
        layer.top, layer.bottom = TopK.from_state(state["top"], device), TopK.from_state(state["bottom"], device)
        layer.moments = restore(Moments, state["moments"], device)
        layer.sketch = restore(Sketch, state["sketch"], device)
        layer.samples = restore(Samples, state["samples"], device)
        return layer


@dataclass
class Progress:
    """A run's whole state: per-layer states, the next batch number, dedup set and counts."""

    layers: dict[str, LayerState]
    seen: SeenHashes = field(default_factory=SeenHashes)
    cursor: int = 0
    counts: Counter = field(default_factory=Counter)  # images, duplicates, skipped:<reason>

    def absorb(self, batch: Batch, forward, reduce: str, device: torch.device, sink=None) -> None:
        """Fold one decoded batch in: drop duplicates, run the model, update every layer (and hand the
        pooled values to `sink`, the activation matrix writer, when there is one)."""
        fresh = self.seen.first_seen(batch.hashes)
        self.counts["images"] += int(fresh.sum())
        self.counts["duplicates"] += int((~fresh).sum())
        for reason, n in batch.skipped.items():
            self.counts[f"skipped:{reason}"] += n
        if fresh.any():
            acts = forward(batch.pixels, fresh)
            hashes, entries = batch.hashes[fresh].to(device), batch.entries[fresh].to(device)
            with one_thread(device):
                for name, state in self.layers.items():
                    self.counts[f"non-finite:{name}"] += state.update(acts[name], hashes, entries, reduce)
                    if sink is not None:
                        sink.add(name, state.pooled, hashes, entries)
        self.cursor = batch.number + 1

    def merge(self, other: "Progress") -> None:
        for name, state in self.layers.items():
            state.merge(other.layers[name])
        self.counts.update(other.counts)

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "counts": dict(self.counts), "seen": self.seen.tensor(),
                "layers": {name: s.state_dict() for name, s in self.layers.items()}}

    @classmethod
    def from_state(cls, state: dict, device: str | torch.device = "cpu") -> "Progress":
        return cls({n: LayerState.from_state(s, device) for n, s in state["layers"].items()},
                   SeenHashes(state["seen"]), state["cursor"], Counter(state["counts"]))


@contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """The state updates are many small ops: on a CPU one thread does them faster than several threads
    waiting on each other (measured 3 % vs 15 % of the RN50 forward on the shared 2-core machine)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_examples(store: Store, loaded: LoadedModel, model_name: str, corpus: str | Path,
                 layers: list[str] | None = None, options: ExampleOptions | None = None) -> dict:
    """Compute and store dataset examples and statistics for `layers` (default: the penultimate layer).

    Resumes from its checkpoint if a previous identical run was killed. Returns the run's report.
    """
    opts = options or ExampleOptions()
    opts.check()
    specs = list({s.name: s for s in (layer_spec(loaded, n) for n in (layers or [None]))}.values())
    register(store, loaded, model_name)
    n_entries, digest = survey(corpus)
    job = Job(model_name, loaded.arch, loaded.weights, str(Path(corpus).expanduser().resolve()), digest,
              n_entries, tuple(s.name for s in specs), opts.k, opts.reduce, opts.batch_size, opts.samples,
              opts.precision, opts.jpeg_decode, signal_description(loaded))
    signal = signal_kind(loaded)
    check_precision(store, job)
    run_id = open_run(store, job, signal)
    checkpoint = checkpoint_path(store, job)
    progress = load_checkpoint(checkpoint, loaded.device)
    if progress is None:
        one = one_scalar(loaded) and opts.reduce == "mean"
        progress = Progress({s.name: LayerState(s.n_units, opts.k, grid, loaded.device, one)
                             for s, grid in zip(specs, probe_grids(loaded, specs), strict=True)})
    sink = matrix_sink(store.settings.data_dir, job, specs, signal).open(progress.counts["images"])
    started = time.monotonic()
    done_before = progress.counts["images"]
    stream(loaded, job.corpus, job.entries, progress, opts,
           lambda p: (sink.commit(), save_checkpoint(checkpoint, p)), sink)  # rows first: the checkpoint trusts them
    folders = sink.finish()
    seconds = time.monotonic() - started
    timing = {"seconds": round(seconds, 3),
              "images_per_s": round((progress.counts["images"] - done_before) / max(seconds, 1e-9), 2)}
    report = make_report(job, progress, opts, timing)
    writing = time.monotonic()
    report["vanished"] = write_results(store, job, specs, progress, opts, run_id, signal)
    register_matrices(store, job.model, folders, run_id)
    timing["write_seconds"] = round(time.monotonic() - writing, 3)
    close_run(store, run_id, report)
    checkpoint.unlink(missing_ok=True)
    return report


def register(store: Store, loaded: LoadedModel, model_name: str) -> None:
    """Create (or update) the model, all its catalogued layers and their unit rows."""
    with store.sessions.begin() as session:
        register_model(session, model_name, loaded.arch, loaded.weights, loaded.image_size, catalogue(loaded),
                       load=loaded.record())


def signal_kind(loaded: LoadedModel) -> str:
    """The run settings' short name of the signal: "pre-relu" (ResNets: one scalar for both ends), else the
    family's pooling (cls, patches, attention, mean)."""
    fam = family_of(loaded)
    return "pre-relu" if fam.name == "ModifiedResNet" else fam.pooling(loaded.visual)


def one_scalar(loaded: LoadedModel) -> bool:
    """Whether the most-negative examples rank by the same tap as the top ones (ResNets, signed towers)."""
    layer = neuron_layers(loaded)[-1]
    return layer.value == layer.negative


def probe_grids(loaded: LoadedModel, specs: list[LayerSpec]) -> list[tuple[int, int]]:
    """Each layer's spatial grid (H, W), from one blank image."""
    blank = torch.zeros(1, 3, loaded.image_size, loaded.image_size, device=loaded.device)
    with torch.inference_mode():
        got = readings(loaded, blank, [s.name for s in specs])
    return [tuple(got[s.name].heat.shape[2:]) for s in specs]


def stream(loaded: LoadedModel, corpus: str, total: int, progress: Progress, opts: ExampleOptions,
           save, sink=None) -> None:
    """Run the corpus through the model from `progress.cursor` on, checkpointing as it goes."""
    device = loaded.device
    keep_freed_memory()
    loaded.model.to(memory_format=torch.channels_last)
    names = list(progress.layers)
    on_device = opts.jpeg_decode == "device"
    dataset = CorpusBatches(corpus, loaded.preprocess, opts.batch_size, progress.cursor, opts.max_pixels,
                            draft=loaded.image_size, jpeg_on_device=on_device)
    decoder = DeviceDecoder(loaded.preprocess, device, opts.max_pixels) if on_device else None
    workers = loader_workers(opts.workers, device)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None)

    def forward(pixels: torch.Tensor, fresh: torch.Tensor) -> dict[str, Reading]:
        with autocast(device, opts.precision):
            return readings(loaded, to_device(pixels, fresh, device), names)

    last_save = time.monotonic()
    with tqdm(total=total, initial=min(total, progress.cursor * opts.batch_size), unit="img", desc="examples",
              disable=not opts.progress, smoothing=0.1) as bar, torch.inference_mode():
        for batch in loader:
            if batch.number != progress.cursor:
                raise RuntimeError(f"corpus batches out of order: got {batch.number}, expected {progress.cursor}")
            progress.absorb(decoder.finish(batch) if decoder else batch, forward, opts.reduce, device, sink)
            bar.update(batch.n_entries)
            bar.set_postfix(images=progress.counts["images"], refresh=False)
            if time.monotonic() - last_save >= opts.checkpoint_seconds:
                save(progress)
                last_save = time.monotonic()


def to_device(pixels: torch.Tensor, fresh: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The batch's fresh images on the device, channels-last. The whole batch is copied as the loader
    left it, page-locked, so the copy is asynchronous; it is indexed on the device. Indexing first
    would make a pageable copy, and a copy from pageable memory is synchronous."""
    x = pixels.to(device, non_blocking=True)
    if not bool(fresh.all()):  # rows picked by index: a boolean mask on the device would wait for it
        x = x.index_select(0, fresh.nonzero().squeeze(1).to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last)


def loader_workers(requested: int | None, device: torch.device) -> int:
    """Decode processes: as asked; on a CPU none up to 2 cores (decoding in the main process between
    forwards: pipeline/bare 0.85 against 0.80 with one worker, same-process A/B on 2 cores), else one (the
    forward needs the cores); all but one core on a GPU machine (decoding is then what limits the rate)."""
    if requested is not None:
        return requested
    cores = os.cpu_count() or 2
    if device.type == "cpu":
        return 0 if cores <= 2 else 1
    return max(1, min(16, cores - 1))


# -- checkpoints -------------------------------------------------------------------------------

def check_precision(store: Store, job: Job) -> None:
    """PrecisionMismatch if this job's checkpoint exists at another precision or JPEG decoder: resuming
    it would mix two computations' top-K, so the user decides (one line says how)."""
    others = [("precision", p) for p in DTYPES] + [("jpeg-decode", d) for d in ("workers", "device")]
    for option, value in others:
        other = replace(job, **{option.replace("-", "_"): value})
        mine = getattr(job, option.replace("-", "_"))
        path = checkpoint_path(store, other)
        if value != mine and path.is_file():
            raise PrecisionMismatch(f"a checkpoint of this run at --{option} {value} exists ({path}): resume it "
                                    f"with --{option} {value}, or delete it to start again at {mine}")


def checkpoint_path(store: Store, job: Job) -> Path:
    return store.settings.data_dir / "checkpoints" / f"{STAGE}-{job.fingerprint}.pt"


def save_checkpoint(path: Path, progress: Progress) -> None:
    """Atomically replace the checkpoint file (a kill mid-write leaves the previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(progress.state_dict(), tmp)  # straight to the file: no second in-memory copy of the state
    os.replace(tmp, path)


def load_checkpoint(path: Path, device="cpu") -> Progress | None:
    if not path.is_file():
        return None
    return Progress.from_state(torch.load(path, map_location="cpu", weights_only=True), device)


# -- runs and reports -------------------------------------------------------------------------------

def open_run(store: Store, job: Job, signal: str) -> int:
    """The `runs` row of this job: a killed run's row is taken over, so a resumed run leaves one row."""
    with store.sessions.begin() as session:
        model = session.scalar(select(Model).where(Model.name == job.model))
        running = session.scalars(select(Run).where(Run.stage == STAGE, Run.model_id == model.id,
                                                    Run.status == "running").order_by(Run.id))
        for run in running:
            if run.settings.get("fingerprint") == job.fingerprint:
                return run.id
        layer = job.layers[0] if len(job.layers) == 1 else None
        return start_run(session, STAGE, model, job.settings(signal), layer=layer).id


def close_run(store: Store, run_id: int, report: dict) -> None:
    with store.sessions.begin() as session:
        finish_run(session, session.get(Run, run_id), report)


def make_report(job: Job, progress: Progress, opts: ExampleOptions, timing: dict) -> dict:
    skipped = {k.split(":", 1)[1]: v for k, v in sorted(progress.counts.items()) if k.startswith("skipped:")}
    non_finite = {k.split(":", 1)[1]: v for k, v in sorted(progress.counts.items())
                  if k.startswith("non-finite:") and v}
    return {"entries": job.entries, "images": progress.counts["images"],
            "duplicates": progress.counts["duplicates"], "skipped": skipped, "non_finite": non_finite,
            "precision": job.precision, "layers": list(job.layers),
            "units": sum(s.top.values.shape[0] for s in progress.layers.values()), "k": job.k,
            "timing": timing}


# -- writing ----------------------------------------------------------------------------------------

def write_results(store: Store, job: Job, specs: list[LayerSpec], progress: Progress, opts: ExampleOptions,
                  run_id: int, signal: str) -> int:
    """Store the images every unit shows, then each unit's examples, stats and sample in one transaction.
    Returns how many kept images could not be read back (changed or removed since they were seen)."""
    wanted: set[int] = set()
    for state in progress.layers.values():
        for part in (state.top, state.bottom):
            wanted.update(e for e in part.entries.flatten().tolist() if e >= 0)
        ranked = state.ranked()
        for unit in range(state.top.values.shape[0]):
            wanted.update(e for _, e in unit_sample(state, unit, opts, ranked))
    image_ids = store_images(store, job.corpus, wanted, threads=max(2, opts.workers or 0))
    for spec in specs:
        write_layer(store, job.model, spec.name, progress.layers[spec.name], image_ids, opts, run_id)
    return len(wanted) - len(image_ids)


def unit_sample(state: LayerState, unit: int, opts: ExampleOptions,
                ranked: tuple[Ranked, Ranked] | None = None) -> list[tuple[float, int]]:
    """The activation sample of one unit: (value, entry) spread over its range (`ranked`: the layer's
    top and bottom sorted once, `LayerState.ranked`)."""
    top, bottom = ranked or (state.top, state.bottom)
    candidates = state.samples.candidates(unit) + [(v, e) for v, e, _ in top.rows(unit)]
    if state.one_scalar:  # the bottom examples' scalar is then the same one
        candidates += [(v, e) for v, e, _ in bottom.rows(unit)]
    return spread(candidates, opts.samples) if opts.samples else []


def write_layer(store: Store, model_name: str, layer_name: str, state: LayerState, image_ids: dict[int, int],
                opts: ExampleOptions, run_id: int, start: int = 0) -> None:
    """Write a layer's units, UNITS_PER_TRANSACTION whole units per transaction. On Postgres two connections
    write ranges side by side: the server's per-row foreign-key checks then overlap the building of the next
    range's rows (SQLite has one writer at a time: there it would only wait on the lock). `state` may hold a
    slice of the layer's units from `start` on (its unit u is the layer's start + u: worker.analyses.example_parts)."""
    if not bool(state.moments.n.any()):
        return
    layer_ids = layer_unit_ids(store, model_name, layer_name)
    stats = unit_stats(state, run_id)
    units, ranked = len(stats), state.ranked()
    unit_ids = [layer_ids[start + u] for u in range(units)]

    def write(group: range) -> int:
        write_units(store, [unit_ids[u] for u in group],
                    [unit_rows(state, ranked, u, unit_ids[u], stats[u], image_ids, opts, run_id) for u in group])
        return len(group)

    groups = [range(s, min(units, s + UNITS_PER_TRANSACTION)) for s in range(0, units, UNITS_PER_TRANSACTION)]
    writers = 2 if store.settings.db_url.startswith("postgresql") else 1
    with ThreadPoolExecutor(writers) as pool, \
            tqdm(total=units, desc=f"write {layer_name}", unit="unit", disable=not opts.progress) as bar:
        for done in pool.map(write, groups):
            bar.update(done)


def layer_unit_ids(store: Store, model_name: str, layer_name: str) -> dict[int, int]:
    with store.sessions() as session:
        return dict(session.execute(
            select(Unit.index, Unit.id).join(Layer, Unit.layer_id == Layer.id).join(Model, Layer.model_id == Model.id)
            .where(Model.name == model_name, Layer.name == layer_name)).all())


@dataclass
class UnitRows:
    """One unit's rows for every table the examples stage fills."""

    stats: dict
    examples: list[dict]
    heatmaps: dict | None
    samples: list[dict]


def unit_rows(state: LayerState, ranked: tuple[Ranked, Ranked], unit: int, unit_id: int, stats: dict,
              image_ids: dict[int, int], opts: ExampleOptions, run_id: int) -> UnitRows:
    examples, maps = [], []
    for sign, part in zip(("top", "bottom"), ranked, strict=True):
        rows, heat = example_rows(sign, part.rows(unit), image_ids)
        examples += [row | {"unit_id": unit_id, "run_id": run_id} for row in rows]
        maps += heat
    n_top = sum(e["sign"] == "top" for e in examples)
    heatmaps = quantize(np.stack(maps).reshape(-1, *state.grid), n_top) | {"unit_id": unit_id, "run_id": run_id} \
        if maps else None
    samples = [{"unit_id": unit_id, "image_id": image_ids[e], "activation": v}
               for v, e in unit_sample(state, unit, opts, ranked) if e in image_ids]
    return UnitRows(stats | {"unit_id": unit_id}, examples, heatmaps, samples)


def unit_stats(state: LayerState, run_id: int) -> list[dict]:
    """Each unit's UnitStats row (without unit_id): moments, sketch quantiles and a 40-bin histogram.
    A unit whose every activation was non-finite has n = 0 and zeros, not infinities."""
    m = state.moments
    seen = m.n > 0
    lo, hi = torch.where(seen, m.min, 0.0).cpu(), torch.where(seen, m.max, 0.0).cpu()
    std, counts_n = m.std.cpu().tolist(), m.n.cpu().tolist()
    quantiles = state.sketch.quantiles(lo, hi).cpu().tolist()
    counts = state.sketch.histogram(lo, hi).cpu().tolist()
    out = []
    for unit, mean in enumerate(m.mean.cpu().tolist()):
        low, high = float(lo[unit]), float(hi[unit])
        out.append({"n": counts_n[unit], "mean": mean, "std": std[unit], "min": low, "max": high, "run_id": run_id,
                    "quantiles": {str(q): v for q, v in zip(QUANTILES, quantiles[unit], strict=True)},
                    "histogram": {"edges": np.linspace(low, high, len(counts[unit]) + 1).tolist(),
                                  "counts": counts[unit]}})
    return out


def example_rows(sign: str, rows, image_ids: dict[int, int]) -> tuple[list[dict], list[np.ndarray]]:
    """The DatasetExample rows of one sign, ranked from 0 over the images still readable, and their maps."""
    out, maps = [], []
    for value, entry, flat in rows:
        if entry in image_ids:
            out.append({"sign": sign, "rank": len(out), "activation": value, "image_id": image_ids[entry]})
            maps.append(flat)
    return out, maps


def write_units(store: Store, unit_ids: list[int], rows: list[UnitRows]) -> None:
    """Replace whole units' examples, heatmaps, stats and samples in one transaction (retried once if a
    concurrent writer of the same units got in between)."""
    tables = {UnitStats: [r.stats for r in rows], DatasetExample: [e for r in rows for e in r.examples],
              UnitHeatmaps: [r.heatmaps for r in rows if r.heatmaps],
              ActivationSample: [s for r in rows for s in r.samples]}
    for attempt in range(2):
        try:
            with store.sessions.begin() as session:
                for table in tables:
                    session.execute(delete(table).where(table.unit_id.in_(unit_ids)))
                for table, values in tables.items():
                    bulk_insert(session, table, values)
            return
        except IntegrityError:
            if attempt:
                raise
