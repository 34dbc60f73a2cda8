"""The rendered-words stage: every neuron's response to the 10,000 most common English words, drawn as images
(scored by `worker.text_scores`), written to the store.

Two matrices come out, words x units: post-ReLU (the layer's output, used for the top words and the
image-based word embedding) and pre-ReLU (ResNets only; the most negative words come from it, as the
most negative dataset examples do). The writes (`write_word_scores`) are separate from the
compute; `run_words` resumes from per-chunk checkpoints in the cache.
"""
import hashlib
import io
import json
import shutil
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, insert, select
from tqdm import tqdm

from app.db import Artifact, Layer, Model, Unit, Word, WordScore
from worker.layers import layer_spec
from worker.models import LoadedModel
from worker.render_text import RenderPlan
from worker.store import Store
from worker.text_scores import REDUCTION, Reader, channels_last, common_words, default_plan, layer_reader, score_texts

STAGE = "words"
TOP, BOTTOM = 50, 20


def model_fingerprint(loaded: LoadedModel) -> str:
    """A hash of the image tower's weights, so checkpoints of another model or training run never mix,
    and of its precision unless fp32 (so results computed before precision was recorded keep theirs)."""
    h = hashlib.sha1(loaded.arch.encode())
    if loaded.precision != "fp32":
        h.update(f"precision={loaded.precision}".encode())
    for name, p in sorted(loaded.visual.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def settings_hash(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@dataclass
class Checkpoints:
    """Per-chunk results of one scoring job in the cache, so a killed run resumes where it stopped."""

    store: Store
    folder: str  # cache-relative

    def path(self, i: int) -> str:
        return f"{self.folder}/chunk-{i:05d}.npz"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        file = self.store.cache.resolve(self.path(i))
        if file is None:
            return None
        with np.load(file) as z:
            return z["pre"], z["post"]

    def save(self, i: int, pre: np.ndarray, post: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, pre=pre, post=post)
        self.store.cache.write(self.path(i), buf.getvalue())

    def clear(self) -> None:
        shutil.rmtree(self.store.cache.root / self.folder, ignore_errors=True)


def score_resumable(store: Store, job: str, read: Reader, texts: list[str], plan: RenderPlan, mean, std,
                    chunk_size: int = 512, batch_size: int = 256, device="cpu",
                    desc: str = "words") -> tuple[np.ndarray, np.ndarray, dict]:
    """`score_texts` in chunks checkpointed under work/<job>/; returns (pre, post, report)."""
    ckpt = Checkpoints(store, f"work/{job}")
    pres, posts, resumed = [], [], 0
    starts = list(range(0, len(texts), chunk_size))
    with tqdm(total=len(texts), desc=desc, unit="word", dynamic_ncols=True) as bar:
        for i, start in enumerate(starts):
            done = ckpt.load(i)
            if done is None:
                pre, post = score_texts(read, texts[start:start + chunk_size], plan, mean, std,
                                        batch_size, device, bar)
                ckpt.save(i, pre, post)
            else:
                pre, post = done
                resumed += 1
                bar.update(len(pre))
            pres.append(pre)
            posts.append(post)
    report = {"chunks": len(starts), "chunks_resumed": resumed, "images": len(texts) * plan.n_variants}
    return np.concatenate(pres), np.concatenate(posts), report


def ensure_model(store: Store, loaded: LoadedModel, model_name: str) -> None:
    """Register the model (and its layers' unit rows) under `model_name` if the store lacks it."""
    from worker.layers import catalogue
    from worker.store import register_model

    with store.sessions.begin() as session:
        if session.scalar(select(Model).where(Model.name == model_name)) is None:
            register_model(session, model_name, loaded.arch, loaded.weights, loaded.image_size, catalogue(loaded),
                           load=loaded.record())


def layer_units(session, model_name: str, layer: str) -> tuple[Model, Layer, list[Unit]]:
    model = session.scalar(select(Model).where(Model.name == model_name))
    la = next((x for x in model.layers if x.name == layer), None)
    if la is None:
        raise ValueError(f"model {model_name} has no layer {layer!r} in the store")
    units = session.scalars(select(Unit).where(Unit.layer_id == la.id).order_by(Unit.index)).all()
    return model, la, list(units)


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
    from app.unit_text import refresh_unit_text

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
            if rows:
                session.execute(insert(WordScore), rows)
            for uid, _ in batch:
                refresh_unit_text(session, uid)
            written += len(rows)
    return written


def put_artifact(store: Store, model_name: str, layer: str, name: str, path: str, meta: dict,
                 run_id: int | None) -> None:
    with store.sessions.begin() as session:
        model = session.scalar(select(Model).where(Model.name == model_name))
        row = session.scalar(select(Artifact).where(Artifact.model_id == model.id, Artifact.layer == layer,
                                                    Artifact.name == name))
        if row is None:
            row = Artifact(model_id=model.id, layer=layer, name=name, path=path)
            session.add(row)
        row.path, row.meta, row.run_id = path, meta, run_id


def write_matrix(store: Store, model_name: str, layer: str, name: str, texts: list[str], matrices: dict,
                 meta: dict, run_id: int | None) -> dict:
    """Save texts (.json) and matrices (.npy) under artifacts/<model>/<layer>/ and point an Artifact row at them.
    File names carry the settings hash, so a server holding the old matrix in memory never reads half a file."""
    base = f"artifacts/{model_name}/{layer}/{name}-{meta['hash']}"
    paths = {"texts": store.cache.write(f"{base}.json", json.dumps(texts).encode())}
    for key, array in matrices.items():
        paths[key] = store.cache.write(f"{base}.{key}.npy", npy_bytes(array.astype(np.float32)))
    meta = {**meta, "paths": paths, "n_texts": len(texts)}
    put_artifact(store, model_name, layer, name, paths["post"], meta, run_id)
    return meta


def artifact(store: Store, model_name: str, layer: str, name: str) -> Artifact | None:
    with store.sessions() as session:
        model = session.scalar(select(Model).where(Model.name == model_name))
        if model is None:
            return None
        return session.scalar(select(Artifact).where(Artifact.model_id == model.id, Artifact.layer == layer,
                                                     Artifact.name == name))


def load_matrix(store: Store, meta: dict, key: str = "post") -> np.ndarray:
    return np.load(store.cache.resolve(meta["paths"][key]))


def run_words(store: Store, loaded: LoadedModel, model_name: str, layer: str | None = None,
              words: list[str] | None = None, plan: RenderPlan | None = None, chunk_size: int = 512,
              batch_size: int = 256, device: str = "cpu", force: bool = False) -> dict:
    """The words stage: score every word for every unit of the layer, resumably, and write the store."""
    from worker.store import recorded_run

    spec = layer_spec(loaded, layer)
    words = words if words is not None else common_words()
    plan = plan or default_plan(loaded)
    settings = {"stage": STAGE, "layer": spec.name, "plan": plan.describe(), "reduction": REDUCTION,
                "texts": hashlib.sha1("\n".join(words).encode()).hexdigest(), "model": model_fingerprint(loaded),
                "top": TOP, "bottom": BOTTOM}
    digest = settings_hash(settings)
    ensure_model(store, loaded, model_name)
    done = artifact(store, model_name, spec.name, "words")
    if done is not None and done.meta.get("hash") == digest and not force:
        return {"skipped": "up to date", "hash": digest}
    with channels_last(loaded), recorded_run(store, STAGE, model_name, settings, layer=spec.name) as report:
        job = f"words/{model_name}/{spec.name}/{digest}"
        pre, post, counts = score_resumable(store, job, layer_reader(loaded, spec.name), words, plan,
                                            loaded.mean, loaded.std, chunk_size, batch_size, device)
        report.update(counts, words=len(words), units=int(post.shape[1]), hash=digest)
        report["rows"] = write_word_scores(store, model_name, spec.name, words, pre, post, report["run_id"])
        # the artifact goes last: its hash marks the stage complete for the next run
        write_matrix(store, model_name, spec.name, "words", words, {"post": post, "pre": pre},
                     {"hash": digest, "reduction": REDUCTION, "plan": settings["plan"]}, report["run_id"])
        Checkpoints(store, f"work/{job}").clear()
    return report
