"""Modality profiles: per unit, its response to each concept of a concept set in three modalities, and a
multimodality score with a null (the paper's claim, measured: a unit that answers a concept whether it is
shown as a picture or written as a word).

Modalities, each a (concepts × units) matrix:

- picture: the unit's mean activation (the activation matrix's pooled value) over the corpus images of the
  concept (images whose caption names it, or whose class folder is it, or that the model itself puts
  nearest the concept's text: `groups_*` below);
- word: its response to the concept's name rendered as an image (`worker.compute.text_scores`, the rendered-words
  stage's scoring; pre-ReLU where the matrix is pre-ReLU);
- read-out: W · t, the linear read-out of the concept's text embedding (`worker.compute.readout`), on the layer
  the read-out is defined for (the penultimate one); absent elsewhere.

**Multimodality score** (`multimodality`): the Pearson correlation, across the concepts, between the unit's
picture responses and its rendered-word responses (each modality z-scored per unit across the concepts,
the score is the mean of their product). A unit scores high when it ranks the concepts the same way
whether it sees them or reads them; a spelling unit (its words vary with letters, not with what its
pictures show) scores near 0; a dead unit scores exactly 0. The unit's **best concept** is the one with the
highest min(z_picture, z_word), and that minimum is its **peak** (a unit selective for one concept in both
modalities has a high peak even when the other concepts dilute its correlation). **Null** (`null_scores`):
the same correlation after permuting the concept labels of the word modality (the picture of one concept
against the name of another), over every unit and `permutations` permutations; a unit counts as
multimodal above the null's 99th percentile (about 1 % of units pass by chance).

Pure compute at the top (numpy, tested on planted units); `compute_modality` and `write_modality`, which the stage
(worker/stages/modality.py) calls, at the bottom.
"""
import hashlib
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from worker.data.lexicons import STOCK_WORDS

DEFINITION = ("the correlation across concepts between the unit's response to pictures of a concept and to its "
              "rendered name (each z-scored per unit across the concepts)")
NULL = "the same score with the word modality's concept labels permuted"
ARTIFACT = "modality"
MIN_IMAGES = 3  # a concept needs this many pictures for a mean worth comparing
MAX_CONCEPTS = 1000
PERMUTATIONS = 20
HIST_BINS = 30


@dataclass
class Profile:
    """The three modalities over one concept set, each (concepts × units); readout None off the read-out layer."""

    concepts: list[str]
    picture: np.ndarray
    word: np.ndarray
    readout: np.ndarray | None
    n_images: list[int]


def zscore(x: np.ndarray) -> np.ndarray:
    """Per unit (column), across concepts (rows); a constant column (a dead unit) is all zeros."""
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(axis=0)
    return np.divide(x - x.mean(axis=0), sd, out=np.zeros_like(x), where=sd > 1e-9 * (1 + np.abs(x).max(axis=0)))


def multimodality(picture: np.ndarray, word: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, best concept index, peak) per unit: the picture–word correlation across concepts, the concept
    with the highest min(z_picture, z_word), and that minimum."""
    zp, zw = zscore(picture), zscore(word)
    both = np.minimum(zp, zw)
    best = both.argmax(axis=0)
    return (zp * zw).mean(axis=0), best, both[best, np.arange(both.shape[1])]


def null_scores(picture: np.ndarray, word: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> np.ndarray:
    """The score of every unit with the word rows permuted across concepts, `permutations` times (flat)."""
    zp, zw = zscore(picture), zscore(word)
    rng = np.random.default_rng(seed)
    return np.concatenate([(zp * zw[rng.permutation(len(zw))]).mean(axis=0) for _ in range(permutations)])


def summary(score: np.ndarray, null: np.ndarray, bins: int = HIST_BINS) -> dict:
    """The layer's figures: null 99th percentile, how many units are above it, histograms of both."""
    p99 = float(np.percentile(null, 99)) if len(null) else float("nan")
    lo, hi = float(min(score.min(), null.min())), float(max(score.max(), null.max()))
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    return {"p99": round(p99, 4), "above": int((score > p99).sum()), "units": int(len(score)),
            "edges": [round(float(e), 4) for e in edges],
            "counts": np.histogram(score, edges)[0].tolist(),
            "null_share": (np.histogram(null, edges)[0] / max(1, len(null)) * len(score)).round(2).tolist()}


def score_profile(profile: Profile, permutations: int = PERMUTATIONS) -> dict:
    score, best, peak = multimodality(profile.picture, profile.word)
    null = null_scores(profile.picture, profile.word, permutations)
    return {"score": score, "best": best, "peak": peak, "summary": summary(score, null)}


# -- which images show which concept ---------------------------------------------------------------

TOKEN = re.compile(r"[^\W\d_]+")


def caption_words(caption: str, stop: frozenset[str]) -> set[str]:
    return {t for t in TOKEN.findall(caption.lower()) if len(t) > 2 and t not in stop}


