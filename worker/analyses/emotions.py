"""Emotion composition (paper, "Emotion Composition"): which few neurons make up each feeling word.

For every word of a feeling wheel, the text "I feel {word}" gets an attribution vector over the
penultimate neurons (worker.analyses.attribution). Its sparse code is a handful of neurons with weights:

- `lasso` (default): the word's text embedding, centred on the mean over all words (removing what
  every "I feel …" prompt shares), is rebuilt from the neurons' read-out directions W[u] with an L1
  penalty, keeping at most `neurons` of them. The first neuron the lasso path picks is the word's top
  centred attribution; later ones explain what it leaves. R² says how much the code rebuilds.
- `logistic`: the paper's footnote 41: attribution vectors of several prompt templates per word,
  one-vs-rest L1 logistic regression over the neurons, the code being the word's coefficients.

An NMF of all attribution vectors gives the atlas: 2 factors lay the words out (the paper finds
valence and arousal), `factors` factors (7 in the paper) colour the cells.
"""
import io
import json
from pathlib import Path

import numpy as np

from worker.data.feelings import FEELINGS, Feeling, read_feelings

PROMPT = "I feel {}"
LOGISTIC_PROMPTS = ("I feel {}", "i am feeling {}", "Me feeling {} on my face",
                    "a photo of me with a {} expression on my face")
FACTOR_COLOURS = ("#e6b800", "#3a7bd5", "#2e9e5b", "#d64541", "#8e44ad", "#e67e22", "#16a0a0",
                  "#7f8c8d", "#c0392b", "#2c3e50")


# --- sparse codes -------------------------------------------------------------------------------

