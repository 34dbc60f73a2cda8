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
BLOCK_VALUES = 1 << 22  # values per block of a scan (16 MB as float32; the keys of `top_rows` take 2x more)
AUC_UNITS = 256  # units ranked at a time for the AUC


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


def wpmi_of(top_probs: np.ndarray, log_prior: np.ndarray, lam: float = LAMBDA) -> np.ndarray:
    """(units × concepts) soft-WPMI from p(c | x) of each unit's top rows, best first (top × units × concepts)."""
    weights = np.linspace(*WEIGHTS, len(top_probs))[:, None, None]
    miss = np.log1p(-np.clip(weights * top_probs, 0, 1 - 1e-9)).sum(axis=0)
    return np.log(-np.expm1(miss) + 1e-12) - lam * log_prior


def soft_wpmi(acts: np.ndarray, probs: np.ndarray, top: int = TOP, lam: float = LAMBDA) -> np.ndarray:
    """(units × concepts) soft-WPMI from fitting rows' activations (rows × units) and p(c | x) (rows × concepts)."""
    top = max(1, min(top, len(acts)))
    order = np.argsort(-acts, axis=0, kind="stable")[:top]  # (top, units)
    return wpmi_of(probs[order], np.log(probs.mean(axis=0, dtype=np.float64) + 1e-12), lam)


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


