"""The layer summary figure of multimodality (README, docs/concepts.md): the histogram of a layer's unit
scores against the shuffled-concept null, the null's 99th percentile and how many units are above it.
Reads what the modality stage stored (the layer's `modality` artifact), so it can be redrawn from any store:

    MICROSCOPE_DATA_DIR=data .venv/bin/python scripts/modality_figure.py --model demo --layer layer4 \
        --out docs/modality-demo-layer4.png
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from sqlalchemy import select


def stored_summary(model: str, layer: str) -> tuple[dict, np.ndarray]:
    """(the artifact's meta, the units' scores) or SystemExit naming what is missing."""
    from store.schema import Artifact, Model
    from store.settings import Settings
    from store.writes import open_store

    store = open_store(Settings())
    with store.sessions() as session:
        art = session.scalar(select(Artifact).join(Model, Artifact.model_id == Model.id).where(
            Model.name == model, Artifact.layer == layer, Artifact.name == "modality"))
        if art is None:
            sys.exit(f"{store.settings.db_url}: no modality profile for {model} {layer} (run the modality stage)")
        meta = dict(art.meta)
    path = store.cache.resolve(meta["paths"]["score"])
    if path is None:
        sys.exit(f"the score file {meta['paths']['score']} is missing from the cache")
    return meta, np.load(path)


def draw(meta: dict, score: np.ndarray, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = meta["summary"]
    edges = np.asarray(s["edges"])
    widths = np.diff(edges)
    fig, ax = plt.subplots(figsize=(7.2, 3.6), dpi=150)
    ax.bar(edges[:-1], s["counts"], widths, align="edge", color="#e07b39", alpha=0.85, label="units")
    ax.stairs(s["null_share"], edges, color="#3b6ea8", linewidth=1.6,
              label=f"null: concepts shuffled ({meta.get('permutations', 20)}×, per unit count)")
    ax.axvline(s["p99"], color="black", linestyle="--", linewidth=1)
    ax.text(s["p99"], ax.get_ylim()[1] * 0.95, f"  null p99 = {s['p99']:.3f}\n  {s['above']} of {s['units']} "
            "units above", va="top", fontsize=9)
    ax.set_xlabel("multimodality score (picture–word correlation across concepts)")
    ax.set_ylabel("units")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--out", type=Path, default=Path("docs/modality-demo-layer4.png"))
    args = parser.parse_args()
    meta, score = stored_summary(args.model, args.layer)
    s = meta["summary"]
    kind = {"captions": "caption", "folders": "class", "words": "common-word", "imagenet": "ImageNet"}
    title = (f"{args.model} {args.layer}: {s['units']} units over {meta['n_concepts']} "
             f"{kind.get(meta['concept_set'], meta['concept_set'])} concepts; {s['above']} above the null's p99")
    draw(meta, score, title, args.out)
    print(f"{args.out}: {s['above']} of {s['units']} units above the null's p99 {s['p99']:.4f} "
          f"({meta['n_concepts']} concepts, scores {score.min():.3f} to {score.max():.3f})")


if __name__ == "__main__":
    main()
