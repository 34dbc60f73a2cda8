"""The rendered-words stage: every neuron's response to the 10,000 most common English words, drawn as images
(scored by `worker.compute.text_scores`), written to the store.

Two matrices come out, words x units: post-ReLU (the layer's output, used for the top words and the
image-based word embedding) and pre-ReLU (ResNets only; the most negative words come from it, as the
most negative dataset examples do). The writes (`write_word_scores`) are separate from the
compute; `run_words` resumes from per-chunk checkpoints in the cache.
"""
import hashlib

import numpy as np
from sqlalchemy import delete, select
from tqdm import tqdm

from store.schema import Word, WordScore
from store.writes import Store, bulk_insert
from worker.analyses.artifacts import artifact, ensure_model, layer_units, write_matrix
from worker.analyses.resumable import Checkpoints, score_resumable
from worker.compute.layers import layer_spec
from worker.compute.models import LoadedModel
from worker.compute.render_text import RenderPlan
from worker.compute.text_scores import REDUCTION, channels_last, default_plan, layer_reader
from worker.data.word_lists import word_list
from worker.pipeline.contract import model_fingerprint, settings_hash

STAGE = "words"
TOP, BOTTOM = 50, 20


def word_ids(session, words: list[str]) -> dict[str, int]:
    """Word rows for every text (created with their frequency rank when missing)."""
    ids: dict[str, int] = {}
    for i in range(0, len(words), 500):
        part = words[i:i + 500]
        ids.update({t: i for t, i in session.execute(select(Word.text, Word.id).where(Word.text.in_(part)))})
    missing = [Word(text=w, rank=r) for r, w in enumerate(words) if w not in ids]
    if missing:
        session.add_all(missing)
        session.flush()
        ids.update({w.text: w.id for w in missing})
    return ids


def ranked(column: np.ndarray, k: int, descending: bool) -> np.ndarray:
    """Indices of the k largest (or smallest) values, best first; ties broken by word rank. Values equal to
    the other extreme are left out: a unit that never fires (post-ReLU all 0) has no top words."""
    order = np.argsort(-column if descending else column, kind="stable")[:k]
    floor = column.min() if descending else column.max()
    return order[column[order] != floor]


def top_and_bottom(pre: np.ndarray, post: np.ndarray, index: int, top: int, bottom: int):
    """[(sign, word index, score)] for one unit; a word never counts as both (the table's key forbids it)."""
    tops = ranked(post[:, index], top, descending=True)
    taken = set(tops.tolist())
    bottoms = [w for w in ranked(pre[:, index], bottom + len(taken), descending=False) if w not in taken][:bottom]
    return ([("top", int(w), float(post[w, index])) for w in tops]
            + [("bottom", int(w), float(pre[w, index])) for w in bottoms])


def write_word_scores(store: Store, model_name: str, layer: str, words: list[str], pre: np.ndarray,
                      post: np.ndarray, run_id: int | None, top: int = TOP, bottom: int = BOTTOM,
                      units_per_commit: int = 64) -> int:
    """Replace the layer's WordScore rows: top words by post-ReLU score, most negative by pre-ReLU score.
    Each batch of units is one transaction (a reader never sees a neuron half written)."""
    from app.unit_text import refresh_unit_texts

    with store.sessions.begin() as session:
        _, _, units = layer_units(session, model_name, layer)
        ids = word_ids(session, words)
        unit_ids = [(u.id, u.index) for u in units]
    written = 0
    for start in tqdm(range(0, len(unit_ids), units_per_commit), desc="word scores", unit="batch",
                      dynamic_ncols=True):
        batch = unit_ids[start:start + units_per_commit]
        with store.sessions.begin() as session:
            session.execute(delete(WordScore).where(WordScore.unit_id.in_([uid for uid, _ in batch])))
            rows = []
            for uid, index in batch:
                ranks = {"top": 0, "bottom": 0}
                for sign, w, score in top_and_bottom(pre, post, index, top, bottom):
                    rows.append({"unit_id": uid, "word_id": ids[words[w]], "score": score, "sign": sign,
                                 "rank": ranks[sign], "run_id": run_id})
                    ranks[sign] += 1
            bulk_insert(session, WordScore, rows)
            refresh_unit_texts(session, [uid for uid, _ in batch])
            written += len(rows)
    return written


def words_settings(loaded: LoadedModel, layer: str, words: list[str], plan: RenderPlan) -> dict:
    """Everything that decides a layer's word scores; its hash names the checkpoints and the matrix files."""
    return {"stage": STAGE, "layer": layer, "plan": plan.describe(), "reduction": REDUCTION,
            "texts": hashlib.sha1("\n".join(words).encode()).hexdigest(), "model": model_fingerprint(loaded),
            "top": TOP, "bottom": BOTTOM}


def write_words(store: Store, model_name: str, layer: str, words: list[str], pre: np.ndarray, post: np.ndarray,
                settings: dict, run_id: int | None) -> dict:
    """The word scores, then the matrices: the artifact goes last, its hash marks the layer complete."""
    digest = settings_hash(settings)
    rows = write_word_scores(store, model_name, layer, words, pre, post, run_id)
    write_matrix(store, model_name, layer, "words", words, {"post": post, "pre": pre},
                 {"hash": digest, "reduction": REDUCTION, "plan": settings["plan"]}, run_id)
    Checkpoints(store, f"work/{words_job(model_name, layer, digest)}").clear()
    return {"rows": rows, "words": len(words), "units": int(post.shape[1]), "hash": digest}


def words_job(model_name: str, layer: str, digest: str) -> str:
    return f"words/{model_name}/{layer}/{digest}"


def run_words(store: Store, loaded: LoadedModel, model_name: str, layer: str | None = None,
              words: list[str] | None = None, plan: RenderPlan | None = None, chunk_size: int = 512,
              batch_size: int = 256, device: str = "cpu", force: bool = False) -> dict:
    """The words stage for one layer, outside the pipeline: score every word for every unit, resumably, and
    write the store; skipped while the layer's matrix carries the same settings hash (unless `force`)."""
    from store.writes import recorded_run

    spec = layer_spec(loaded, layer)
    words = words if words is not None else word_list()
    plan = plan or default_plan(loaded)
    settings = words_settings(loaded, spec.name, words, plan)
    digest = settings_hash(settings)
    ensure_model(store, loaded, model_name)
    done = artifact(store, model_name, spec.name, "words")
    if done is not None and done.meta.get("hash") == digest and not force:
        return {"skipped": "up to date", "hash": digest}
    with channels_last(loaded), recorded_run(store, STAGE, model_name, settings, layer=spec.name) as report:
        pre, post, counts = score_resumable(store, words_job(model_name, spec.name, digest),
                                            layer_reader(loaded, spec.name), words, plan,
                                            loaded.mean, loaded.std, chunk_size, batch_size, device)
        report.update(counts)
        report.update(write_words(store, model_name, spec.name, words, pre, post, settings, report["run_id"]))
    return report