def checked_split(hashes: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(fitting rows, held-out rows, the size of D_u) or ValueError when too few rows are left to hold some out."""
    fit, held = split(hashes)
    if len(fit) < 2 or len(held) < 2:
        raise ValueError(f"{len(hashes)} images are too few to hold some out (need at least 2 fitting, 2 held out)")
    return fit, held, max(1, min(top, max(5, len(fit) // 20), len(fit)))


def label_units(acts: np.ndarray, sims: np.ndarray, hashes: np.ndarray, scale: float = SOFTNESS,
                top: int = TOP) -> dict:
    """Every unit's best concept (index), its soft-WPMI, runners-up and held-out AUC, from the matrix
    activations (rows × units) and the image–concept cosines (rows × concepts), all in memory: the statement
    of what `label_matrix` computes over a matrix of any size."""
    fit, held, top = checked_split(hashes, top)
    wpmi = soft_wpmi(acts[fit], softmax(scale * sims[fit]), top)
    ranked = np.argsort(-wpmi, axis=1, kind="stable")[:, :3]
    return scored_labels(ranked, np.take_along_axis(wpmi, ranked, axis=1), acts[held], sims[held].argmax(axis=1),
                         sims.shape[1], top)


def scored_labels(ranked: np.ndarray, wpmi: np.ndarray, held_acts: np.ndarray, zero_shot: np.ndarray,
                  concepts: int, top: int) -> dict:
    """The result of `label_units` / `label_matrix` from each unit's three best concepts and the held-out rows."""
    best = ranked[:, 0]
    scores = np.full(len(best), np.nan)
    for c in np.unique(best):
        units = np.flatnonzero(best == c)
        for i in range(0, len(units), AUC_UNITS):  # bounded: rankdata holds float64 ranks of the columns it gets
            chunk = units[i:i + AUC_UNITS]
            scores[chunk] = auc(np.asarray(held_acts[:, chunk], dtype=np.float32), zero_shot == c)
    return {"best": best, "runners_up": ranked, "wpmi": wpmi, "auc": scores, "heldout": len(zero_shot), "top": top,
            "positives": np.bincount(zero_shot, minlength=concepts)}


def text_auc(acts_held: np.ndarray, best_vocab: np.ndarray, text_sims: np.ndarray) -> np.ndarray:
    """AUC per (text, its unit) of a label text not (necessarily) in the vocabulary: its images are the held-out
    rows where it beats every vocabulary concept (`best_vocab`: each row's highest vocabulary cosine).
    acts_held (rows × n) is each text's unit's column."""
    acts_held = np.asarray(acts_held, dtype=np.float32)
    return np.array([auc(acts_held[:, [i]], text_sims[:, i] > best_vocab)[0] for i in range(text_sims.shape[1])])


# -- the same over a matrix of any size, in blocks of rows ---------------------------------------------

def block_rows(width: int) -> int:
    """Rows per block so that a block holds about BLOCK_VALUES values."""
    return max(16, BLOCK_VALUES // max(1, width))


def order_keys(block: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """int64 keys that sort like (value, then lower row first): value's order-preserving float32 bits high, the
    row's complement low. Distinct per row, so a partition picks exactly the rows a stable argsort would."""
    bits = (np.asarray(block, dtype=np.float32) + np.float32(0)).view(np.int32)  # + 0: -0.0 becomes 0.0
    ordered = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64)
    return (ordered << 32) | (np.int64(0xFFFFFFFF) - rows.astype(np.int64))[:, None]


def largest(keys: np.ndarray, k: int) -> np.ndarray:
    """The k largest keys per column (unordered)."""
    return keys if len(keys) <= k else np.partition(keys, len(keys) - k, axis=0)[len(keys) - k:]


def top_rows(matrix, fit: np.ndarray, top: int, block: int | None = None) -> np.ndarray:
    """(top × units) each unit's `top` highest fitting rows, best first, ties to the lower row (as a stable
    argsort of the whole column); one sequential scan holding a block and `top` keys per unit."""
    if matrix.rows >= 2**32:
        raise ValueError(f"{matrix.rows} rows: the ranking keys hold row numbers below 2**32")
    fitting = np.zeros(matrix.rows, dtype=bool)
    fitting[fit] = True
    best = np.zeros((0, matrix.units), dtype=np.int64)
    for start, values in matrix.blocks(block or block_rows(matrix.units)):
        mask = fitting[start:start + len(values)]
        keys = order_keys(values[mask], start + np.flatnonzero(mask))
        best = largest(np.concatenate([best, largest(keys, top)]), top)
    best = np.sort(best, axis=0)[::-1]
    return np.int64(0xFFFFFFFF) - (best & np.int64(0xFFFFFFFF))


def blocked(embeddings: np.ndarray, rows: np.ndarray, texts: np.ndarray, block: int):
    """(rows of a block, their image–concept cosines) over `rows` of the embeddings, in blocks."""
    for i in range(0, len(rows), block):
        chunk = rows[i:i + block]
        yield chunk, np.asarray(embeddings[chunk]) @ texts.T


def concept_prior(embeddings: np.ndarray, texts: np.ndarray, fit: np.ndarray, scale: float,
                  block: int) -> np.ndarray:
    """log p(c): the mean over the fitting rows of p(c | x), accumulated in float64 block by block."""
    total = np.zeros(len(texts))
    for _, sims in blocked(embeddings, fit, texts, block):
        total += softmax(scale * sims).sum(axis=0, dtype=np.float64)
    return np.log(total / max(1, len(fit)) + 1e-12)


def best_concepts(embeddings: np.ndarray, texts: np.ndarray, rows: np.ndarray, log_prior: np.ndarray,
                  scale: float, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(units × 3 best concepts, their soft-WPMI) from each unit's top rows (`rows`, top × units), a block of
    units at a time: p(c | x) of their top rows only."""
    top, units = rows.shape
    ranked = np.empty((units, 3), dtype=np.int64)
    wpmi = np.empty((units, 3))
    step = max(1, block // max(1, top))
    for u in range(0, units, step):
        mine = rows[:, u:u + step]
        probs = softmax(scale * (np.asarray(embeddings[mine.ravel()]) @ texts.T)).reshape(*mine.shape, len(texts))
        scores = wpmi_of(probs, log_prior)
        ranked[u:u + step] = np.argsort(-scores, axis=1, kind="stable")[:, :3]
        wpmi[u:u + step] = np.take_along_axis(scores, ranked[u:u + step], axis=1)
    return ranked, wpmi


def held_out(embeddings: np.ndarray, texts: np.ndarray, held: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(each held-out row's zero-shot concept, its highest cosine)."""
    zero_shot, best = np.empty(len(held), dtype=np.int64), np.empty(len(held), dtype=np.float32)
    done = 0
    for chunk, sims in blocked(embeddings, held, texts, block):
        zero_shot[done:done + len(chunk)] = sims.argmax(axis=1)
        best[done:done + len(chunk)] = sims.max(axis=1)
        done += len(chunk)
    return zero_shot, best


def label_matrix(matrix, embeddings: np.ndarray, texts: np.ndarray, hashes: np.ndarray, scale: float = SOFTNESS,
                 top: int = TOP, block: int | None = None) -> dict:
    """`label_units` over an activation matrix (app.activations.ActivationMatrix) and the rows' image
    embeddings (rows × dim, e.g. memory-mapped) against the concepts' text embeddings (concepts × dim), never
    holding more than a block of rows, `top` rows per unit and the held-out rows (at most MAX_HELDOUT, fp16).
    Equal to `label_units` on the same inputs up to float rounding of p(c) (a float64 sum by blocks): every
    ranking, the top rows and the AUCs are the same computation on the same values."""
    fit, held, top = checked_split(hashes, top)
    rows = block or block_rows(max(matrix.units, len(texts)))
    log_prior = concept_prior(embeddings, texts, fit, scale, rows)
    ranked, wpmi = best_concepts(embeddings, texts, top_rows(matrix, fit, top, block), log_prior, scale, rows)
    zero_shot, _ = held_out(embeddings, texts, held, rows)
    return scored_labels(ranked, wpmi, matrix.take(held), zero_shot, len(texts), top)


# -- the stage -------------------------------------------------------------------------------------

def selflabels_settings(layer: str, vocab: str, concepts: int, template: str, rows: int) -> dict:
    return {"layer": layer, "vocabulary": vocab, "concepts": concepts, "template": template, "rows": rows,
            "heldout": f"hash % {HELDOUT} == 0", "top": TOP, "lambda": LAMBDA}


def compute_selflabels(store, loaded, model_name: str, layer: str | None = None, vocab: str = "default",
                       template: str = "{}") -> dict:
    """Every unit's label and score, and each current human label's score, from the matrix and the text tower
    (reads the store, writes nothing but the image-embedding cache): what `write_selflabels` stores."""
    from worker.analyses.activations import stored_matrix
    from worker.compute.layers import layer_spec
    from worker.compute.readout import embed_texts

    spec = layer_spec(loaded, layer)
    matrix = stored_matrix(store, model_name, spec.name)
    names = vocabulary(vocab)
    hashes = matrix.hashes
    emb = image_embeddings(store, loaded, matrix)
    texts = embed_texts(loaded, [template.format(n) for n in names])
    result = label_matrix(matrix, emb, texts, hashes)
    humans = current_human_labels(store, model_name, spec.name)
    human_scores = []
    if humans:
        _, held = split(hashes)
        _, best_vocab = held_out(emb, texts, held, block_rows(len(texts)))
        text_sims = np.asarray(emb[held]) @ embed_texts(loaded, [template.format(t) for _, _, t in humans]).T
        scores = text_auc(matrix.take(held)[:, [u for _, u, _ in humans]], best_vocab, text_sims)
        human_scores = [(lid, float(s)) for (lid, _, _), s in zip(humans, scores, strict=True)]
    return {"layer": spec.name, "names": names, "result": result, "human_scores": human_scores,
            "settings": selflabels_settings(spec.name, vocab, len(names), template, matrix.rows)}


def write_selflabels(store, model_name: str, computed: dict, run_id: int) -> dict:
    """Store `compute_selflabels`' labels and scores; the layer's report."""
    result = computed["result"]
    changed = write_labels(store, model_name, computed["layer"], computed["names"], result, run_id)
    write_scores(store, [(lid, "heldout-auc", s, {"heldout": result["heldout"]})
                         for lid, s in computed["human_scores"]], run_id)
    finite = result["auc"][np.isfinite(result["auc"])]
    return {"labels_changed": changed, "units": len(result["best"]), "human_scored": len(computed["human_scores"]),
            "heldout": result["heldout"],
            "median_auc": round(float(np.median(finite)), 4) if len(finite) else None}  # JSON: no NaN


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
