"""Self-labels without captions: each unit's best concept by the model's own text tower against the
activation matrix (CLIP-Dissect, Oikarinen & Weng 2023: soft-WPMI), with a faithfulness score measured on
images the label was not chosen on; human labels are scored the same way.

- Image–concept probabilities: p(c | x) = softmax over the vocabulary of a × the cosine of the image
  embedding and the concept's text embedding (`--template`, default the bare concept), a = 10 as in
  CLIP-Dissect: soft on purpose (with CLIP's logit scale, ~100, one image of a concept among the top
  ones would already make p(c | D_u) ≈ 1 and the rarest concept would win).
  Image embeddings are the model's own (`image_embeddings`, one pass, cached beside the matrix).
- Split: a row is held out when its content hash is 0 mod 5 (20 %, the same rows on every run).
- soft-WPMI of concept c for unit u over the fitting rows: D_u = the unit's top `top` (28) rows, each a
  member with weight w_j falling linearly from 0.998 to 0.97 by rank (CLIP-Dissect's defaults);
  log p(c | D_u) = log(1 - Π_j (1 - w_j p(c | x_j))) and the score is log p(c | D_u) - λ log p(c), with
  p(c) the mean over the fitting rows (λ = 1): concepts common to the unit's top images and rare elsewhere.
- Faithfulness: the AUC, over the held-out rows, of the unit's activation at telling the concept's images
  from the rest, where the concept's images are the held-out rows whose zero-shot top-1 over the vocabulary
  (plus the label's own text, for a label not in it) is the concept. 0.5 = chance, 1 = the unit's
  activation ranks every one of them above every other image. Undefined (no score) when no held-out image
  is the concept's.

The label is stored as a new "auto" label version (author "selflabels", only when its text changed) with a
`label_scores` row (method "soft-wpmi", the AUC, the runner-up concepts); every current human label gets a
`label_scores` row (method "heldout-auc"). `worker suggest` writes the same "auto" history: the later run's
label is the current one.
"""
from pathlib import Path

import numpy as np
from sqlalchemy import select

from worker.compute.image_text import image_embeddings, imagenet_names

HELDOUT = 5  # rows with hash % HELDOUT == 0 are held out
MAX_HELDOUT = 20_000  # held-out rows scored (the first by row order)
TOP = 28  # the unit's top rows that form D_u (fewer in a small corpus: 5 % of the fitting rows, at least 5)
LAMBDA = 1.0
SOFTNESS = 10.0  # a in p(c | x) = softmax(a · cosine)
WEIGHTS = (0.998, 0.97)  # p(x in D_u) of the first and the last of the top rows
COMMON_WORDS = 2000  # common words added to ImageNet's classes in the default vocabulary
STAGE = "selflabels"


def vocabulary(name: str) -> list[str]:
    """default (ImageNet classes + the most common words) | imagenet | words | a file, one concept a line."""
    from worker.compute.text_scores import common_words

    if name == "imagenet":
        return imagenet_names()
    if name == "words":
        return common_words()
    if name == "default":
        seen = dict.fromkeys(imagenet_names())
        seen.update(dict.fromkeys(w for w in common_words(COMMON_WORDS * 2) if len(w) > 2))
        return list(seen)[:len(imagenet_names()) + COMMON_WORDS]
    path = Path(name).expanduser()
    if not path.is_file():
        raise ValueError(f"--vocabulary {name!r} is neither default, imagenet, words nor a file")
    words = list(dict.fromkeys(w.strip() for w in path.read_text().splitlines() if w.strip()))
    if len(words) < 2:
        raise ValueError(f"{path} holds {len(words)} concept(s); a vocabulary needs two or more")
    return words


# -- pure compute ----------------------------------------------------------------------------------

def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def soft_wpmi(acts: np.ndarray, probs: np.ndarray, top: int = TOP, lam: float = LAMBDA) -> np.ndarray:
    """(units × concepts) soft-WPMI from fitting rows' activations (rows × units) and p(c | x) (rows × concepts)."""
    top = max(1, min(top, len(acts)))
    weights = np.linspace(*WEIGHTS, top)[:, None]
    log_prior = np.log(probs.mean(axis=0) + 1e-12)
    out = np.empty((acts.shape[1], probs.shape[1]))
    order = np.argsort(-acts, axis=0, kind="stable")[:top]  # (top, units)
    for u in range(acts.shape[1]):
        miss = np.log1p(-np.clip(weights * probs[order[:, u]], 0, 1 - 1e-9)).sum(axis=0)
        out[u] = np.log(-np.expm1(miss) + 1e-12) - lam * log_prior
    return out


def auc(values: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """AUC per column of values (rows × units) for one boolean row mask (ties count half); NaN if one class is empty."""
    from scipy.stats import rankdata

    n_pos, n = int(positives.sum()), len(positives)
    if n_pos == 0 or n_pos == n:
        return np.full(values.shape[1], np.nan)
    ranks = rankdata(values, axis=0)
    return (ranks[positives].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))