def groups_from_captions(captions: list[str], vocabulary: set[str] | None = None, min_images: int = MIN_IMAGES,
                         most: int = MAX_CONCEPTS) -> dict[str, np.ndarray]:
    """{concept: row indices} for the content words of the captions (the `most` most frequent with at least
    `min_images` images; only words of `vocabulary` when given)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    stop = frozenset(ENGLISH_STOP_WORDS) | STOCK_WORDS
    rows: dict[str, list[int]] = defaultdict(list)
    for i, caption in enumerate(captions):
        for word in caption_words(caption, stop):
            if vocabulary is None or word in vocabulary:
                rows[word].append(i)
    return _keep(rows, min_images, most)


def groups_from_folders(sources: list[str], min_images: int = MIN_IMAGES, most: int = MAX_CONCEPTS) -> dict:
    """{class name: row indices} for a folder-per-class corpus (the folder just above each image)."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, source in enumerate(sources):
        parts = source.replace("\\", "/").split("/")
        if len(parts) > 1:
            rows[parts[-2].replace("_", " ").strip().lower()].append(i)
    return _keep(rows, min_images, most) if len(rows) > 1 else {}


def groups_from_nearest(nearest: np.ndarray, names: list[str], min_images: int = MIN_IMAGES,
                        most: int = MAX_CONCEPTS) -> dict[str, np.ndarray]:
    """{concept: rows the model puts nearest that concept's text} from each row's nearest concept (index)."""
    rows = {names[c]: np.flatnonzero(nearest == c).tolist() for c in np.unique(nearest)}
    return _keep(rows, min_images, most)


def _keep(rows: dict[str, list[int]], min_images: int, most: int) -> dict[str, np.ndarray]:
    kept = sorted((c for c, r in rows.items() if len(r) >= min_images), key=lambda c: (-len(rows[c]), c))[:most]
    return {c: np.asarray(rows[c], dtype=np.int64) for c in sorted(kept)}


def picture_means(matrix, groups: dict[str, np.ndarray]) -> np.ndarray:
    """(concepts × units) mean matrix row over each concept's images, in one sequential scan."""
    from scipy.sparse import csr_matrix

    names = list(groups)
    cols = np.concatenate([groups[c] for c in names]) if names else np.zeros(0, np.int64)
    concept = np.repeat(np.arange(len(names)), [len(groups[c]) for c in names])
    weights = np.concatenate([np.full(len(groups[c]), 1.0 / len(groups[c])) for c in names]) if names else cols
    assign = csr_matrix((weights, (concept, cols)), shape=(len(names), matrix.rows))
    out = np.zeros((len(names), matrix.units))
    for start, block in matrix.blocks():
        out += assign[:, start:start + len(block)] @ block
    return out.astype(np.float32)


# -- the stage -------------------------------------------------------------------------------------

CONCEPT_SETS = ("auto", "captions", "folders", "words", "imagenet")


