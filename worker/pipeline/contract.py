"""The stage contract: what every pipeline stage declares and implements, and how its fingerprint is made.

A stage is a `Stage` subclass registered in `worker.stages.STAGES`. It declares

- `name`, `needs` (stages whose results it reads; it runs after them, and not at all when one failed),
  `after` (stages whose results it uses when they exist: order and fingerprint only), `produces` (for the
  docs and `--help`), `code` (the modules whose source is its code version), `reads_corpus` and
  `reads_model` (False for a stage that reads only the store: it runs without a loaded model);

and implements

- `applies(ctx)`: None, or why the stage does not apply to this model / corpus (then it is skipped);
- `settings(ctx)`: everything besides the inputs that decides its results (JSON);
- `items(ctx)`: its work split into independent pieces (word chunks, image shards, unit ranges);
- `compute(ctx, item)`: one piece's partial result, written nowhere but the cache's checkpoints;
- `merge(ctx, parts)`: the partial results combined, in item order;
- `write(ctx, merged, run_id)`: the store writes (by unit range, one transaction per batch of units),
  returning the run's report (with "units": how many neurons it covered).

The fingerprint (`fingerprint`) hashes the settings, the inputs (the model's weights when the stage reads
the model, the corpus when it reads that, the fingerprints of the stages it reads) and the code version.
`worker.pipeline.runner` records it in the stage's `runs` row and skips the stage while a finished run
carries the same one. An executor runs
items -> merge -> write; `worker.pipeline.runner.SerialExecutor` does it in this process. A distributed one can run
`compute` on workers unchanged: items and partial results are plain (picklable) data, and compute only reads
(the model, the cache, the store) and writes nothing but its cache checkpoints; merge and write run where
the store is.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class Item:
    """One independent piece of a stage's work; `key` names it in progress and checkpoints."""

    key: str
    payload: Any = None


@dataclass
class BuildContext:
    """What every stage is given: the store, the loaded model and its name, the corpus, the layers asked
    for, and per-stage options (`options[stage][key]`, e.g. the words stage's word list). `loaded` is None
    when only stages that read just the store run (`microscope worker regions MODEL`): the model is then
    the one stored under `model_name`, its layers the stored ones."""

    store: Any  # store.writes.Store
    loaded: Any  # worker.compute.models.LoadedModel, or None (see above)
    model_name: str
    corpus: Path | None = None
    layers: tuple[str, ...] = ()  # empty: the model's default layer
    options: dict[str, dict] = field(default_factory=dict)
    config_dirs: tuple[Path, ...] = ()
    progress: bool = True

    def option(self, stage: str, key: str, default: Any = None) -> Any:
        return self.options.get(stage, {}).get(key, default)

    @property
    def data_dir(self) -> Path:
        return Path(self.store.settings.data_dir)

    def layer_names(self) -> list[str]:
        """The layers asked for, checked against the model (UnknownLayer names the ones it has)."""
        from worker.compute.layers import layer_spec

        if self.loaded is None:
            return stored_layer_names(self.store, self.model_name, self.layers)
        return list(dict.fromkeys(layer_spec(self.loaded, n).name for n in (self.layers or (None,))))


def stored_layer_names(store, model_name: str, asked: tuple[str, ...]) -> list[str]:
    """The layers asked for, checked against the model's stored layers (none asked: its default layer)."""
    from sqlalchemy import select

    from store.schema import Layer, Model
    from worker.compute.layers import UnknownLayer

    with store.sessions() as session:
        rows = session.execute(select(Layer.name, Layer.is_default).join(Model).where(Model.name == model_name)
                               .order_by(Layer.id)).all()
    names = [n for n, _ in rows]
    default = next((n for n, d in rows if d), names[-1] if names else None)
    unknown = [n for n in asked if n not in names]
    if unknown or default is None:
        raise UnknownLayer(f"{model_name} has no layer {(unknown or [None])[0]!r} in the store; layers: "
                           f"{', '.join(names) or 'none'}")
    return list(dict.fromkeys(asked or (default,)))