def split(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fitting rows, held-out rows) by content hash."""
    held = hashes % HELDOUT == 0
    return np.flatnonzero(~held), np.flatnonzero(held)[:MAX_HELDOUT]


def label_units(acts: np.ndarray, sims: np.ndarray, hashes: np.ndarray, scale: float = SOFTNESS,
                top: int = TOP) -> dict:
    """Every unit's best concept (index), its soft-WPMI, runners-up and held-out AUC, from the matrix
    activations (rows × units) and the image–concept cosines (rows × concepts)."""
    fit, held = split(hashes)
    if len(fit) < 2 or len(held) < 2:
        raise ValueError(f"{len(acts)} images are too few to hold some out (need at least 2 fitting, 2 held out)")
    top = min(top, max(5, len(fit) // 20))
    wpmi = soft_wpmi(acts[fit], softmax(scale * sims[fit]), top)
    ranked = np.argsort(-wpmi, axis=1, kind="stable")[:, :3]
    zero_shot = sims[held].argmax(axis=1)
    best = ranked[:, 0]
    scores = np.full(acts.shape[1], np.nan)
    for c in np.unique(best):
        units = np.flatnonzero(best == c)
        scores[units] = auc(acts[np.ix_(held, units)], zero_shot == c)
    return {"best": best, "runners_up": ranked, "wpmi": np.take_along_axis(wpmi, ranked, axis=1), "auc": scores,
            "heldout": len(held), "top": top, "positives": np.bincount(zero_shot, minlength=sims.shape[1])}


def text_auc(acts_held: np.ndarray, sims_held: np.ndarray, text_sims: np.ndarray) -> np.ndarray:
    """AUC per (text, its unit) of a label text not (necessarily) in the vocabulary: its images are the held-out
    rows where it beats every vocabulary concept. acts_held (rows × n) is each text's unit's column."""
    best_vocab = sims_held.max(axis=1)
    return np.array([auc(acts_held[:, [i]], text_sims[:, i] > best_vocab)[0] for i in range(text_sims.shape[1])])


# -- model-side inputs ---------------------------------------------------------------------------

# -- the stage -------------------------------------------------------------------------------------

def run_selflabels(store, loaded, model_name: str, layer: str | None = None, vocab: str = "default",
                   template: str = "{}") -> dict:
    """Label every unit of `layer` from the matrix and the text tower, score the labels, write them."""
    from store.writes import recorded_run
    from worker.analyses.activations import stored_matrix
    from worker.compute.layers import layer_spec
    from worker.compute.readout import embed_texts

    spec = layer_spec(loaded, layer)
    matrix = stored_matrix(store, model_name, spec.name)
    names = vocabulary(vocab)
    settings = {"layer": spec.name, "vocabulary": vocab, "concepts": len(names), "template": template,
                "rows": matrix.rows, "heldout": f"hash % {HELDOUT} == 0", "top": TOP, "lambda": LAMBDA}
    with recorded_run(store, STAGE, model_name, settings, layer=spec.name) as report:
        acts, hashes = matrix.dense(), matrix.hashes
        emb = image_embeddings(store, loaded, matrix)
        sims = emb @ embed_texts(loaded, [template.format(n) for n in names]).T
        result = label_units(acts, sims, hashes)
        report["labels_changed"] = write_labels(store, model_name, spec.name, names, result, report["run_id"])
        humans = current_human_labels(store, model_name, spec.name)
        _, held = split(hashes)
        if humans:
            text_sims = emb[held] @ embed_texts(loaded, [template.format(t) for _, _, t in humans]).T
            scores = text_auc(acts[np.ix_(held, [u for _, u, _ in humans])], sims[held], text_sims)
            write_scores(store, [(lid, "heldout-auc", s, {"heldout": len(held)}) for (lid, _, _), s in
                                 zip(humans, scores, strict=True)], report["run_id"])
        finite = result["auc"][np.isfinite(result["auc"])]
        report.update(units=int(acts.shape[1]), human_scored=len(humans), heldout=result["heldout"],
                      median_auc=round(float(np.median(finite)), 4) if len(finite) else None)  # JSON: no NaN
    return report


def write_labels(store, model_name: str, layer: str, names: list[str], result: dict, run_id: int) -> int:
    """Each unit's best concept as an "auto" label version (when it changed) with its score; new versions."""
    from app.labelling import append_auto_label, current_label
    from app.unit_text import refresh_unit_text
    from store.schema import LabelScore

    ids = unit_ids(store, model_name, layer)
    changed = 0
    with store.sessions.begin() as session:
        for unit, uid in ids.items():
            concept = names[int(result["best"][unit])]
            label = append_auto_label(session, uid, concept, STAGE)
            changed += label is not None
            label = label or current_label(session, uid, "auto")
            detail = {"concepts": [names[int(c)] for c in result["runners_up"][unit]],
                      "wpmi": [round(float(w), 4) for w in result["wpmi"][unit]], "heldout": result["heldout"],
                      "positives": int(result["positives"][int(result["best"][unit])]), "top": result["top"]}
            session.merge(LabelScore(label_id=label.id, method="soft-wpmi", score=finite_or(result["auc"][unit]),
                                     detail=detail, run_id=run_id))
            refresh_unit_text(session, uid)
    return changed


def finite_or(value: float, default: float = float("nan")) -> float | None:
    return float(value) if np.isfinite(value) else (None if np.isnan(default) else default)


def write_scores(store, rows: list[tuple[int, str, float, dict]], run_id: int) -> None:
    from store.schema import LabelScore

    with store.sessions.begin() as session:
        for label_id, method, score, detail in rows:
            session.merge(LabelScore(label_id=label_id, method=method, score=finite_or(score), detail=detail,
                                     run_id=run_id))


def unit_ids(store, model_name: str, layer: str) -> dict[int, int]:
    from store.schema import Layer, Model, Unit

    with store.sessions() as session:
        return dict(session.execute(
            select(Unit.index, Unit.id).join(Layer, Unit.layer_id == Layer.id).join(Model, Layer.model_id == Model.id)
            .where(Model.name == model_name, Layer.name == layer)).all())


def current_human_labels(store, model_name: str, layer: str) -> list[tuple[int, int, str]]:
    """(label id, unit index, text) of every unit's current human label."""
    from app.labelling import current_label

    out = []
    with store.sessions() as session:
        for unit, uid in unit_ids(store, model_name, layer).items():
            label = current_label(session, uid, "human")
            if label is not None:
                out.append((label.id, unit, label.text))
    return out
