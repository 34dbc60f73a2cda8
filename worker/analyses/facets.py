"""Facet probes for faceted feature visualization (the paper's appendix).

A facet is a folder of images (faces, text, logos, flags …). Its probe is a logistic regression on a
lower layer's spatially averaged activations that tells the facet's images from generic images
(a `--generic` folder, or else every other facet's images). Probes are trained once per model, facet
and layer, and stored: the weight vector as .npy in the cache, a `facet_probes` row in the store.
"""
import hashlib
import io
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select

from store.schema import FacetProbe, Model
from store.writes import Store
from worker.compute.corpus import Skip, iter_entries, open_entry
from worker.compute.layers import activations
from worker.compute.models import LoadedModel

FACET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")


@dataclass
class Probe:
    """A trained facet probe: weights over the layer's units, held-out accuracy, and what it saw."""

    weights: np.ndarray  # (units,) float32, in the layer's raw activation units
    bias: float
    accuracy: float  # cross-validated balanced accuracy (0.5 = chance)
    n_facet: int
    n_generic: int

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.weights.astype(np.float32).tobytes()).hexdigest()


@dataclass
class StoredProbe:
    facet: str
    layer: str
    weights: torch.Tensor
    digest: str
    accuracy: float


def check_facet_name(name: str) -> str:
    if not FACET_NAME.match(name):
        raise ValueError(f"facet name {name!r} must be letters, digits, _ and - (max 48)")
    return name


def facet_folders(root: str | Path) -> dict[str, Path]:
    """Each sub-folder of `root` that holds images is a facet named after it."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"facet folder {root} does not exist")
    return {check_facet_name(d.name): d for d in sorted(root.iterdir())
            if d.is_dir() and not d.name.startswith(".") and any(True for _ in iter_entries(d))}


def read_images(folder: str | Path, preprocess, limit: int | None = None) -> tuple[torch.Tensor, Counter]:
    """The folder's images (recursive) preprocessed for the model, and the skipped files by reason."""
    batches, skipped = [], Counter()
    for pixels, bad in iter_images(folder, preprocess, limit, batch=64):
        batches.append(pixels)
        skipped.update(bad)
    return (torch.cat(batches) if batches else torch.empty(0, 3, 1, 1)), skipped


def iter_images(folder: str | Path, preprocess, limit: int | None = None,
                batch: int = 32) -> Iterator[tuple[torch.Tensor, Counter]]:
    """The folder's images in preprocessed batches (memory stays one batch), each with the files skipped."""
    pixels, skipped, seen = [], Counter(), 0
    for entry in iter_entries(folder):
        if limit is not None and seen >= limit:
            break
        try:
            _, img = open_entry(entry)
            pixels.append(preprocess(img))
            seen += 1
        except Skip as s:
            skipped[s.reason] += 1
        if len(pixels) == batch:
            yield torch.stack(pixels), skipped
            pixels, skipped = [], Counter()
    if pixels or skipped:
        yield (torch.stack(pixels) if pixels else torch.empty(0, 3, 1, 1)), skipped


@torch.inference_mode()
def pooled_activations(loaded: LoadedModel, layer: str, pixels: torch.Tensor, batch: int = 32) -> np.ndarray:
    """(N, units) spatial means of `layer` for preprocessed images."""
    if len(pixels) == 0:
        return np.empty((0, 0))
    out = [activations(loaded, pixels[i:i + batch].to(loaded.device), [layer])[layer].mean(dim=(-2, -1)).cpu()
           for i in range(0, len(pixels), batch)]
    return torch.cat(out).double().numpy()


def pooled_folder(loaded: LoadedModel, layer: str, folder: str | Path, limit: int | None = None,
                  batch: int = 32) -> tuple[np.ndarray, Counter]:
    """(N, units) spatial means of `layer` over a folder's images, read a batch at a time; and the skips."""
    feats, skipped = [], Counter()
    for pixels, bad in iter_images(folder, loaded.preprocess, limit, batch):
        skipped.update(bad)
        if len(pixels):
            feats.append(pooled_activations(loaded, layer, pixels, batch))
    return (np.concatenate(feats) if feats else np.empty((0, 0))), skipped


