"""The examples stage in parts: listing ranges computed apart, partial states in files, merge and write by
unit range. The same code runs in one process (`worker.pipeline.runner.SerialExecutor`) and across Ray workers
(`worker.pipeline.ray_executor.RayExecutor`), so both leave the same store bit for bit.

- **Ranges**: the driver lists the corpus once (no image is read) and cuts the listing into ranges of
  `range_entries` entries; a range carries its entries (a tar member's offset and size with it), so the
  worker that computes it reads each of its images once and nothing else. The ranges depend on the corpus
  alone, never on how many workers there are: that is what makes any number of workers agree.
- **Partials**: a range's state (`worker.analyses.examples.Progress`: top/bottom-K, moments, sketch, samples, the
  content hashes it saw) goes to `<data>/partials/<fingerprint>/<range>.pt` (`worker.compute.partials`). A range
  whose file exists is not computed again, so a killed build resumes where its partials stop.
- **Merge and write**: a unit range of a layer is merged from every partial, in range order, and written
  (its images stored, then its units, `UNITS_PER_TRANSACTION` per transaction) by one task. Top-K and
  samples are exact under any split (ranked by value then content hash); an image whose copy was seen in an
  earlier range is dropped from the later range's top-K and samples at the merge, and counted once in the
  report. Its activation still counts in that range's moments and sketch (they keep no per-image values);
  that is the one difference from a single stream, and only for byte-identical copies in different ranges.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, get_worker_info

from worker.analyses.activations import MatrixSink
from worker.analyses.examples import (
    ExampleOptions,
    LayerState,
    Progress,
    loader_workers,
    one_scalar,
    probe_grids,
    to_device,
    unit_sample,
    write_layer,
)
from worker.compute import partials
from worker.compute.corpus import CorpusBatches, Entry, batched, iter_entries
from worker.compute.device_decode import DeviceDecoder
from worker.compute.layers import Reading, layer_spec, readings
from worker.compute.precision import autocast
from worker.compute.topk import EMPTY_KEY

RANGE_ENTRIES = 4096  # the smallest range; a partial is one state whatever the range's size
MAX_RANGES = 64  # a larger corpus gets larger ranges: partial files (and merge reads) stay <= 64 states
WRITE_UNITS = 256  # units per write piece


@dataclass(frozen=True)
class Range:
    """A contiguous piece of the corpus listing: its first stream position and its entries."""

    start: int
    entries: tuple[Entry, ...]
    index: int = 0  # its place among the corpus's ranges: the activation matrix part it writes
    count: int = 1

    @property
    def key(self) -> str:
        return f"range-{self.start:09d}"


def plan_ranges(corpus: str | Path, size: int | None = None) -> list[Range]:
    """The listing cut into ranges of `size` entries (one pass over the listing, no image read). The
    default depends on the corpus alone: RANGE_ENTRIES, or more so that there are at most MAX_RANGES."""
    entries = list(iter_entries(corpus))
    size = size or max(RANGE_ENTRIES, math.ceil(len(entries) / MAX_RANGES))
    chunks = list(batched(entries, size))
    return [Range(n * size, tuple(chunk), n, len(chunks)) for n, chunk in enumerate(chunks)]


class RangeBatches(CorpusBatches):
    """One range as numbered batches; positions are the corpus's stream positions."""

    def __init__(self, piece: Range, transform, batch_entries: int, max_pixels: int, draft: int | None,
                 jpeg_on_device: bool = False):
        super().__init__("", transform, batch_entries, 0, max_pixels, draft, jpeg_on_device)
        self.piece = piece

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for number, chunk in enumerate(batched(self.piece.entries, self.batch_entries)):
            if number % workers == worker:
                batch = self.load(number, chunk)
                batch.entries += self.piece.start
                yield batch


# -- compute: one range -> one partial file -----------------------------------------------------------

