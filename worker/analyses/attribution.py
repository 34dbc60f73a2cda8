"""The attribution stage's store side: the read-out W (worker/compute/readout.py) of a model kept as a layer
artifact, with the method and the linear-vs-autograd agreement it was computed with."""
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select

from store.paths import ROOT
from store.schema import Artifact, Layer, Model
from store.writes import Store, finish_run, start_run
from worker.analyses.activations import refresh_readout_norms
from worker.compute.layers import layer_spec
from worker.compute.models import LoadedModel
from worker.compute.readout import readout_with_agreement

ARTIFACT_NAME = "readout"


def portable_path(path: str | Path) -> str:
    """A path inside the repository is stored relative to it, so another checkout finds it too."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def store_readout(store: Store, model_name: str, loaded: LoadedModel, config_dirs: Sequence[str | Path] = (),
                  images: torch.Tensor | None = None, kind: str = "auto", evaluated_at: str = "") -> Artifact:
    """Compute the model's read-out matrix and keep it (`compute_readout`, then `write_readout`)."""
    w, meta = compute_readout(loaded, config_dirs, images, kind, evaluated_at)
    return write_readout(store, model_name, layer_spec(loaded).name, w, meta)


def compute_readout(loaded: LoadedModel, config_dirs: Sequence[str | Path] = (), images: torch.Tensor | None = None,
                    kind: str = "auto", evaluated_at: str = "") -> tuple[np.ndarray, dict]:
    """(W, meta), nothing written. The meta holds what the server needs to re-create the text tower (arch,
    weights, config dirs), which read-out was kept, where the autograd one was evaluated, and the
    linear-vs-autograd agreement."""
    if not loaded.weights:
        raise ValueError(f"{loaded.arch} has no weights (random init): a server could not re-create the text tower "
                         "that goes with its neurons. Pass --weights.")
    w, computed = readout_with_agreement(loaded, images, kind)
    return w, {"arch": loaded.arch, "weights": str(loaded.weights),
               "config_dirs": [portable_path(d) for d in config_dirs], "units": int(w.shape[0]),
               "embed_dim": int(w.shape[1]), "evaluated_at": evaluated_at or "the dataset-mean grey image"} | computed


def write_readout(store: Store, model_name: str, layer_name: str, w: np.ndarray, meta: dict) -> Artifact:
    """Keep W as a cache .npy with an `artifacts` row (name "readout") of the penultimate layer `layer_name`."""
    with store.sessions.begin() as session:
        model = session.scalar(select(Model).where(Model.name == model_name))
        layer = model and session.scalar(select(Layer).where(Layer.model_id == model.id, Layer.name == layer_name))
        if layer is None or layer.n_units != w.shape[0]:
            raise ValueError(f"the store has no model {model_name} with a layer {layer_name} of {w.shape[0]} units "
                             f"(the penultimate layer of {meta['arch']}); register the model first")
        run = start_run(session, "attribution", model, meta, layer=layer_name)
        path = write_npy(store, f"artifacts/{model_name}/{layer_name}", w)
        art = session.scalar(select(Artifact).where(Artifact.model_id == model.id, Artifact.layer == layer_name,
                                                    Artifact.name == ARTIFACT_NAME))
        if art is None:
            art = Artifact(model_id=model.id, layer=layer_name, name=ARTIFACT_NAME, path=path)
            session.add(art)
        art.path, art.meta, art.run_id = path, meta, run.id
        finish_run(session, run, {"units": int(w.shape[0]), "path": path, "agreement": meta["agreement"]})
        session.flush()
        session.expunge(art)
    refresh_readout_norms(store, model_name, layer_name, w, art.run_id)  # the direction query's divisor
    return art


def agreement_lines(meta: dict) -> list[str]:
    """What `worker attribution` prints about the read-outs."""
    lines = [f"kept: {meta['readout']} read-out ({meta['method']}); autograd evaluated at {meta['evaluated_at']}"]
    ag = meta.get("agreement")
    if ag is None:
        return lines + [f"no linear read-out to compare: {meta.get('linear')}"]
    q = ag["cosine_quantiles"]
    return lines + [
        f"linear vs autograd, per-unit cosine: min {ag['cosine_min']:.4f}, q05 {q['0.05']:.4f}, q25 {q['0.25']:.4f}, "
        f"median {q['0.5']:.4f}, q75 {q['0.75']:.4f}, q95 {q['0.95']:.4f}; whole matrix {ag['matrix_cosine']:.4f}",
        f"linear × {ag['scale']:.4g} vs autograd: median relative error per unit {ag['relative_error_median']:.2%}"]


def sample_images(loaded: LoadedModel, corpus: str | Path | None, n: int) -> tuple[torch.Tensor | None, str]:
    """Up to n preprocessed corpus images (and their description), or (None, the grey image) without a corpus."""
    if corpus is None:
        return None, "the dataset-mean grey image"
    from worker.analyses.facets import read_images

    pixels, _ = read_images(corpus, loaded.preprocess, limit=n)
    if not len(pixels):
        raise ValueError(f"no readable images in {corpus}")
    return pixels, f"the mean activation of {len(pixels)} images of {corpus}"


def write_npy(store: Store, folder: str, array: np.ndarray) -> str:
    """Content-addressed .npy in the cache, so a served URL never changes meaning."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32))
    data = buf.getvalue()
    return store.cache.write(f"{folder}/{ARTIFACT_NAME}-{hashlib.sha256(data).hexdigest()[:16]}.npy", data)


def registered_config_dirs(arch: str) -> list[Path]:
    """The directories registered with open_clip (add_model_config) that hold `arch`'s JSON config;
    empty for a built-in architecture."""
    import open_clip

    builtin = Path(open_clip.__file__).resolve().parent / "model_configs"
    dirs = getattr(open_clip.factory, "_MODEL_CONFIG_PATHS", [])
    return [Path(d) for d in dirs if Path(d).is_dir() and Path(d).resolve() != builtin
            and (Path(d) / f"{arch}.json").is_file()]

