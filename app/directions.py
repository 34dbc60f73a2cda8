"""Concept directions: a text, a label's text or an expression ("king - man + woman") defines a direction
in the read-out layer, shown like a neuron (numpy only; the text tower runs on the probe thread).

For terms t_i with signs s_i, v = Σ s_i · embed(t_i) (unit-length text embeddings) lives in the embedding
space; the direction in the layer is d = W v, W the read-out (units × embed_dim, worker/compute/readout.py),
so d_u is the attribution of the expression to unit u. An image with pooled activations a (rectified
where the matrix holds pre-ReLU values: the read-out acts on the layer's output) has the read-out
embedding e = Wᵀa, and scores e · v / |e| = a · d / |Wᵀa|: the cosine of its read-out embedding with the
direction (times |v|), as CLIP compares an image with a text. Without the division, images whose
activations are large everywhere (on the demo: rendered words) top every direction. Dataset examples
are the activation matrix's rows with the highest and lowest score; nearest units are the read-out rows
W[u] with the highest cosine to v. The direction's modality profile is the layer's stored profiles times d
(exact for pictures, whose profile is a mean; first-order for rendered words, whose score takes a max).
"""
import re
import threading
from collections import OrderedDict

import numpy as np

from app.activations import readout_digest

MAX_TERMS = 8
MAX_TERM = 100
TOKEN = re.compile(r'\s*(?:"([^"]*)"|([+-])|([^+\-"]+)|("))')


class DirectionError(ValueError):
    """A malformed expression (answered 422 with this reason)."""


def parse(q: str) -> list[tuple[int, str]]:
    """'king - man + woman' -> [(1, 'king'), (-1, 'man'), (1, 'woman')]; quote a term that holds + or -
    ('"t-shirt" + red'). Raises DirectionError saying what is wrong."""
    terms: list[tuple[int, str]] = []
    sign: int | None = None
    for quoted, op, bare, stray in TOKEN.findall(q or ""):
        if stray:
            raise DirectionError(f"unbalanced quote in {q!r}")
        if op:
            if sign is not None:
                raise DirectionError(f"two operators in a row in {q!r}")
            sign = -1 if op == "-" else 1
            continue
        text = " ".join((quoted if quoted or not bare else bare).split())
        if not text:
            if quoted == "" and not bare:
                raise DirectionError(f"an empty quoted term in {q!r}")
            continue
        if sign is None and terms:
            raise DirectionError(f"missing + or - between {terms[-1][1]!r} and {text!r}")
        terms.append((sign or 1, check_term(text)))
        sign = None
    return finish(terms, sign, q)


def check_term(text: str) -> str:
    if len(text) > MAX_TERM:
        raise DirectionError(f"a term is at most {MAX_TERM} characters, got {len(text)}")
    return text


def finish(terms: list[tuple[int, str]], sign: int | None, q: str) -> list[tuple[int, str]]:
    if sign is not None:
        raise DirectionError(f"{q!r} ends with an operator; write texts joined by + and -")
    if not terms:
        raise DirectionError("empty expression: write a text, or texts joined by + and -, e.g. 'king - man + woman'")
    if len(terms) > MAX_TERMS:
        raise DirectionError(f"at most {MAX_TERMS} terms, got {len(terms)}")
    return terms


def canonical(terms: list[tuple[int, str]]) -> str:
    """The expression written one way (the share link's q): 'a - b + c', terms with + or - quoted."""
    out = []
    for i, (sign, text) in enumerate(terms):
        term = f'"{text}"' if re.search(r"[+\-]", text) else text
        out.append(term if i == 0 and sign > 0 else f"{'-' if sign < 0 else '+'} {term}")
    return " ".join(out)


def combine(terms: list[tuple[int, str]], embeddings: list[np.ndarray]) -> np.ndarray:
    """v = Σ sign · embedding (embed_dim,)."""
    return sum(sign * np.asarray(e, dtype=np.float64) for (sign, _), e in zip(terms, embeddings, strict=True))


def nearest_units(readout: np.ndarray, v: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(unit, cosine of its read-out row with v), best first."""
    norms = np.linalg.norm(readout, axis=1) * (np.linalg.norm(v) or 1.0)
    cos = np.divide(readout @ v, norms, out=np.zeros(len(readout)), where=norms > 0)
    return [(int(u), float(cos[u])) for u in np.argsort(-cos, kind="stable")[:k]]


def extremes(values: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """Row indices of the k highest (best first) and k lowest (lowest first) values; ties by row."""
    order = np.argsort(-values, kind="stable")
    low = np.argsort(values, kind="stable")
    return [int(i) for i in order[:k]], [int(i) for i in low[:k]]


def row_norms(matrix, readout: np.ndarray, rectify: bool) -> np.ndarray:
    """|Wᵀa| per matrix row: the worker's sidecar when it was made for this read-out, else one scan (for
    stores written before the sidecar; never written from here: only the worker writes)."""
    stored = matrix.readout_norms(readout_digest(readout), rectify)
    return stored if stored is not None else readout_norms(matrix, readout, rectify)


def readout_norms(matrix, readout: np.ndarray, rectify: bool) -> np.ndarray:
    """|Wᵀa| per matrix row, in one scan (the worker writes it beside the matrix; the page caches it)."""
    w = np.asarray(readout, dtype=np.float32)
    out = np.empty(matrix.rows, dtype=np.float32)
    for start, block in matrix.blocks():
        out[start:start + len(block)] = np.linalg.norm((np.maximum(block, 0) if rectify else block) @ w, axis=1)
    return np.maximum(out, 1e-12)


def image_scores(matrix, d: np.ndarray, norms: np.ndarray, rectify: bool) -> np.ndarray:
    """a · d / |Wᵀa| per row (see the module docstring), float32."""
    d = np.asarray(d, dtype=np.float32)
    out = np.empty(matrix.rows, dtype=np.float32)
    for start, block in matrix.blocks():
        out[start:start + len(block)] = (np.maximum(block, 0) if rectify else block) @ d
    return out / norms


def profile_of(profiles, d: np.ndarray, rows: int = 8) -> dict:
    """The direction's modality profile: each stored (concepts × units) modality times d, z-scored across
    concepts; its multimodality score as units are scored (the picture–word correlation across concepts)."""
    names = [n for n in ("picture", "word", "readout") if n in profiles.arrays]
    z = {n: zscore(np.asarray(profiles.arrays[n], dtype=np.float64) @ d) for n in names}
    both = np.minimum(z["picture"], z["word"])
    order = list(np.argsort(-both, kind="stable")[:rows // 2])
    for n in names:
        order += [int(i) for i in np.argsort(-z[n], kind="stable")[:2] if i not in order]
    best = int(both.argmax())
    table = [{"concept": profiles.concepts[i], "images": profiles.n_images[i], "both": round(float(both[i]), 2),
              **{n: round(float(z[n][i]), 2) for n in names}} for i in order]
    return {"score": round(float((z["picture"] * z["word"]).mean()), 3), "best": profiles.concepts[best],
            "peak": round(float(both[best]), 2), "rows": table, "modalities": names}


def zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 1e-12 * (1 + np.abs(x).max()) else np.zeros_like(x)


class Projections:
    """matrix @ d per (matrix folder, rows, query), kept for the last few queries: the top and bottom of a
    direction are instant on a revisit, and a scan of a large matrix is paid once."""

    def __init__(self, size: int = 32):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key, compute) -> np.ndarray:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


PROJECTIONS = Projections()
