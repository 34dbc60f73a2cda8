"""The Stroop test for CLIP: colour words drawn in colours, classified zero-shot by ink colour.

Prompt (the paper's): "my favorite word, written in the color {}". Congruent stimuli have word == ink;
on incongruent ones the model may read the word instead of seeing the ink (the Stroop effect).
"""
from collections import Counter
from collections.abc import Sequence

from PIL import Image as PILImage
from PIL import ImageDraw

from worker.compute.render_text import attack_font

STROOP_TEMPLATE = "my favorite word, written in the color {}"
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20), "green": (20, 150, 40), "blue": (20, 50, 220),
    "yellow": (235, 200, 0), "purple": (130, 40, 170), "orange": (245, 120, 0),
}
SIZES = (0.16, 0.22, 0.28)  # font size as a share of the side: one stimulus per size
BACKGROUND = (255, 255, 255)


def stimulus(word: str, ink: tuple[int, int, int], size: int, font_fraction: float) -> PILImage.Image:
    """`word` in colour `ink`, centred on a white square of side `size`."""
    img = PILImage.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((size / 2, size / 2), word, font=attack_font(max(6, round(font_fraction * size))),
              fill=ink, anchor="mm")
    return img


def stimuli(colours: dict[str, tuple[int, int, int]], size: int,
            sizes: Sequence[float] = SIZES) -> list[tuple[str, str, PILImage.Image]]:
    """(word, ink name, image) for every word x ink pair at every font size."""
    return [(word, ink, stimulus(word, rgb, size, f)) for word in colours for ink, rgb in colours.items()
            for f in sizes]


def score(items: Sequence[tuple[str, str]], predicted: Sequence[str]) -> dict:
    """Congruent and incongruent accuracy (prediction == ink) and how often the word was read instead."""
    cong = [p == ink for (word, ink), p in zip(items, predicted, strict=True) if word == ink]
    inc = [(p == ink, p == word) for (word, ink), p in zip(items, predicted, strict=True) if word != ink]
    return {"congruent": len(cong), "incongruent": len(inc),
            "congruent_accuracy": sum(cong) / len(cong) if cong else None,
            "incongruent_accuracy": sum(a for a, _ in inc) / len(inc) if inc else None,
            "read_word_rate": sum(r for _, r in inc) / len(inc) if inc else None}


def matrix(items: Sequence[tuple[str, str]], predicted: Sequence[str], colours: Sequence[str]) -> list[dict]:
    """Per word: the most frequent prediction for each ink (ties to the first seen)."""
    votes: dict[tuple[str, str], Counter] = {}
    for (word, ink), p in zip(items, predicted, strict=True):
        votes.setdefault((word, ink), Counter())[p] += 1
    return [{"word": w, "cells": [{"ink": ink, "predicted": votes[(w, ink)].most_common(1)[0][0]}
                                  for ink in colours if (w, ink) in votes]}
            for w in colours]


def sheet(images: Sequence[PILImage.Image], columns: int, cell: int = 96) -> PILImage.Image:
    """The stimuli side by side, `columns` per row, each scaled to `cell` pixels."""
    rows = -(-len(images) // columns)
    out = PILImage.new("RGB", (columns * cell, rows * cell), (200, 200, 200))
    for i, im in enumerate(images):
        out.paste(im.resize((cell - 2, cell - 2)), ((i % columns) * cell + 1, (i // columns) * cell + 1))
    return out


def run_stroop(loaded, colours: dict[str, tuple[int, int, int]] = COLOURS, template: str = STROOP_TEMPLATE) -> dict:
    """Classify every stimulus by ink colour; returns the scores, the prediction matrix and the stimuli."""
    from worker.compute.zeroshot import classifier

    names = list(colours)
    items = stimuli(colours, loaded.image_size)
    clf = classifier(loaded, names, template)
    probs = clf.probs(loaded, [im for _, _, im in items])
    predicted = [names[i] for i in probs.argmax(-1).tolist()]
    pairs = [(w, ink) for w, ink, _ in items]
    return {"scores": score(pairs, predicted), "matrix": matrix(pairs, predicted, names),
            "colours": names, "template": template,
            "sheet_images": [im for (_, _, im) in items[len(SIZES) // 2::len(SIZES)]]}


def stroop_settings(size: int, template: str = STROOP_TEMPLATE) -> dict:
    return {"template": template, "colours": COLOURS, "sizes": SIZES, "size": size}


def stroop_stage(store, model_name: str, loaded, template: str = STROOP_TEMPLATE) -> dict:
    """Run the Stroop test and record it as one `stroop` run (report + a stimulus sheet in the cache)."""
    from store.writes import recorded_run

    with recorded_run(store, "stroop", model_name, stroop_settings(loaded.image_size, template)) as report:
        report.update(write_stroop(store, run_stroop(loaded, COLOURS, template)))
    return report


def write_stroop(store, result: dict) -> dict:
    """The report the attacks page reads, with the stimulus sheet put in the cache."""
    result = dict(result)
    images = result.pop("sheet_images")
    return {**result, "sheet": store.cache.put_image(sheet(images, len(COLOURS)))}
