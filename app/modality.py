"""Modality profiles as the worker's modality stage stored them (worker/analyses/modality.py: definitions), read
with numpy only: arrays memory-mapped once per file, a unit's column read when its page asks for it.
"""
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from store.cache import Cache
from store.schema import Artifact, Layer

ARTIFACT = "modality"
MODALITIES = (("picture", "pictures"), ("word", "rendered name"), ("readout", "read-out of the text"))


@dataclass
class Profiles:
    """One layer's stored profiles: concepts, (concepts × units) arrays, per-unit score and best concept."""

    concepts: list[str]
    n_images: list[int]
    arrays: dict[str, np.ndarray]
    meta: dict

    @property
    def score(self) -> np.ndarray:
        return self.arrays["score"]

    def zcolumn(self, name: str, unit: int) -> np.ndarray:
        col = np.asarray(self.arrays[name][:, unit], dtype=np.float64)
        sd = col.std()
        return (col - col.mean()) / sd if sd > 1e-9 * (1 + np.abs(col).max()) else np.zeros_like(col)

    def unit_table(self, unit: int, rows: int = 8) -> list[dict]:
        """The unit's best concepts (by min z over picture and word, then by each modality): z per modality."""
        names = [n for n, _ in MODALITIES if n in self.arrays]
        z = {n: self.zcolumn(n, unit) for n in names}
        both = np.minimum(z["picture"], z["word"])
        order = list(np.argsort(-both, kind="stable")[:rows // 2])
        for n in names:
            order += [int(i) for i in np.argsort(-z[n], kind="stable")[:2] if i not in order]
        return [{"concept": self.concepts[i], "images": self.n_images[i], "both": round(float(both[i]), 2),
                 **{n: round(float(z[n][i]), 2) for n in names}} for i in order]


_LOCK = threading.Lock()
_LOADED: dict[str, Profiles] = {}


def modality_artifact(session: Session, layer: Layer) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.model_id == layer.model_id, Artifact.layer == layer.name,
                                                 Artifact.name == ARTIFACT))


def load_profiles(cache: Cache, meta: dict | None) -> Profiles | None:
    """The files named by the modality artifact's `meta` (None if a file is missing), loaded once per score file."""
    paths = (meta or {}).get("paths", {})
    key = paths.get("score", "")
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
    files = {k: cache.resolve(p) for k, p in paths.items()}
    if not files or any(f is None for f in files.values()):
        return None
    concepts = json.loads(Path(files.pop("concepts")).read_text())
    arrays = {k: np.load(f, mmap_mode="r", allow_pickle=False) for k, f in files.items()}
    profiles = Profiles(concepts["concepts"], concepts["n_images"], arrays, meta)
    with _LOCK:
        if len(_LOADED) >= 16:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = profiles
    return profiles


def layer_profiles(session: Session, cache: Cache, layer: Layer) -> Profiles | None:
    art = modality_artifact(session, layer)
    return load_profiles(cache, art.meta) if art is not None else None


def heat(z: float, scale: float = 3.0) -> str:
    """A background colour for a z-score: orange above zero, blue below, white at zero."""
    t = max(-1.0, min(1.0, z / scale))
    r, g, b = (255, 110, 0) if t > 0 else (0, 110, 255)
    a = abs(t)
    return f"rgb({round(255 - (255 - r) * a)}, {round(255 - (255 - g) * a)}, {round(255 - (255 - b) * a)})"
