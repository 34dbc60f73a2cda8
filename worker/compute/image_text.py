"""The model's own embeddings of what the concept stages compare: activation-matrix rows as images (cached
beside the matrix) and concept names as texts; shared by the modality and self-label stages."""
import hashlib

import numpy as np


def imagenet_names() -> list[str]:
    """ImageNet-1k class names as open_clip ships them (offline)."""
    import open_clip

    return list(open_clip.IMAGENET_CLASSNAMES)


def image_embeddings(store, loaded, matrix, batch: int = 64) -> np.ndarray:
    """The model's unit-length image embedding of every matrix row (rows × dim), cached beside the matrix."""
    import torch

    from worker.compute.corpus import Skip, entries_at, open_entry

    tag = hashlib.sha256(f"{loaded.arch}|{loaded.weights}".encode()).hexdigest()[:12]
    path = matrix.folder / f"embedding-{tag}-{matrix.rows}.npy"
    if path.is_file():
        return np.load(path)
    entries = entries_at(matrix.corpus, matrix.entries.tolist())
    out = []
    with torch.inference_mode():
        for start in range(0, matrix.rows, batch):
            images = []
            for e in matrix.entries[start:start + batch]:
                try:
                    images.append(loaded.preprocess(open_entry(entries[int(e)])[1]))
                except (Skip, KeyError):
                    images.append(torch.zeros(3, loaded.image_size, loaded.image_size))  # gone since: a blank
            x = torch.stack(images).to(loaded.device)
            out.append(loaded.model.encode_image(x, normalize=True).float().cpu().numpy())
    array = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)
    return array


def similarity(store, loaded, matrix, names: list[str], template: str = "{}") -> np.ndarray:
    """(rows × concepts) cosine of each row's image embedding with each concept's text embedding."""
    from worker.compute.readout import embed_texts

    return image_embeddings(store, loaded, matrix) @ embed_texts(loaded, [template.format(n) for n in names]).T