def train_probe(facet: np.ndarray, generic: np.ndarray, seed: int = 0) -> Probe:
    """Logistic regression telling `facet` rows from `generic` rows, standardised internally; the
    returned weights act on raw activations. Accuracy is cross-validated, balanced over the classes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = min(len(facet), len(generic))
    if smallest < 2:
        raise ValueError(f"a facet probe needs at least 2 facet and 2 generic images; got {len(facet)} and "
                         f"{len(generic)}")
    x = np.concatenate([facet, generic])
    y = np.concatenate([np.ones(len(facet)), np.zeros(len(generic))])
    model = make_pipeline(StandardScaler(),
                          LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000))
    folds = StratifiedKFold(n_splits=min(5, smallest), shuffle=True, random_state=seed)
    accuracy = float(cross_val_score(model, x, y, cv=folds, scoring="balanced_accuracy").mean())
    model.fit(x, y)
    scaler, logreg = model[0], model[1]
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    weights = logreg.coef_[0] / scale
    bias = float(logreg.intercept_[0] - (logreg.coef_[0] * scaler.mean_ / scale).sum())
    return Probe(weights.astype(np.float32), bias, accuracy, len(facet), len(generic))


def probe_path(model: str, layer: str, facet: str, digest: str) -> str:
    return f"probes/{model}/{layer}/{facet}-{digest[:12]}.npy"


def save_probe(store: Store, model_name: str, facet: str, layer: str, probe: Probe, run_id: int | None) -> StoredProbe:
    """Write the probe's weights to the cache and upsert its `facet_probes` row (one transaction)."""
    buf = io.BytesIO()
    np.save(buf, probe.weights.astype(np.float32))
    path = store.cache.write(probe_path(model_name, layer, facet, probe.digest), buf.getvalue())
    with store.sessions.begin() as s:
        model = s.scalar(select(Model).where(Model.name == model_name))
        row = s.scalar(select(FacetProbe).where(FacetProbe.model_id == model.id, FacetProbe.facet == facet,
                                                FacetProbe.layer == layer))
        if row is None:
            row = FacetProbe(model_id=model.id, facet=facet, layer=layer)
            s.add(row)
        row.weights, row.accuracy, row.run_id = path, probe.accuracy, run_id
    return StoredProbe(facet, layer, torch.from_numpy(probe.weights.copy()), probe.digest, probe.accuracy)


def load_probes(store: Store, model_name: str, layer: str, facets: list[str] | None = None) -> dict[str, StoredProbe]:
    """The stored probes of a model on a layer (all, or the named ones), by facet name."""
    with store.sessions() as s:
        rows = s.scalars(select(FacetProbe).join(Model).where(Model.name == model_name, FacetProbe.layer == layer)
                         .order_by(FacetProbe.facet)).all()
    out = {}
    for row in rows:
        if facets is not None and row.facet not in facets:
            continue
        file = store.cache.resolve(row.weights)
        if file is None:
            continue  # cache lost the file: the probe is retrained
        weights = np.load(file)
        out[row.facet] = StoredProbe(row.facet, row.layer, torch.from_numpy(weights),
                                     hashlib.sha256(weights.astype(np.float32).tobytes()).hexdigest(), row.accuracy)
    return out


