"""Image-based word embeddings, read with numpy only (the web app never imports torch).

A word's vector is its row of the words x units matrix the worker's words stage saved (post-ReLU
scores of the rendered word) minus the mean row over all words. Neighbours are by cosine similarity.
"Typographic" units, whose top words share a spelling fragment (most of them end in "-ing", start with
"con-" …), respond to letters rather than meaning; masking them drops those columns before comparing.
"""
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TYPO_TOP = 10  # top words per unit looked at
TYPO_SHARE = 0.6  # fraction of them that must share the fragment
TYPO_MIN_LEN = 3  # shortest fragment that counts
TOKEN_RE = re.compile(r"[+-]|[^\s+-]+")


class EmbeddingError(ValueError):
    """Input the embeddings cannot answer (unknown word, malformed expression): a 422 with this reason."""


def shared_fragment(words: list[str], share: float = TYPO_SHARE, min_len: int = TYPO_MIN_LEN) -> str | None:
    """The longest prefix ("con-") or suffix ("-ing") of >= min_len letters that >= share of `words` have."""
    need = max(2, int(np.ceil(share * len(words))))
    best: str | None = None
    for kind in ("suffix", "prefix"):
        for n in range(min_len, 8):
            counts = Counter((w[-n:] if kind == "suffix" else w[:n]) for w in words if len(w) > n)
            if not counts:
                break
            frag, count = counts.most_common(1)[0]
            if count < need:
                break
            label = f"-{frag}" if kind == "suffix" else f"{frag}-"
            if best is None or len(label) > len(best):
                best = label
    return best


def typographic_units(matrix: np.ndarray, words: list[str], top: int = TYPO_TOP) -> dict[int, str]:
    """{unit: fragment} for units whose top words mostly share a spelling fragment."""
    k = min(top, matrix.shape[0])
    idx = np.argpartition(-matrix, k - 1, axis=0)[:k]  # (k, units), unordered
    out = {}
    for unit in range(matrix.shape[1]):
        col = matrix[idx[:, unit], unit]
        if np.ptp(matrix[:, unit]) == 0:
            continue  # a dead unit has no top words
        frag = shared_fragment([words[i] for i in idx[np.argsort(-col), unit]])
        if frag:
            out[unit] = frag
    return out


@dataclass
class WordSpace:
    """One layer's word embedding: words, raw scores, centred vectors, typographic units."""

    words: list[str]
    scores: np.ndarray  # (n_words, units) raw rendered-word scores
    vectors: np.ndarray = field(init=False)  # scores minus the mean word
    index: dict[str, int] = field(init=False)
    typographic: dict[int, str] = field(init=False)
    spread: np.ndarray = field(init=False)

    def __post_init__(self):
        self.vectors = self.scores - self.scores.mean(axis=0, keepdims=True)
        self.spread = self.scores.std(axis=0)  # per unit, over words: the word page's sigma
        self.index = {w: i for i, w in enumerate(self.words)}
        self.typographic = typographic_units(self.scores, self.words)

    @property
    def n_units(self) -> int:
        return self.scores.shape[1]

    def row(self, word: str) -> int:
        key = word.strip().lower()
        if key not in self.index:
            raise EmbeddingError(f"unknown word {word!r}: not among the {len(self.words)} rendered words"
                                 + suggestion(key, self.words))
        return self.index[key]

    def columns(self, mask_typographic: bool) -> np.ndarray:
        keep = np.ones(self.n_units, dtype=bool)
        if mask_typographic:
            keep[list(self.typographic)] = False
        return keep

    def nearest(self, vector: np.ndarray, k: int, mask_typographic: bool, exclude: set[int]) -> list[dict]:
        keep = self.columns(mask_typographic)
        vecs, v = self.vectors[:, keep], vector[keep]
        norms = np.linalg.norm(vecs, axis=1) * (np.linalg.norm(v) or 1.0)
        sims = np.divide(vecs @ v, norms, out=np.zeros(len(vecs)), where=norms > 0)
        sims[list(exclude)] = -np.inf
        best = np.argsort(-sims, kind="stable")[:k]
        return [{"word": self.words[i], "similarity": float(sims[i])} for i in best if np.isfinite(sims[i])]

    def neighbours(self, word: str, k: int = 10, mask_typographic: bool = False) -> list[dict]:
        i = self.row(word)
        return self.nearest(self.vectors[i], k, mask_typographic, {i})

    def arithmetic(self, expr: str, k: int = 10, mask_typographic: bool = False) -> tuple[list, list[dict]]:
        """"king - man + woman" -> (the parsed terms [(sign, word)], the nearest other words)."""
        terms = parse_expression(expr)
        rows = [(sign, self.row(word)) for sign, word in terms]
        vector = sum(sign * self.vectors[i] for sign, i in rows)
        return terms, self.nearest(vector, k, mask_typographic, {i for _, i in rows})


def parse_expression(expr: str) -> list[tuple[int, str]]:
    """'king - man + woman' -> [(1, 'king'), (-1, 'man'), (1, 'woman')]; raises EmbeddingError if malformed."""
    tokens = TOKEN_RE.findall(expr)
    if not tokens:
        raise EmbeddingError("empty expression: write words joined by + and -, e.g. 'king - man + woman'")
    terms: list[tuple[int, str]] = []
    sign: int | None = None
    for tok in tokens:
        if tok in "+-":
            if sign is not None:
                raise EmbeddingError(f"two operators in a row in {expr!r}")
            sign = -1 if tok == "-" else 1
            continue
        if sign is None and terms:
            raise EmbeddingError(f"missing + or - between {terms[-1][1]!r} and {tok.lower()!r}")
        terms.append((sign or 1, tok.lower()))
        sign = None
    if sign is not None:
        raise EmbeddingError(f"{expr!r} ends with an operator; write words joined by + and -")
    return terms


def suggestion(word: str, words: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, words, n=5, cutoff=0.75)
    return f"; did you mean {', '.join(close)}?" if close else ""


_LOCK = threading.Lock()
_SPACES: dict[tuple[str, float], WordSpace] = {}


def load_space(scores_file: Path, words_file: Path) -> WordSpace:
    """The WordSpace of a matrix file, loaded once per process (keyed by path and mtime)."""
    key = (str(scores_file), scores_file.stat().st_mtime)
    with _LOCK:
        space = _SPACES.get(key)
        if space is None:
            words = json.loads(words_file.read_text())
            space = WordSpace(words, np.load(scores_file).astype(np.float32))
            if len(_SPACES) >= 8:  # one matrix per layer; keep memory bounded
                _SPACES.pop(next(iter(_SPACES)))
            _SPACES[key] = space
        return space
