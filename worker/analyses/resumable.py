"""Texts scored in chunks, each chunk checkpointed in the cache, so a killed scoring job (the words stage, the
maps stage's place names) resumes at the first chunk it had not finished."""
import io
import shutil
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from store.writes import Store
from worker.compute.render_text import RenderPlan
from worker.compute.text_scores import Reader, score_texts


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