def compute_range(loaded, layers: list[str], piece: Range, opts: ExampleOptions, sink: MatrixSink | None = None
                  ) -> Progress:
    """Stream one range through the model into a fresh state (and its activation matrix rows into `sink`),
    as `worker.analyses.examples.run_examples` streams the whole corpus. With `jpeg_decode` "device" the
    loader workers hand JPEGs on as bytes and `worker.compute.device_decode.DeviceDecoder` decodes them on
    the model's device, as in the single stream."""
    device = loaded.device
    specs = [layer_spec(loaded, n) for n in layers]
    one = one_scalar(loaded) and opts.reduce == "mean"
    progress = Progress({s.name: LayerState(s.n_units, opts.k, grid, device, one)
                         for s, grid in zip(specs, probe_grids(loaded, specs), strict=True)})
    loaded.model.to(memory_format=torch.channels_last)
    on_device = opts.jpeg_decode == "device"
    dataset = RangeBatches(piece, loaded.preprocess, opts.batch_size, opts.max_pixels, loaded.image_size, on_device)
    decoder = DeviceDecoder(loaded.preprocess, device, opts.max_pixels) if on_device else None
    workers = loader_workers(opts.workers, device)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None)
    forward = forward_of(loaded, layers, opts.precision)
    with torch.inference_mode():
        for batch in loader:
            progress.absorb(decoder.finish(batch) if decoder else batch, forward, opts.reduce, device, sink)
    return progress


def forward_of(loaded, names: list[str], precision: str):
    """The batch forward `Progress.absorb` calls, as `worker.analyses.examples.stream`'s: the whole (pinned) batch to
    the device, its fresh images picked there, the layers' readings (the family's value and negative taps,
    `worker.compute.layers.readings`) at `precision`."""
    device = loaded.device

    def forward(pixels: torch.Tensor, fresh: torch.Tensor) -> dict[str, Reading]:
        with autocast(device, precision):
            return readings(loaded, to_device(pixels, fresh, device), names)

    return forward


def compute_partial(loaded, layers: list[str], piece: Range, opts: ExampleOptions, path: Path,
                    sink: MatrixSink | None = None) -> dict:
    """The range's partial file (computed unless it exists); returns its summary for the merge. The range's
    activation matrix part (`sink`, not yet opened) is complete before the partial is saved, so a range
    with a partial file has its part too."""
    if not path.is_file():
        started = time.perf_counter()
        progress = compute_range(loaded, layers, piece, opts, sink and sink.open(0))
        if sink is not None:
            sink.finish()
        state = progress.state_dict() | {"start": piece.start, "seconds": time.perf_counter() - started}
        partials.save(path, state)
    state = partials.load(path)
    return {"path": str(path), "start": piece.start, "counts": dict(state["counts"]),
            "bytes": path.stat().st_size, "seconds": state.get("seconds", 0.0)}


# -- merge: the plan the write pieces share --------------------------------------------------------------

