"""Zero-shot classification with a model's own text tower: one prompt per label, cosine similarity."""
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image as PILImage

from worker.compute.models import LoadedModel

PHOTO_TEMPLATE = "a photo of a {}"


@dataclass
class Classifier:
    """Normalised text embeddings of one prompt per label; classifies preprocessed images."""

    labels: list[str]
    weights: torch.Tensor  # (labels, embed) unit rows
    scale: float

    def probs(self, loaded: LoadedModel, images: Sequence[PILImage.Image], batch: int = 64) -> torch.Tensor:
        """(images, labels) softmax probabilities at the model's logit scale."""
        out = []
        for i in range(0, len(images), batch):
            x = torch.stack([loaded.preprocess(im) for im in images[i:i + batch]]).to(loaded.device)
            with torch.no_grad():
                emb = loaded.model.encode_image(x, normalize=True)
            out.append((self.scale * emb @ self.weights.T).softmax(-1).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.labels))

    def top(self, probs_row: torch.Tensor, k: int = 5) -> list[dict]:
        vals, idx = probs_row.topk(min(k, len(self.labels)))
        return [{"label": self.labels[i], "p": round(float(v), 4)} for v, i in zip(vals, idx, strict=True)]


def classifier(loaded: LoadedModel, labels: Sequence[str], template: str = PHOTO_TEMPLATE,
               batch: int = 256) -> Classifier:
    """Zero-shot weights for `labels` from `template` (which holds one `{}`)."""
    if not labels:
        raise ValueError("zero-shot classification needs at least one label")
    rows = []
    for i in range(0, len(labels), batch):
        tokens = loaded.tokenizer([template.format(label) for label in labels[i:i + batch]]).to(loaded.device)
        with torch.no_grad():
            rows.append(loaded.model.encode_text(tokens, normalize=True))
    scale = getattr(loaded.model, "logit_scale", None)
    scale = float(scale.detach().exp()) if scale is not None else 100.0
    return Classifier(list(labels), torch.cat(rows), scale)
