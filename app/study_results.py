"""What a study shows: P(category | activation bucket) per labeller, and agreement between labellers."""
import csv
import io
from itertools import combinations

import numpy as np

from app.studies import bucket_edges
from store.schema import Study, StudyItem


def conditional_probabilities(study: Study, items: list[StudyItem], answers: dict[int, str]) -> list[dict]:
    """One row per bucket: its range (activation and σ from zero), counts and P(category | bucket).

    P is over the bucket's labelled items; an empty or unlabelled bucket has P = None."""
    edges = bucket_edges(study.act_min, study.act_max, study.n_buckets)
    std = study.std or 1.0
    rows = []
    for b in range(study.n_buckets):
        in_bucket = [it for it in items if it.bucket == b]
        given = [answers[it.id] for it in in_bucket if it.id in answers]
        counts = {c: given.count(c) for c in study.categories}
        lo, hi = float(edges[b]), float(edges[b + 1])
        rows.append({
            "bucket": b, "lo": lo, "hi": hi, "lo_sigma": lo / std, "hi_sigma": hi / std,
            "center_sigma": (lo + hi) / 2 / std, "n_items": len(in_bucket), "labelled": len(given),
            "counts": counts, "p": {c: (n / len(given) if given else None) for c, n in counts.items()},
        })
    return rows


def cohen_kappa(a: list[str], b: list[str], categories: list[str]) -> float | None:
    """Cohen's kappa of two labellers over the same items: (p_o - p_e) / (1 - p_e), with p_e the
    agreement expected from each labeller's category frequencies; None when p_e is 1 (undefined).

    (Written out rather than imported from scikit-learn, which would add a second of import time
    to the web process for five lines of arithmetic; the tests check it against scikit-learn.)"""
    if not a:
        return None
    index = {c: i for i, c in enumerate(dict.fromkeys([*categories, *a, *b]))}
    confusion = np.zeros((len(index), len(index)))
    for x, y in zip(a, b, strict=True):
        confusion[index[x], index[y]] += 1
    confusion /= confusion.sum()
    observed = np.trace(confusion)
    expected = float(confusion.sum(axis=1) @ confusion.sum(axis=0))
    if expected >= 1.0:
        return None
    return float((observed - expected) / (1.0 - expected))


def agreement(study: Study, labels: dict[str, dict[int, str]]) -> list[dict]:
    """Percent agreement and Cohen's kappa for every pair of labellers, over the items both labelled."""
    out = []
    for first, second in combinations(labels, 2):
        shared = sorted(set(labels[first]) & set(labels[second]))
        a = [labels[first][i] for i in shared]
        b = [labels[second][i] for i in shared]
        same = sum(x == y for x, y in zip(a, b, strict=True))
        out.append({"labellers": [first, second], "n_items": len(shared),
                    "percent": 100.0 * same / len(shared) if shared else None,
                    "kappa": cohen_kappa(a, b, study.categories)})
    return out


def results(study: Study, items: list[StudyItem], labels: dict[str, dict[int, str]],
            labeller: str | None) -> dict:
    """The study's plot data for one labeller (default: the first), with agreement across labellers."""
    labellers = list(labels)
    chosen = labeller if labeller is not None else (labellers[0] if labellers else None)
    answers = labels.get(chosen, {}) if chosen else {}
    return {
        "labeller": chosen, "labellers": labellers, "categories": list(study.categories),
        "std": study.std, "n_items": len(items), "n_labelled": len(answers),
        "buckets": conditional_probabilities(study, items, answers),
        "agreement": agreement(study, labels),
    }


def results_csv(res: dict) -> str:
    """One row per bucket: range, counts, then P(category | bucket) per category."""
    cats = res["categories"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["bucket", "lo_activation", "hi_activation", "lo_sigma", "hi_sigma", "center_sigma",
                     "images", "labelled", *[_cell(f"count_{c}") for c in cats], *[_cell(f"p_{c}") for c in cats]])
    for r in res["buckets"]:
        p = ["" if r["p"][c] is None else f"{r['p'][c]:.6g}" for c in cats]
        writer.writerow([r["bucket"], f"{r['lo']:.6g}", f"{r['hi']:.6g}", f"{r['lo_sigma']:.6g}",
                         f"{r['hi_sigma']:.6g}", f"{r['center_sigma']:.6g}", r["n_items"], r["labelled"],
                         *[r["counts"][c] for c in cats], *p])
    return buf.getvalue()


def _cell(text: str) -> str:
    # a spreadsheet would run a cell that starts like a formula
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text
