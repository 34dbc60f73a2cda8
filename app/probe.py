"""Live probes: one thread per server process owns torch and the models it has loaded.

Nothing here imports torch at module level: the first probe of a model submits its load to the probe
thread (a single-thread executor, so torch only ever runs there), and every later probe of that model
queues its text or image there too. Pages that don't probe never wait on it; a probe waits at most
`wait_s` and otherwise answers "loading, retry" (ProbeBusy).

What a model needs to be re-created here comes from the store: Model.arch, Model.weights and Model.load,
the settings the worker built it with (QuickGELU, mean, std, interpolation, resize mode, image size, config
directories), so a probe reads the very model and image transform the worker's pages were computed with.
Models stored before Model.load existed fall back to the config directories in the read-out's meta.
"""
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.probe_images import data_uri
from store.cache import Cache
from store.paths import ROOT
from store.schema import Artifact, Layer, Model

READOUT = "readout"  # the artifact name worker/analyses/attribution.py writes
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class ProbeUnavailable(Exception):
    """This model cannot be probed here (no weights, weights file missing, no text tower, load failed)."""

    def __init__(self, message: str, status: int = 503):
        super().__init__(message)
        self.message, self.status = message, status


class ProbeBusy(Exception):
    """The model is still loading (or the probe thread is busy): retry in a moment."""

    def __init__(self, message: str, retry_after: int = 2):
        super().__init__(message)
        self.message, self.retry_after = message, retry_after


@dataclass(frozen=True)
class ModelSpec:
    """Everything the probe thread needs to load one model, read from the store."""

    name: str
    arch: str
    weights: str
    config_dirs: tuple[str, ...]
    layer: str  # the layer whose neurons the probes report (the model's default layer)
    overrides: object = None  # worker.compute.load_settings.LoadOverrides fixing every recorded setting (hashable)


def readout_artifact(session: Session, model: Model) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.model_id == model.id, Artifact.name == READOUT)
                          .order_by(Artifact.id.desc()).limit(1))


def default_layer(session: Session, model: Model) -> Layer | None:
    layers = list(model.layers)
    return next((la for la in layers if la.is_default), layers[-1] if layers else None)


def resolve_path(path: str) -> Path:
    """A stored path as given, or relative to the repository (the worker stores repo paths relative)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or p.exists() else ROOT / p


def spec_for(session: Session, model: Model, art: Artifact | None = None) -> ModelSpec:
    """The model's load recipe, or ProbeUnavailable saying plainly why it can't be probed.

    `art`: the model's read-out artifact when the caller already has it (saves a query)."""
    if not model.weights:
        raise ProbeUnavailable(f"Model {model.name} was registered without weights (random init), so no text or "
                               "image tower here matches its neurons. Register it with --weights to probe it.", 409)
    weights = model.weights
    if "/" in weights or weights.endswith(CHECKPOINT_SUFFIXES):
        path = resolve_path(weights)
        if not path.is_file():
            raise ProbeUnavailable(f"The weights of model {model.name} ({weights}) are not on this server.")
        weights = str(path)
    art = art or readout_artifact(session, model)
    layer = art.layer if art is not None else getattr(default_layer(session, model), "name", "")
    if not layer:
        raise ProbeUnavailable(f"Model {model.name} has no layers registered.", 409)
    from worker.compute.load_settings import LoadOverrides

    record = model.load or {}
    dirs = record.get("config_dirs") or ((art.meta or {}).get("config_dirs", []) if art else [])
    return ModelSpec(model.name, model.arch, weights, tuple(str(resolve_path(d)) for d in dirs), layer,
                     LoadOverrides.from_record(record))


def _load(spec: ModelSpec, threads: int):
    """Runs on the probe thread: the only place the server imports torch and open_clip."""
    import torch

    from worker.compute.models import load_model

    torch.set_grad_enabled(False)
    if threads:
        # One prompt or one image is too small to split well, and on a busy machine OpenMP's spinning
        # threads made each prompt ~18x slower (1.35 s vs 73 ms on 2 shared cores): one thread by default.
        torch.set_num_threads(threads)
    try:
        return load_model(spec.arch, spec.weights, "cpu", spec.config_dirs, spec.overrides)
    except Exception as e:  # noqa: BLE001 — any load failure is this model's, shown as a message, never a 500
        raise ProbeUnavailable(f"Model {spec.name} could not be loaded here: {e}") from e


def _embed(loaded, texts: list[str]) -> np.ndarray:
    from worker.compute.readout import embed_texts

    try:
        return embed_texts(loaded, texts)
    except ValueError as e:  # e.g. a model without a text tower
        raise ProbeUnavailable(f"{loaded.arch} cannot embed text here: {e}", 409) from e


