"""The model's own embeddings of what the concept stages compare: activation-matrix rows as images (cached
beside the matrix) and concept names as texts; shared by the modality and self-label stages."""
import hashlib

import numpy as np


def imagenet_names() -> list[str]:
    """ImageNet-1k class names as open_clip ships them (offline)."""
    import open_clip

    return list(open_clip.IMAGENET_CLASSNAMES)


def image_embeddings(store, loaded, matrix, batch: int = 64) -> np.ndarray:
    """The model's unit-length image embedding of every matrix row (rows × dim, float32), cached beside the
    matrix and memory-mapped (written batch by batch: a million rows never sit in memory)."""
    tag = hashlib.sha256(f"{loaded.arch}|{loaded.weights}".encode()).hexdigest()[:12]
    path = matrix.folder / f"embedding-{tag}-{matrix.rows}.npy"
    if not path.is_file():
        tmp = path.with_name(f".{path.name}.tmp.npy")
        write_embeddings(loaded, matrix, tmp, batch)
        tmp.replace(path)
    return np.load(path, mmap_mode="r")


def write_embeddings(loaded, matrix, path, batch: int) -> None:
    import torch

    from worker.compute.corpus import Skip, entries_at, open_entry

    entries = entries_at(matrix.corpus, matrix.entries.tolist())
    out = None
    with torch.inference_mode():
        for start in range(0, matrix.rows, batch):
            images = []
            for e in matrix.entries[start:start + batch]:
                try:
                    images.append(loaded.preprocess(open_entry(entries[int(e)])[1]))
                except (Skip, KeyError):
                    images.append(torch.zeros(3, loaded.image_size, loaded.image_size))  # gone since: a blank
            x = torch.stack(images).to(loaded.device)
            emb = loaded.model.encode_image(x, normalize=True).float().cpu().numpy()
            if out is None:
                out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(matrix.rows, emb.shape[1]))
            out[start:start + len(emb)] = emb
    if out is None:
        np.save(path, np.zeros((0, 1), np.float32))
    else:
        out.flush()
        del out


def nearest_concepts(store, loaded, matrix, names: list[str], template: str = "{}", block: int = 8192) -> np.ndarray:
    """Each row's concept (index into names) with the highest cosine of its image embedding and the concept's
    text, a block of rows at a time (rows × concepts never sits in memory)."""
    from worker.compute.readout import embed_texts

    emb = image_embeddings(store, loaded, matrix)
    texts = embed_texts(loaded, [template.format(n) for n in names])
    out = np.zeros(len(emb), dtype=np.int64)
    for i in range(0, len(emb), block):
        out[i:i + block] = (np.asarray(emb[i:i + block]) @ texts.T).argmax(axis=1)
    return out
