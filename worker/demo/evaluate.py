"""How good the demo model is, on the probe corpus's held-out split and its penultimate layer.

- reading: the held-out font's renderings of the 1,000 most common words, 1,000-way zero-shot against
  the words themselves (the text tower embeds each word; the image goes to the nearest)
- flags: waved renderings of every flag (drawn from the SVGs; training only saw flat ones and emoji),
  zero-shot against "the flag of {country}" for every country
- multimodal neurons: a unit of the penultimate layer is multimodal when, of its top-9 non-text corpus
  images, at least 3 have a caption that shares a concept (a content word, plural folded) with its
  top-5 rendered words (scored as the rendered-words stage scores them)
- multimodal neurons by the modality score (worker/analyses/modality.py, the code the modality stage and the
  neuron pages use): over the caption concepts of the non-text images (at least 3 images each), the
  correlation of a unit's picture and rendered-name responses, counted above the 99th percentile of its
  permuted-labels null. Both are reported; the first is the figure the README's tables give.
"""
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from worker.compute.models import LoadedModel
from worker.demo.corpus import read_manifest
from worker.demo.items import STOP_WORDS, TEMPLATE_WORDS, TEXT_KINDS

TOP_IMAGES, TOP_WORDS, MIN_SHARED = 9, 5, 3
NON_TEXT_EXCLUDED = (*TEXT_KINDS, "logo")  # logos are often wordmarks: reading, not multimodality


@dataclass
class Unit:
    unit: int
    shared: int  # how many of the top images share a concept with the top words
    words: list[str]
    images: list[dict]  # {path, caption, activation, shared: [concepts]}


@dataclass
class Report:
    reading: float
    n_reading: int
    flags: float
    n_flags: int
    multimodal: int
    n_units: int
    layer: str
    best: list[Unit] = field(default_factory=list)
    by_shared: dict[int, int] = field(default_factory=dict)  # units by how many top images share a concept
    modality: dict = field(default_factory=dict)  # worker.analyses.modality's summary: p99, above, units, concepts


def stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def concepts(text: str) -> set[str]:
    """Content words of a caption or word, lower case, plural folded (stop and template words dropped)."""
    tokens = re.findall(r"[a-z]+", text.lower())
    return {stem(t) for t in tokens if len(t) > 1 and t not in STOP_WORDS and t not in TEMPLATE_WORDS}


@torch.inference_mode()
def embed_images(loaded: LoadedModel, files: list[str], batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(files), batch):
        x = torch.stack([loaded.preprocess(Image.open(f).convert("RGB")) for f in files[i:i + batch]])
        out.append(F.normalize(loaded.model.encode_image(x.to(loaded.device)), dim=-1).cpu())
    return torch.cat(out)


@torch.inference_mode()
def embed_texts(loaded: LoadedModel, texts: list[str], batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch):
        tokens = loaded.tokenizer(texts[i:i + batch]).to(loaded.device)
        out.append(F.normalize(loaded.model.encode_text(tokens), dim=-1).cpu())
    return torch.cat(out)


def zero_shot(loaded: LoadedModel, rows: list[dict], prompt: str) -> float:
    """Top-1 accuracy of `rows` (each with a concept) among all their distinct concepts."""
    if not rows:
        return float("nan")
    labels = sorted({r["concept"] for r in rows})
    return top1(loaded, rows, labels, embed_texts(loaded, [prompt.format(c) for c in labels]))


def top1(loaded: LoadedModel, rows: list[dict], labels: list[str], text: torch.Tensor) -> float:
    """Share of `rows` whose image is nearest the text feature of its own concept (`text[i]` for `labels[i]`)."""
    pred = (embed_images(loaded, [r["file"] for r in rows]) @ text.T).argmax(1).numpy()
    return float((pred == np.array([labels.index(r["concept"]) for r in rows])).mean())


def heldout(rows: list[dict], facet: str) -> list[dict]:
    return [r for r in rows if r["facet"] == facet and r["split"] == "heldout"]


def unit_activations(loaded: LoadedModel, files: list[str], layer: str, batch: int = 256) -> np.ndarray:
    """(images, units) spatial means of the layer's output."""
    from worker.compute.text_scores import layer_reader

    read = layer_reader(loaded, layer)
    out = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(files), batch), desc="images", unit="batch", leave=False):
            x = torch.stack([loaded.preprocess(Image.open(f).convert("RGB")) for f in files[i:i + batch]])
            out.append(read(x.to(loaded.device))[1].float().cpu().numpy())
    return np.concatenate(out)


def word_scores(loaded: LoadedModel, words: list[str], layer: str) -> np.ndarray:
    """(words, units) as the rendered-words stage scores them (its default render plan)."""
    from worker.compute.text_scores import default_plan, layer_reader, score_texts

    with tqdm(total=len(words), desc="words", unit="word", leave=False) as bar:
        return score_texts(layer_reader(loaded, layer), words, default_plan(loaded), loaded.mean, loaded.std,
                           device=loaded.device, bar=bar)[1]