def ensure_probes(store: Store, loaded: LoadedModel, model_name: str, layer: str, folders: dict[str, Path],
                  generic: Path | None = None, retrain: bool = False, limit: int = 512,
                  run_id: int | None = None) -> tuple[dict[str, StoredProbe], dict]:
    """Probes for every facet folder on `layer`, training only those not stored yet (or all with
    `retrain`). Returns the probes and a report (accuracy, image counts, skipped files per facet)."""
    have = {} if retrain else load_probes(store, model_name, layer, list(folders))
    todo = [f for f in folders if f not in have]
    report: dict = {f: {"accuracy": p.accuracy, "trained": False} for f, p in have.items()}
    if not todo:
        return have, report
    feats, skipped = {}, {}
    sources = dict(folders) if generic is None else {**folders, "__generic__": generic}
    for name, folder in sources.items():
        feats[name], skipped[name] = pooled_folder(loaded, layer, folder, limit)
    for facet in todo:
        others = [v for k, v in feats.items() if k != facet and len(v)]
        negatives = feats["__generic__"] if generic is not None else (
            np.concatenate(others) if others else np.empty((0, 0)))
        probe = train_probe(feats[facet], negatives)
        have[facet] = save_probe(store, model_name, facet, layer, probe, run_id)
        report[facet] = {"accuracy": probe.accuracy, "trained": True, "n_facet": probe.n_facet,
                         "n_generic": probe.n_generic, "skipped": dict(skipped[facet])}
    return have, report


# -- facets as `microscope worker featurevis --facets` names them ---------------------------------------

def parse_facet_specs(specs: list[str], generic: Path | None = None) -> tuple[dict[str, Path], list[str]]:
    """(folders by facet, names of stored probes) for specs DIR (each sub-folder of images is a facet),
    NAME=DIR, or the NAME of a stored probe; every folder, `generic` too, must exist."""
    folders: dict[str, Path] = {}
    named: list[str] = []
    for spec in specs:
        facet, sep, folder = spec.partition("=")
        if sep:
            folders[check_facet_name(facet)] = Path(folder).expanduser()
        elif Path(spec).expanduser().is_dir():
            found = facet_folders(Path(spec).expanduser())
            if not found:
                raise ValueError(f"--facets {spec}: no sub-folders with images in it (each sub-folder is a facet)")
            folders.update(found)
        else:
            named.append(check_facet_name(spec))
    for folder in [*folders.values(), *([generic] if generic else [])]:
        if not folder.is_dir():
            raise FileNotFoundError(f"facet folder {folder} does not exist")
    return folders, named


def stored_probes(store: Store, model_name: str, layer: str, named: list[str]) -> dict[str, StoredProbe]:
    """The stored probes of `named` facets; a ValueError naming those that are not stored."""
    stored = load_probes(store, model_name, layer)
    missing = [n for n in named if n not in stored]
    if missing:
        raise ValueError(f"no stored probe for facets {missing} on {model_name}/{layer}; stored: "
                         f"{', '.join(stored) or 'none'}. Pass NAME=DIR to train one.")
    return {n: stored[n] for n in named}


def resolve_facets(store: Store, loaded: LoadedModel, model_name: str, layer: str, specs: list[str],
                   generic: Path | None, retrain: bool, run_id: int | None) -> tuple[dict[str, StoredProbe], dict]:
    """Probes for `specs` (`parse_facet_specs`): folders are (trained if need be and) stored, names must be
    stored. Returns the probes and a report per facet."""
    folders, named = parse_facet_specs(specs, generic)
    probes, report = ensure_probes(store, loaded, model_name, layer, folders, generic, retrain, run_id=run_id)
    for n, probe in stored_probes(store, model_name, layer, named).items():
        probes[n], report[n] = probe, {"accuracy": probe.accuracy, "trained": False}
    return probes, report


def facet_layer_for(loaded: LoadedModel, target: str, asked: str | None) -> str:
    """The layer facet probes read: the one asked for (it must lie below `target`), else the one below."""
    from worker.compute.layers import catalogue, layer_spec

    names = [s.name for s in catalogue(loaded)]
    if asked is not None:
        layer_spec(loaded, asked)
        if names.index(asked) >= names.index(target):
            raise ValueError(f"--facet-layer {asked} must lie below --layer {target}")
        return asked
    if names.index(target) == 0:
        raise ValueError(f"{target} is the lowest layer; facets need a layer below it")
    return names[names.index(target) - 1]