def lasso_codes(targets: np.ndarray, readout: np.ndarray, neurons: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse codes (words × units) rebuilding each target (words × embed) as Σ_u code[u]·readout[u],
    with at most `neurons` non-zero weights (the last lasso-path point that is that sparse), and their R²."""
    from sklearn.linear_model import lars_path_gram

    x = readout.T.astype(np.float64)  # embed × units: one column per neuron
    gram = x.T @ x  # shared by every word: computed once, not once per lasso path
    codes = np.zeros((len(targets), readout.shape[0]))
    r2 = np.zeros(len(targets))
    for i, y in enumerate(targets.astype(np.float64)):
        _, _, path = lars_path_gram(x.T @ y, gram, n_samples=len(y), method="lasso", max_iter=4 * neurons)
        fits = [c for c in path.T if np.count_nonzero(c) <= neurons]
        codes[i] = fits[-1]
        r2[i] = 1 - np.sum((y - x @ codes[i]) ** 2) / max(np.sum(y ** 2), 1e-12)
    return codes, r2


def logistic_codes(vectors: np.ndarray, labels: np.ndarray, n_words: int, c: float) -> np.ndarray:
    """One-vs-rest L1 logistic regression per word over standardised attribution vectors (the paper's
    footnote 41); returns the coefficients (words × units) in units of one standard deviation."""
    from sklearn.linear_model import LogisticRegression

    z = (vectors - vectors.mean(0)) / (vectors.std(0) + 1e-8)
    codes = np.zeros((n_words, vectors.shape[1]))
    for w in range(n_words):
        clf = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=c, class_weight="balanced")
        clf.fit(z, labels == w)
        codes[w] = clf.coef_[0]
    return codes


def top_entries(row: np.ndarray, k: int, key: str) -> list[dict]:
    """The `k` largest-magnitude non-zero entries of `row`, largest first."""
    order = np.argsort(-np.abs(row))[:k]
    return [{"unit": int(u), key: round(float(row[u]), 5)} for u in order if row[u] != 0]


# --- atlas ---------------------------------------------------------------------------------------

def nonneg(vectors: np.ndarray) -> np.ndarray:
    """Centred vectors split into positive and negative parts, side by side, for NMF."""
    c = vectors - vectors.mean(0)
    return np.hstack([np.maximum(c, 0), np.maximum(-c, 0)])


def nmf(vectors: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(word weights words × k, factor loadings k × 2·units) of a non-negative factorisation."""
    from sklearn.decomposition import NMF

    model = NMF(n_components=k, init="nndsvda", max_iter=1000, random_state=seed)
    return model.fit_transform(nonneg(vectors)), model.components_


def grid_cells(points: np.ndarray, side: int) -> list[tuple[int, int]]:
    """Snap 2-D points in [0, 1]² to distinct cells of a side × side grid, nearest free cell first."""
    free = {(c, r) for c in range(side) for r in range(side)}
    if len(points) > len(free):
        raise ValueError(f"{len(points)} points do not fit a {side}×{side} grid")
    out = []
    for x, y in points:
        want = np.array([x * (side - 1), y * (side - 1)])
        cell = min(free, key=lambda cr: (float(np.sum((np.array(cr) - want) ** 2)), cr))
        free.remove(cell)
        out.append(cell)
    return out


def layout(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-factor NMF weights as ranks in [0, 1]² (x = first factor, y = second), so words spread evenly."""
    w, _ = nmf(vectors, 2, seed)
    ranks = np.argsort(np.argsort(w, axis=0, kind="stable"), axis=0, kind="stable")
    return ranks / max(len(w) - 1, 1)


def atlas(vectors: np.ndarray, factors: int, seed: int = 0) -> dict:
    """Cells, colour weights and factor summaries for the atlas of all words."""
    k = max(1, min(factors, len(vectors) - 1, len(FACTOR_COLOURS)))
    weights, loadings = nmf(vectors, k, seed)
    share = weights / np.maximum(weights.sum(1, keepdims=True), 1e-12)
    side = int(np.ceil(np.sqrt(len(vectors) * 1.3)))
    units = vectors.shape[1]
    signed = loadings[:, :units] - loadings[:, units:]  # back to one signed weight per neuron
    return {"cells": grid_cells(layout(vectors, seed), side), "side": side, "share": share,
            "factors": [{"index": i, "colour": FACTOR_COLOURS[i], "top_words": np.argsort(-weights[:, i])[:4],
                         "units": top_entries(signed[i], 5, "loading")} for i in range(k)]}


def cell_colour(share: np.ndarray) -> tuple[float, float, float]:
    """The colour of the word's strongest factor, paler the less that factor dominates."""
    from matplotlib.colors import to_rgb

    top = int(np.argmax(share))
    strength = 0.3 + 0.7 * float(share[top])
    return tuple(float(1 - strength * (1 - v)) for v in to_rgb(FACTOR_COLOURS[top]))


def render_atlas(words: list[str], cells: list[tuple[int, int]], side: int, share: np.ndarray,
                 factor_names: list[str]) -> bytes:
    """The atlas as a PNG: one coloured cell per word, a legend naming each factor by its top words."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    fig, ax = plt.subplots(figsize=(side * 0.95 + 0.4, side * 0.6 + 1.6), dpi=100)
    for word, (c, r), s in zip(words, cells, share, strict=True):
        colour = cell_colour(s)
        ax.add_patch(Rectangle((c, r), 0.96, 0.96, facecolor=colour, edgecolor="white"))
        dark = sum(colour) / 3 < 0.55
        ax.text(c + 0.48, r + 0.48, word, ha="center", va="center", fontsize=7,
                color="white" if dark else "black", wrap=True)
    ax.set_xlim(0, side)
    ax.set_ylim(side, 0)
    ax.set_axis_off()
    ax.legend(handles=[Patch(facecolor=FACTOR_COLOURS[i], label=n) for i, n in enumerate(factor_names)],
              loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=8, frameon=False)
    ax.set_title("Feeling atlas: NMF of “I feel …” attribution vectors", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# --- the experiment ------------------------------------------------------------------------------

def compose(loaded, feelings: list[Feeling], method: str = "lasso", neurons: int = 6,
            factors: int = 7, c: float = 0.05, seed: int = 0) -> dict:
    """Attribution vectors, sparse codes and the atlas for `feelings` (pure compute, nothing written)."""
    from worker.compute.readout import embed_texts, readout_matrix

    if len(feelings) < 3:
        raise ValueError("emotion composition needs at least 3 feeling words")
    words = [f.word for f in feelings]
    readout = readout_matrix(loaded)
    emb = embed_texts(loaded, [PROMPT.format(w) for w in words])
    vectors = emb @ readout.T  # words × units: the "I feel {word}" attribution vectors
    if method == "lasso":
        codes, quality = lasso_codes(emb - emb.mean(0), readout, neurons)
    elif method == "logistic":
        prompts = [p.format(w) for w in words for p in LOGISTIC_PROMPTS]
        many = embed_texts(loaded, prompts) @ readout.T
        codes = logistic_codes(many, np.repeat(np.arange(len(words)), len(LOGISTIC_PROMPTS)), len(words), c)
        quality = separation(many, codes, len(LOGISTIC_PROMPTS))
    else:
        raise ValueError(f"unknown method {method!r}; methods: lasso, logistic")
    return {"words": words, "vectors": vectors, "codes": codes, "quality": quality,
            "atlas": atlas(vectors, factors, seed), "readout": readout}


def separation(vectors: np.ndarray, codes: np.ndarray, per_word: int) -> np.ndarray:
    """Per word: the share of other words' prompts its code scores below its own prompts' mean score."""
    z = (vectors - vectors.mean(0)) / (vectors.std(0) + 1e-8)
    scores = z @ codes.T  # prompts × words
    own = np.repeat(np.arange(len(codes)), per_word)
    out = np.zeros(len(codes))
    for w in range(len(codes)):
        mine = scores[own == w, w].mean()
        out[w] = float(np.mean(scores[own != w, w] < mine))
    return out


def report(result: dict, feelings: list[Feeling], method: str, neurons: int) -> dict:
    """The JSON the pages read: per word its group, code, top attributions, quality, cell and factors."""
    at = result["atlas"]
    centred = result["vectors"] - result["vectors"].mean(0)
    words = result["words"]
    factors = [{**f, "top_words": [words[i] for i in f["top_words"]]} for f in at["factors"]]
    return {
        "prompt": PROMPT, "method": method, "max_neurons": neurons,
        "quality_name": "r2" if method == "lasso" else "separation",
        "side": at["side"], "factors": factors,
        "words": [{"word": f.word, "group": f.group, "code": top_entries(result["codes"][i], neurons, "weight"),
                   "nonzero": int(np.count_nonzero(result["codes"][i])),
                   "quality": round(float(result["quality"][i]), 4),
                   "top": top_entries(centred[i], 8, "attribution"),
                   "cell": list(at["cells"][i]),
                   "factors": [round(float(s), 4) for s in at["share"][i]]}
                  for i, f in enumerate(feelings)],
    }


def emotions_settings(feelings_path: Path, method: str, neurons: int, factors: int) -> dict:
    return {"feelings": str(feelings_path), "method": method, "neurons": neurons, "factors": factors,
            "prompt": PROMPT}


def emotions_stage(store, model_name: str, loaded, feelings_path: Path = FEELINGS, method: str = "lasso",
                   neurons: int = 6, factors: int = 7) -> dict:
    """Compute emotion composition for the model and keep it: a JSON, the atlas PNG and the attribution
    matrix (.npy) in the cache, each with an `artifacts` row on the penultimate layer."""
    from store.writes import recorded_run
    from worker.compute.layers import layer_spec

    feelings = read_feelings(Path(feelings_path))
    layer = layer_spec(loaded).name
    settings = emotions_settings(feelings_path, method, neurons, factors)
    with recorded_run(store, "emotions", model_name, settings, layer=layer) as run:
        result = compose(loaded, feelings, method, neurons, factors)
        data, meta = write_emotions(store, model_name, layer, result, feelings, method, neurons, run["run_id"])
        run.update(meta)
    return data


def write_emotions(store, model_name: str, layer: str, result: dict, feelings: list[Feeling], method: str,
                   neurons: int, run_id: int) -> tuple[dict, dict]:
    """The JSON the pages read, the atlas PNG and the vectors, each with an artifact row; (data, report)."""
    data = report(result, feelings, method, neurons)
    names = [", ".join(f["top_words"][:3]) for f in data["factors"]]
    png = render_atlas(result["words"], [tuple(w["cell"]) for w in data["words"]], data["side"],
                       result["atlas"]["share"], names)
    data["atlas"] = store.cache.write(f"artifacts/{model_name}/{layer}/emotions-atlas.png", png)
    data["vectors"] = save_npy(store.cache, f"artifacts/{model_name}/{layer}/emotions-vectors.npy",
                               result["vectors"])
    path = store.cache.write(f"artifacts/{model_name}/{layer}/emotions.json",
                             json.dumps(data, ensure_ascii=False).encode())
    meta = {"words": len(feelings), "method": method, "max_neurons": neurons,
            "mean_quality": round(float(np.mean(result["quality"])), 4), "quality_name": data["quality_name"]}
    keep_artifacts(store, model_name, layer, run_id,
                   {"emotions": (path, meta), "emotions-atlas": (data["atlas"], {}),
                    "emotions-vectors": (data["vectors"], {"shape": list(result["vectors"].shape),
                                                           "rows": "words in emotions.json order"})})
    return data, {**meta, "layer": layer, "path": path, "units": int(result["vectors"].shape[1])}


def save_npy(cache, rel: str, array: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32))
    return cache.write(rel, buf.getvalue())


def keep_artifacts(store, model_name: str, layer: str, run_id: int, items: dict[str, tuple[str, dict]]) -> None:
    """Create or update one `artifacts` row per name (model, layer, name is unique)."""
    from sqlalchemy import select

    from store.schema import Artifact, Model

    with store.sessions.begin() as session:
        model_id = session.scalar(select(Model.id).where(Model.name == model_name))
        for name, (path, meta) in items.items():
            art = session.scalar(select(Artifact).where(Artifact.model_id == model_id, Artifact.layer == layer,
                                                        Artifact.name == name))
            if art is None:
                art = Artifact(model_id=model_id, layer=layer, name=name, path=path)
                session.add(art)
            art.path, art.meta, art.run_id = path, meta, run_id