@dataclass
class Plan:
    """What every write piece needs: the partials in range order, per partial the content hashes already
    seen in an earlier range, the summed counts, the ranges (to find a kept image's entry)."""

    fingerprint: str
    paths: list[str]
    copies: list[torch.Tensor]
    counts: Counter
    ranges: list[Range]
    size: int
    units: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    partial_bytes: int = 0

    def entry(self, position: int) -> Entry:
        return self.ranges[position // self.size].entries[position % self.size]


def make_plan(fingerprint: str, ranges: list[Range], parts: list[dict], units: dict[str, int]) -> Plan:
    """Sum the counts; find, per partial, the images a previous range already saw (kept once)."""
    seen = torch.empty(0, dtype=torch.int64)
    copies, counts = [], Counter()
    for part in parts:
        hashes = partials.load(Path(part["path"]))["seen"]
        again = hashes[torch.isin(hashes, seen)]
        copies.append(again.clone())
        seen = torch.cat([seen, hashes]).unique()
        counts.update(part["counts"])
        counts["images"] -= len(again)
        counts["duplicates"] += len(again)
    size = len(ranges[0].entries) if ranges else 1
    return Plan(fingerprint, [p["path"] for p in parts], copies, counts, ranges, size, units,
                sum(p["seconds"] for p in parts), sum(p["bytes"] for p in parts))


def merged_slice(plan: Plan, layer: str, start: int, stop: int) -> LayerState:
    """Units [start, stop) of `layer`, merged from every partial in range order."""
    merged = None
    for path, again in zip(plan.paths, plan.copies, strict=True):
        state = partials.load(Path(path))["layers"][layer]
        part = LayerState.from_state(partials.unit_slice(state, plan.units[layer], start, stop))
        if len(again):
            drop_copies(part, again)
        if merged is None:
            merged = part
        else:
            merged.merge(part)
    return merged


def drop_copies(state: LayerState, hashes: torch.Tensor) -> None:
    """Leave images seen in an earlier range out of this partial's top-K and samples."""
    for top in (state.top, state.bottom):
        gone = torch.isin(top.hashes, hashes) & (top.entries >= 0)
        top.keys[gone], top.entries[gone], top.values[gone] = EMPTY_KEY, -1, float("-inf")
    gone = torch.isin(state.samples.hashes, hashes) & (state.samples.entries >= 0)
    state.samples.hashes[gone], state.samples.entries[gone] = torch.iinfo(torch.int64).max, -1


# -- write: one unit range of one layer -------------------------------------------------------------

def write_pieces(plan: Plan, size: int = WRITE_UNITS) -> list[tuple[str, int, int]]:
    return [(layer, a, min(units, a + size)) for layer, units in plan.units.items() for a in range(0, units, size)]


def write_piece(store, model_name: str, plan: Plan, piece: tuple[str, int, int], opts: ExampleOptions,
                run_id: int) -> dict:
    """Merge a unit range of a layer, store the images it shows, write its units (`worker.analyses.examples.write_layer`
    on the slice: heatmaps quantized per unit, bulk inserts); returns its counts."""
    from worker.analyses.images import store_entries

    layer, start, stop = piece
    state = merged_slice(plan, layer, start, stop)
    if not bool(state.moments.n.any()):
        return {"units": 0, "vanished": 0}
    wanted = shown_entries(state, opts)
    image_ids = store_entries(store, [(p, plan.entry(p)) for p in sorted(wanted)], threads=max(2, opts.workers or 0))
    write_layer(store, model_name, layer, state, image_ids, replace(opts, progress=False), run_id, start)
    return {"units": stop - start, "vanished": len(wanted) - len(image_ids)}


def shown_entries(state: LayerState, opts: ExampleOptions) -> set[int]:
    wanted: set[int] = set()
    for part in (state.top, state.bottom):
        wanted.update(e for e in part.entries.flatten().tolist() if e >= 0)
    ranked = state.ranked()
    for unit in range(state.top.values.shape[0]):
        wanted.update(e for _, e in unit_sample(state, unit, opts, ranked))
    return wanted


# -- the activation matrix: one part per range ------------------------------------------------------

def range_sink(data_dir: Path, model_name: str, units: dict[str, int], fingerprint: str, piece: Range,
               meta: dict) -> MatrixSink:
    """The range's part of each layer's activation matrix (`worker.analyses.activations`), in the folder named by the
    stage's fingerprint: part i of N for range i of N, so the matrix is complete when every range is."""
    return MatrixSink(Path(data_dir), model_name, units, fingerprint, (piece.index, piece.count),
                      {**meta, "fingerprint": fingerprint, "range_start": piece.start})


def matrix_folders(data_dir: Path, plan: Plan, model_name: str) -> dict[str, str]:
    """{layer: matrix folder relative to the data folder} of the plan's ranges (what `register_matrices` takes)."""
    from worker.analyses.activations import matrix_folder

    return {layer: str(matrix_folder(Path(data_dir), model_name, layer, plan.fingerprint).relative_to(data_dir))
            for layer in plan.units}


def report_of(plan: Plan, pieces: list[dict], entries: int, opts: ExampleOptions) -> dict:
    skipped = {k.split(":", 1)[1]: v for k, v in sorted(plan.counts.items()) if k.startswith("skipped:")}
    non_finite = {k.split(":", 1)[1]: v for k, v in sorted(plan.counts.items()) if k.startswith("non-finite:") and v}
    return {"entries": entries, "images": plan.counts["images"], "duplicates": plan.counts["duplicates"],
            "skipped": skipped, "non_finite": non_finite, "precision": opts.precision, "layers": list(plan.units),
            "units": sum(plan.units.values()), "k": opts.k,
            "ranges": len(plan.paths), "partial_bytes": plan.partial_bytes,
            "vanished": sum(p["vanished"] for p in pieces),
            "timing": {"compute_seconds": round(plan.seconds, 3)}}
