"""Typographic attacks, the paper's protocol: attack text pasted at 8 fixed positions in one font.

An attack succeeds on an image when the zero-shot top class becomes the attack class; images whose
label or clean prediction already is the attack class are left out. Pixel cover is the share of
pixels the attack changed by any amount (L0), at the model's input resolution.
"""
import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageOps

from worker.compute.corpus import CorpusError, Entry, Skip, iter_entries, open_entry
from worker.compute.render_text import attack_font

# top-left corners as fractions of the side, chosen once (arbitrarily, as in the paper) and never changed
ATTACK_POSITIONS: tuple[tuple[float, float], ...] = (
    (0.04, 0.05), (0.52, 0.10), (0.20, 0.28), (0.62, 0.36),
    (0.06, 0.52), (0.44, 0.60), (0.14, 0.78), (0.58, 0.84),
)
FONT_FRACTION = 0.07  # font size as a share of the image side
MANIFEST_SUFFIXES = (".csv", ".jsonl")


def fit(img: PILImage.Image, size: int) -> PILImage.Image:
    """The square RGB view the model sees: shorter side to `size`, centre crop."""
    return ImageOps.fit(img.convert("RGB"), (size, size), PILImage.Resampling.BICUBIC)


def paste_text(img: PILImage.Image, text: str, positions: Sequence[tuple[float, float]] = ATTACK_POSITIONS,
               font_fraction: float = FONT_FRACTION) -> PILImage.Image:
    """A copy of `img` with `text` written at each position: white letters, thin black outline."""
    out = img.convert("RGB")
    w, h = out.size
    size = max(6, round(font_fraction * min(w, h)))
    font, draw = attack_font(size), ImageDraw.Draw(out)
    for fx, fy in positions:
        draw.text((round(fx * w), round(fy * h)), text, font=font, fill=(255, 255, 255),
                  stroke_width=max(1, size // 12), stroke_fill=(0, 0, 0))
    return out


def pixel_cover(before: PILImage.Image, after: PILImage.Image) -> float:
    """Share of pixels changed by any amount in any channel (the paper's L0 pixel cover)."""
    a, b = np.asarray(before.convert("RGB")), np.asarray(after.convert("RGB"))
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    return float((a != b).any(axis=-1).mean())


@dataclass
class Attack:
    text: str
    target: str  # the class the text tries to make the model see

    @classmethod
    def parse(cls, spec: str) -> "Attack":
        """`pizza` (text and class alike) or `trash=waste container` (text=class)."""
        text, sep, target = spec.partition("=")
        text, target = text.strip(), (target if sep else text).strip()
        if not text or not target:
            raise ValueError(f"attack {spec!r} must be TEXT or TEXT=CLASS, both non-empty")
        return cls(text, target)


# --- labelled image sets ------------------------------------------------------------------------

def labelled_images(path: str | Path, label_key: str = "label") -> list[tuple[Entry, str]]:
    """(corpus entry, label) pairs from a folder per class (`root/<label>/**/image`), or a manifest
    (.csv with path and `label_key` columns, .jsonl of such objects; paths relative to the manifest)."""
    path = Path(path).expanduser()
    if path.is_dir():
        out = []
        for entry in iter_entries(path):
            label, sep, _ = entry.source.partition("/")
            out.append((entry, label if sep else ""))  # an image outside any class folder has no label
        return out
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return [(Entry(str(r["path"]), str(path.parent / str(r["path"]))), str(r[label_key]).strip())
                for r in manifest_rows(path, label_key)]
    raise CorpusError(f"{path} is neither a folder of class folders nor a manifest "
                      f"({', '.join(MANIFEST_SUFFIXES)}) with path and {label_key} columns")


def manifest_rows(path: Path, label_key: str = "label") -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    bad = [i for i, r in enumerate(rows, 1) if not isinstance(r, dict) or not r.get("path") or not r.get(label_key)]
    if bad:
        raise CorpusError(f"{path}: rows {bad[:5]} lack a path or a {label_key}")
    return rows


@dataclass
class ImageSet:
    images: list[PILImage.Image] = field(default_factory=list)  # fitted to the model's input size
    labels: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count


def open_images(items: Sequence[tuple[Entry, str]], size: int) -> ImageSet:
    """Open and fit every image; unusable ones (worker.compute.corpus skip reasons, or no label) are counted."""
    out = ImageSet()
    for entry, label in items:
        try:
            if not label:
                raise Skip("no-label")
            _, img = open_entry(entry)
        except Skip as skip:
            out.skipped[skip.reason] = out.skipped.get(skip.reason, 0) + 1
            continue
        out.images.append(fit(img, size))
        out.labels.append(label)
        out.sources.append(entry.source)
    return out


# --- bookkeeping --------------------------------------------------------------------------------

def success_counts(clean_top: Sequence[str], attacked_top: Sequence[str], labels: Sequence[str],
                   target: str) -> dict:
    """Success of one attack over the images not already of its class (by label or clean prediction)."""
    eligible = [i for i, (c, y) in enumerate(zip(clean_top, labels, strict=True)) if c != target and y != target]
    hits = sum(attacked_top[i] == target for i in eligible)
    return {"images": len(labels), "eligible": len(eligible), "success": hits,
            "excluded_label": sum(y == target for y in labels),
            "excluded_clean": sum(c == target and y != target for c, y in zip(clean_top, labels, strict=True)),
            "success_rate": hits / len(eligible) if eligible else None}


def accuracy(pred: Sequence[str], labels: Sequence[str]) -> float | None:
    return sum(p == y for p, y in zip(pred, labels, strict=True)) / len(labels) if labels else None


# --- the experiment -----------------------------------------------------------------------------

def label_set(image_labels: Sequence[str], attacks: Sequence[Attack], extra: Sequence[str] = ()) -> list[str]:
    """Every class the zero-shot classifier chooses from, in first-seen order, attack classes included."""
    return list(dict.fromkeys([*image_labels, *extra, *(a.target for a in attacks)]))


def run_attacks(loaded, data: ImageSet, attacks: Sequence[Attack], labels: Sequence[str],
                template: str, examples: int = 3) -> dict:
    """Classify every image clean and under each attack; returns the report and example image pairs."""
    from worker.compute.zeroshot import classifier

    clf = classifier(loaded, labels, template)
    clean_top = tops(clf, clf.probs(loaded, data.images))
    report = {"clean_accuracy": accuracy(clean_top, data.labels), "attacks": []}
    pairs = []
    for attack in attacks:
        attacked = [paste_text(im, attack.text) for im in data.images]
        probs = clf.probs(loaded, attacked)
        top = tops(clf, probs)
        covers = [pixel_cover(a, b) for a, b in zip(data.images, attacked, strict=True)]
        report["attacks"].append({
            "text": attack.text, "target": attack.target,
            "pixel_cover": float(np.mean(covers)) if covers else None,
            "attacked_accuracy": accuracy(top, data.labels),
            **success_counts(clean_top, top, data.labels, attack.target)})
        pairs += [(attack, i, data.images[i], attacked[i], clean_top[i], top[i],
                   float(probs[i, clf.labels.index(attack.target)]))
                  for i in example_order(clean_top, top, data.labels, attack.target)[:examples]]
    return {"report": report, "examples": pairs}


def example_order(clean_top: Sequence[str], attacked_top: Sequence[str], labels: Sequence[str],
                  target: str) -> list[int]:
    """Images to show for an attack: its successes first, then the other eligible images, then the rest."""
    def rank(i: int) -> int:
        eligible = clean_top[i] != target and labels[i] != target
        return 0 if eligible and attacked_top[i] == target else 1 if eligible else 2

    return sorted(range(len(labels)), key=lambda i: (rank(i), i))


def tops(clf, probs) -> list[str]:
    return [clf.labels[i] for i in probs.argmax(-1).tolist()]


# --- the stage ----------------------------------------------------------------------------------

def attack_stage(store, model_name: str, loaded, images: str | Path, attacks: Sequence[Attack],
                 template: str, extra_labels: Sequence[str] = (), examples: int = 3, label_key: str = "label") -> dict:
    """Run the attacks over a labelled image set and record them as one `typographic` run."""
    from store.writes import recorded_run

    data = attack_images(images, loaded.image_size, label_key)
    labels = label_set(data.labels, attacks, extra_labels)
    settings = attack_settings(images, attacks, template, loaded.image_size)
    with recorded_run(store, "typographic", model_name, settings) as report:
        result = run_attacks(loaded, data, attacks, labels, template, examples)
        report.update(attack_report(store, images, data, labels, template, result))
    return report


def attack_images(images: str | Path, size: int, label_key: str = "label") -> ImageSet:
    data = open_images(labelled_images(images, label_key), size)
    if not data.images:
        raise ValueError(f"no readable images in {images} (skipped: {data.skipped or 'none found'})")
    return data


def attack_settings(images: str | Path, attacks: Sequence[Attack], template: str, size: int) -> dict:
    return {"images": str(images), "attacks": [a.__dict__ for a in attacks], "template": template,
            "positions": ATTACK_POSITIONS, "font": "DejaVu Sans Bold", "font_fraction": FONT_FRACTION,
            "size": size}


def attack_report(store, images: str | Path, data: ImageSet, labels: list[str], template: str,
                  result: dict) -> dict:
    """The run's report, which the attacks page reads; the example pictures go to the cache."""
    return {**result["report"], "n_images": len(data.images), "skipped": data.skipped, "labels": labels,
            "images": str(images), "template": template,
            "examples": [example_row(store.cache, *e) for e in result["examples"]]}


def example_row(cache, attack: Attack, index: int, before, after, clean_top: str, attacked_top: str,
                p_target: float) -> dict:
    return {"text": attack.text, "target": attack.target, "index": index,
            "before": cache.put_image(before), "after": cache.put_image(after),
            "clean_top": clean_top, "attacked_top": attacked_top, "p_target": round(p_target, 4)}


def try_attack(loaded, image: PILImage.Image, text: str, labels: Sequence[str], template: str = "a photo of a {}",
               k: int = 5) -> dict:
    """One image, one attack text: the zero-shot top-k classes before and after, the two images, pixel cover."""
    clf = _lab_classifier(loaded, tuple(labels), template)
    before = fit(image, loaded.image_size)
    after = paste_text(before, text)
    probs = clf.probs(loaded, [before, after])
    return {"before": clf.top(probs[0], k), "after": clf.top(probs[1], k), "pixel_cover": pixel_cover(before, after),
            "images": (before, after)}


_LAB: dict[tuple, object] = {}


def _lab_classifier(loaded, labels: tuple[str, ...], template: str):
    """The live lab asks with the same label set again and again: keep the last few text towers' answers."""
    from worker.compute.zeroshot import classifier

    key = (id(loaded.model), labels, template)
    if key not in _LAB:
        if len(_LAB) >= 4:
            _LAB.pop(next(iter(_LAB)))
        _LAB[key] = classifier(loaded, labels, template)
    return _LAB[key]