class Stage:
    """Base of every stage; see the module docstring for the contract."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    after: ClassVar[tuple[str, ...]] = ()
    produces: ClassVar[str] = ""
    code: ClassVar[tuple[str, ...]] = ()
    reads_corpus: ClassVar[bool] = False
    reads_model: ClassVar[bool] = True

    def applies(self, ctx: BuildContext) -> str | None:
        return None

    def settings(self, ctx: BuildContext) -> dict:
        return {}

    def items(self, ctx: BuildContext) -> list[Item]:
        return [Item("all")]

    def compute(self, ctx: BuildContext, item: Item) -> Any:
        raise NotImplementedError

    def merge(self, ctx: BuildContext, parts: list) -> Any:
        return parts[0] if len(parts) == 1 else parts

    def write(self, ctx: BuildContext, merged: Any, run_id: int) -> dict:
        raise NotImplementedError


class LayerStage(Stage):
    """A stage with one item per layer: `compute` returns the layer's result (a dict with its "layer"),
    `write_layer` stores one and returns its report; the stage's report holds them by layer."""

    def items(self, ctx: BuildContext) -> list[Item]:
        return [Item(layer, layer) for layer in ctx.layer_names()]

    def merge(self, ctx: BuildContext, parts: list) -> list:
        return parts

    def write(self, ctx: BuildContext, merged: list, run_id: int) -> dict:
        layers = {part["layer"]: self.write_layer(ctx, part, run_id) for part in merged}
        return {"layers": layers, "units": sum(r["units"] for r in layers.values())}

    def write_layer(self, ctx: BuildContext, part: dict, run_id: int) -> dict:
        raise NotImplementedError


# -- fingerprints ---------------------------------------------------------------------------------------

def settings_hash(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(loaded) -> str:
    """A hash of the image tower's weights, so checkpoints of another model or training run never mix,
    and of its precision unless fp32 (so results computed before precision was recorded keep theirs)."""
    h = hashlib.sha1(loaded.arch.encode())
    if getattr(loaded, "precision", "fp32") != "fp32":
        h.update(f"precision={loaded.precision}".encode())
    for name, p in sorted(loaded.visual.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@cache
def file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file; size and mtime are part of the cache key, so a rewritten file is read again."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_digest(loaded) -> str:
    """What tells this model's neurons apart: its weights file's digest, a weights tag, or (random init)
    the image tower's parameters."""
    weights, precision = str(loaded.weights or ""), getattr(loaded, "precision", "fp32")
    path, at = Path(weights), "" if precision == "fp32" else f"@{precision}"
    if weights and path.is_file():
        stat = path.stat()
        return f"{loaded.arch}:{file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)}{at}"
    return f"{loaded.arch}:{weights}{at}" if weights else model_fingerprint(loaded)


def corpus_digest(corpus: Path | None) -> str | None:
    from worker.compute.corpus import survey

    return None if corpus is None else "{}:{}".format(*survey(corpus))


def code_digest(stage: Stage) -> str:
    """The stage's code version: the source of its own module and of the modules in `code`."""
    h = hashlib.sha1()
    files = [inspect.getsourcefile(type(stage))] + [importlib.util.find_spec(m).origin for m in stage.code]
    for file in files:
        h.update(Path(file).read_bytes())
    return h.hexdigest()[:16]


def fingerprint(stage: Stage, ctx: BuildContext, upstream: dict[str, str]) -> tuple[str, dict]:
    """(fingerprint, what it was made of): the record kept in the run's settings under "build"."""
    inputs: dict = {"needs": upstream}
    if stage.reads_model:  # a store-only stage's model is in the fingerprints of the stages it reads
        inputs["model"] = model_digest(ctx.loaded)
    if stage.reads_corpus:
        inputs["corpus"] = corpus_digest(ctx.corpus)
    record = {"settings": stage.settings(ctx), "inputs": inputs, "code": code_digest(stage)}
    return settings_hash({"stage": stage.name, **record}), record