def concept_groups(store, loaded, matrix, concept_set: str, min_images: int = MIN_IMAGES,
                   most: int = MAX_CONCEPTS,
                   exclude: frozenset[str] = frozenset(),
                   captions: dict[str, str] | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """(the set used, its groups) for the matrix's corpus; "auto" = class folders if any, else captions.
    Rows whose corpus source is in `exclude` show no concept (e.g. the demo's rendered words: as pictures
    they would make every reading unit look multimodal). `captions` ({source: caption}) replaces the
    listing's captions (the demo's folder corpus keeps them in its manifest)."""
    from worker.compute.corpus import entries_at

    if concept_set not in CONCEPT_SETS:
        raise ValueError(f"--concepts must be one of {', '.join(CONCEPT_SETS)}, got {concept_set!r}")
    if concept_set == "imagenet":
        from worker.compute.image_text import imagenet_names, nearest_concepts

        names = imagenet_names()
        return concept_set, groups_from_nearest(nearest_concepts(store, loaded, matrix, names), names, min_images,
                                                most)
    entries = entries_at(matrix.corpus, matrix.entries.tolist())
    order = [None if e is None or e.source in exclude else e for e in (entries.get(int(x)) for x in matrix.entries)]
    if concept_set in ("auto", "folders"):
        groups = groups_from_folders([e.source if e else "" for e in order], min_images, most)
        if groups or concept_set == "folders":
            return "folders", groups
    vocabulary = None
    if concept_set == "words":
        from worker.compute.text_scores import common_words

        vocabulary = set(common_words())
    captions = [(captions or {}).get(e.source, e.caption) if e else "" for e in order]
    return ("words" if vocabulary else "captions"), groups_from_captions(captions, vocabulary, min_images, most)


def build_profile(loaded, matrix, layer: str, groups: dict[str, np.ndarray], device: str = "cpu") -> Profile:
    """The three modalities of `groups`' concepts at `layer` (the model renders and embeds the names)."""
    from worker.compute.layers import layer_spec
    from worker.compute.readout import readout_matrix, text_attribution
    from worker.compute.text_scores import channels_last, default_plan, layer_reader, score_texts

    concepts = list(groups)
    picture = picture_means(matrix, groups)
    with channels_last(loaded):
        pre, post = score_texts(layer_reader(loaded, layer), concepts, default_plan(loaded), loaded.mean,
                                loaded.std, device=device)
    word = pre if matrix.meta[0].get("signal") == "pre-relu" else post
    readout = None
    if layer == layer_spec(loaded).name:
        readout = text_attribution(loaded, concepts, readout_matrix(loaded)).astype(np.float32)
    return Profile(concepts, picture, word, readout, [len(groups[c]) for c in concepts])


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def write_profile(store, model_name: str, layer: str, profile: Profile, scored: dict, meta: dict,
                  run_id: int | None) -> dict:
    """Files under artifacts/<model>/<layer>/modality-<hash>/ and the layer's `modality` Artifact row."""
    from worker.analyses.artifacts import put_artifact

    arrays = {"picture": profile.picture, "word": profile.word, "score": scored["score"].astype(np.float32),
              "best": scored["best"].astype(np.int32), "peak": scored["peak"].astype(np.float32)}
    if profile.readout is not None:
        arrays["readout"] = profile.readout
    digest = hashlib.sha256(b"".join(npy(a) for a in arrays.values())).hexdigest()[:16]
    base = f"artifacts/{model_name}/{layer}/{ARTIFACT}-{digest}"
    paths = {k: store.cache.write(f"{base}/{k}.npy", npy(a)) for k, a in arrays.items()}
    paths["concepts"] = store.cache.write(f"{base}/concepts.json", json.dumps(
        {"concepts": profile.concepts, "n_images": profile.n_images}).encode())
    modalities = [k for k in ("picture", "word", "readout") if k in paths]
    meta = {**meta, "paths": paths, "summary": scored["summary"], "definition": DEFINITION, "null": NULL,
            "n_concepts": len(profile.concepts), "modalities": modalities}
    put_artifact(store, model_name, layer, ARTIFACT, paths["score"], meta, run_id)
    return meta


def plan_modality(store, loaded, model_name: str, layer: str | None, concept_set: str, min_images: int, most: int,
                  permutations: int, exclude: frozenset[str], captions: dict[str, str] | None = None) -> tuple:
    """(the layer's matrix, its concept groups, the run's settings), or ValueError when under two concepts."""
    from worker.analyses.activations import stored_matrix
    from worker.compute.layers import layer_spec

    spec = layer_spec(loaded, layer)
    matrix = stored_matrix(store, model_name, spec.name)
    used, groups = concept_groups(store, loaded, matrix, concept_set, min_images, most, exclude, captions)
    if len(groups) < 2:
        raise ValueError(f"the {used} concept set of {matrix.corpus} has {len(groups)} concept(s) with at least "
                         f"{min_images} images; a profile needs two or more (try --concepts captions|folders|imagenet)")
    settings = {"layer": spec.name, "concepts": used, "min_images": min_images, "most": most,
                "permutations": permutations, "rows": matrix.rows, "excluded_sources": len(exclude)}
    return matrix, groups, settings


def profile_and_scores(loaded, matrix, groups: dict[str, np.ndarray], settings: dict, device: str) -> dict:
    """What `write_modality` stores: the profile (a scan of the matrix) and its scores with the null."""
    profile = build_profile(loaded, matrix, settings["layer"], groups, device)
    return {"layer": settings["layer"], "settings": settings, "profile": profile,
            "scored": score_profile(profile, settings["permutations"])}


def compute_modality(store, loaded, model_name: str, layer: str | None = None, concept_set: str = "auto",
                     min_images: int = MIN_IMAGES, most: int = MAX_CONCEPTS, permutations: int = PERMUTATIONS,
                     device: str = "cpu", exclude: frozenset[str] = frozenset(),
                     captions: dict[str, str] | None = None) -> dict:
    """Profiles and scores of every unit of `layer` over a concept set, from the matrix; writes nothing."""
    matrix, groups, settings = plan_modality(store, loaded, model_name, layer, concept_set, min_images, most,
                                             permutations, exclude, captions)
    return profile_and_scores(loaded, matrix, groups, settings, device)


def write_modality(store, model_name: str, computed: dict, run_id: int | None) -> dict:
    """Store `compute_modality`'s profile and scores (files and the layer's artifact); the layer's report."""
    settings = computed["settings"]
    meta = write_profile(store, model_name, computed["layer"], computed["profile"], computed["scored"],
                         {"concept_set": settings["concepts"], **settings}, run_id)
    return {"concepts": len(computed["profile"].concepts), **{k: meta["summary"][k] for k in ("p99", "above", "units")}}