def _image_activations(loaded, image, layer: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(values (units,), maps (units, h, w), what the value is): the numbers the examples stage ranks by,
    from the same definition (`worker.compute.layers.unit_values`)."""
    import torch

    from worker.compute.layers import signal_description, unit_values

    try:
        with torch.inference_mode():
            x = loaded.preprocess(image).unsqueeze(0).to(loaded.device)
            values, maps = unit_values(loaded, x, layer)
            return values[0].float().cpu().numpy(), maps[0].float().cpu().numpy(), signal_description(loaded)
    except ValueError as e:  # a stored layer name the loaded model's catalogue doesn't know, or no catalogue
        raise ProbeUnavailable(f"{loaded.arch} cannot be probed at layer {layer}: {e}", 409) from e


def _typographic_lab(loaded, image, text: str, labels: list[str], k: int) -> dict:
    """Runs on the probe thread: zero-shot top classes before and after writing `text` on the image."""
    from worker.analyses.typographic import Attack, try_attack

    if not labels:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        labels = list(IMAGENET_CLASSNAMES)
    attack = Attack.parse(text)
    labels = list(dict.fromkeys([*labels, attack.target]))
    out = try_attack(loaded, image, attack.text, labels, k=k)
    before, after = out.pop("images")
    return {**out, "text": attack.text, "target": attack.target, "classes": len(labels),
            "before_image": data_uri(before, 224), "after_image": data_uri(after, 224)}


class ProbeEngine:
    """The per-process probe thread, the models it loaded (at most `max_models`), and small caches."""

    def __init__(self, wait_s: float = 30.0, max_models: int = 2, max_texts: int = 4096, threads: int = 1):
        self.wait_s, self.max_models, self.max_texts, self.threads = wait_s, max_models, max_texts, threads
        self._executor: ThreadPoolExecutor | None = None
        self._models: OrderedDict[ModelSpec, Future] = OrderedDict()
        self._texts: OrderedDict[tuple[ModelSpec, str], np.ndarray] = OrderedDict()
        self._readouts: dict[Path, np.ndarray] = {}
        self._lock = threading.Lock()

    def _submit(self, fn, *args) -> Future:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe-model")
        return self._executor.submit(fn, *args)

    def load(self, spec: ModelSpec) -> Future:
        """The model's load, started on first use; a failed load is forgotten so the next call retries."""
        with self._lock:
            fut = self._models.get(spec)
            if fut is not None and fut.done() and fut.exception() is not None:
                fut = None
            if fut is None:
                fut = self._submit(_load, spec, self.threads)
                self._models[spec] = fut
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            self._models.move_to_end(spec)
            return fut

    def is_ready(self, spec: ModelSpec) -> bool:
        fut = self._models.get(spec)
        return fut is not None and fut.done() and fut.exception() is None

    def _wait(self, fut: Future, spec: ModelSpec, wait_s: float | None = None):
        try:
            return fut.result(timeout=self.wait_s if wait_s is None else wait_s)
        except FutureTimeout:
            raise ProbeBusy(f"Model {spec.name} is loading on this server; try again in a few seconds.") from None

    def _run(self, spec: ModelSpec, fn, *args, wait_s: float | None = None):
        loaded = self._wait(self.load(spec), spec, wait_s)
        return self._wait(self._submit(fn, loaded, *args), spec, wait_s)

    def embed(self, spec: ModelSpec, text: str, wait_s: float | None = None) -> np.ndarray:
        """The unit-length text embedding (embed_dim,), computed on the probe thread (cached per text).

        Waits at most `wait_s` (default: the engine's) for the model to load and the text to be encoded."""
        key = (spec, text)
        with self._lock:
            hit = self._texts.get(key)
            if hit is not None:
                self._texts.move_to_end(key)
                return hit
        vec = self._run(spec, _embed, [text], wait_s=wait_s)[0]
        with self._lock:
            self._texts[key] = vec
            while len(self._texts) > self.max_texts:
                self._texts.popitem(last=False)
        return vec

    def image_activations(self, spec: ModelSpec, image) -> tuple[np.ndarray, np.ndarray, str]:
        """The image's unit values (units,), maps (units, h, w) and the value's description at the spec's layer."""
        return self._run(spec, _image_activations, image, spec.layer)

    def typographic_lab(self, spec: ModelSpec, image, text: str, labels: list[str], k: int) -> dict:
        """Zero-shot top-k classes of `image` before and after `text` is written on it (the attack lab)."""
        return self._run(spec, _typographic_lab, image, text, labels, k)

    def readout(self, cache: Cache, artifact: Artifact) -> np.ndarray:
        """The stored read-out matrix (units × embed_dim), read with numpy once per file."""
        path = cache.resolve(artifact.path)
        if path is None:
            raise ProbeUnavailable(f"The read-out file {artifact.path} is missing from the cache; re-run "
                                   "`microscope worker attribution` for this model.")
        if path not in self._readouts:
            self._readouts[path] = np.load(path, allow_pickle=False)
        return self._readouts[path]

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


_engine_lock = threading.Lock()


def engine_of(app) -> ProbeEngine:
    """The app's probe engine, made on first use (after any fork, so the thread belongs to this process)."""
    with _engine_lock:
        engine = getattr(app.state, "probe", None)
        if engine is None:
            engine = app.state.probe = ProbeEngine()
            weakref.finalize(app, engine.shutdown)
        return engine