def multimodal_units(acts: np.ndarray, rows: list[dict], scores: np.ndarray, words: list[str]) -> list[Unit]:
    """Every unit with its shared-concept count, best first."""
    caption_concepts = [concepts(r["caption"]) for r in rows]
    word_concepts = [concepts(w) for w in words]
    units = []
    for u in range(acts.shape[1]):
        top_words = [words[i] for i in np.argsort(-scores[:, u], kind="stable")[:TOP_WORDS]]
        wanted = set().union(*(word_concepts[words.index(w)] for w in top_words))
        images = []
        for i in np.argsort(-acts[:, u], kind="stable")[:TOP_IMAGES]:
            shared = sorted(caption_concepts[i] & wanted)
            images.append({"path": rows[i]["path"], "caption": rows[i]["caption"],
                           "activation": round(float(acts[i, u]), 4), "shared": shared})
        units.append(Unit(u, sum(bool(im["shared"]) for im in images), top_words, images))
    return sorted(units, key=lambda x: (-x.shared, -sum(im["activation"] for im in x.images)))


def evaluate(loaded: LoadedModel, corpus: Path, words: list[str], layer: str | None = None,
             best: int = 10) -> Report:
    """The three figures of the issue on the held-out split and the penultimate (default) layer."""
    from worker.compute.layers import layer_spec

    rows = read_manifest(corpus)
    reading_rows, flag_rows = heldout(rows, "text"), heldout(rows, "flags")
    reading = zero_shot(loaded, reading_rows, "{}")
    flags = zero_shot(loaded, flag_rows, "the flag of {}")
    spec = layer_spec(loaded, layer)
    pictures = [r for r in rows if r["kind"] not in NON_TEXT_EXCLUDED]
    acts = unit_activations(loaded, [r["file"] for r in pictures], spec.name)
    scores = word_scores(loaded, words, spec.name)
    units = multimodal_units(acts, pictures, scores, words)
    n_multi = sum(u.shared >= MIN_SHARED for u in units)
    by_shared = dict(sorted(Counter(u.shared for u in units).items()))
    return Report(reading, len(reading_rows), flags, len(flag_rows), n_multi, len(units), spec.name, units[:best],
                  by_shared, modality_criterion(loaded, acts, pictures, spec.name))


def modality_criterion(loaded: LoadedModel, acts: np.ndarray, rows: list[dict], layer: str,
                       min_images: int = 3) -> dict:
    """The modality stage's score over the pictures' caption concepts (post-ReLU, as `acts` and the words are)."""
    from worker.analyses.modality import Profile, score_profile
    from worker.compute.text_scores import default_plan, layer_reader, score_texts

    members: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        for c in concepts(r["caption"]):
            members.setdefault(c, []).append(i)
    names = sorted(c for c, idx in members.items() if len(idx) >= min_images)
    picture = np.stack([acts[members[c]].mean(axis=0) for c in names])
    word = score_texts(layer_reader(loaded, layer), names, default_plan(loaded), loaded.mean, loaded.std,
                       device=loaded.device)[1]
    scored = score_profile(Profile(names, picture, word, None, [len(members[c]) for c in names]))
    best = np.argsort(-scored["score"], kind="stable")[:5]
    return {**{k: scored["summary"][k] for k in ("p99", "above", "units")}, "concepts": len(names),
            "best": [(int(u), round(float(scored["score"][u]), 3), names[int(scored["best"][u])]) for u in best]}


def format_report(report: Report) -> str:
    lines = [f"reading (held-out font, {report.n_reading} words, {report.n_reading}-way zero-shot): "
             f"{report.reading:.1%}  (target >= 70%)",
             f"flag -> country (new renderings, {report.n_flags} flags): {report.flags:.1%}  (target >= 70%)",
             f"multimodal neurons in {report.layer}: {report.multimodal} of {report.n_units}  (target >= 20; "
             f"of the top-{TOP_IMAGES} non-text images >= {MIN_SHARED} share a concept with the top-{TOP_WORDS} words)",
             "  units by images sharing a concept: "
             + ", ".join(f"{k}: {n}" for k, n in report.by_shared.items())]
    if report.modality:
        m = report.modality
        lines.append(f"multimodal by the modality score (picture-word correlation over {m['concepts']} caption "
                     f"concepts): {m['above']} of {m['units']} above the null's 99th percentile ({m['p99']:.3f}); "
                     "best: " + ", ".join(f"unit {u} {s:.2f} ({c})" for u, s, c in m["best"]))
    for u in report.best:
        shared = [im for im in u.images if im["shared"]]
        lines.append(f"  unit {u.unit:4d}  {u.shared}/{TOP_IMAGES}  words: {', '.join(u.words)}")
        lines += [f"      {im['caption'][:60]!r} [{', '.join(im['shared'])}] {im['path']}" for im in shared[:4]]
    return "\n".join(lines)
