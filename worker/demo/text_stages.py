"""The text side's demo stages: emotion composition, typographic attacks and the Stroop test on the demo model.

Each takes the build's `DemoContext`, skips when a finished run exists, and returns a short report.
"""
import json
import os
from pathlib import Path

from worker.demo.build import DemoContext, done_before

# the paper's attack classes (figure 16), tried first when the demo's objects include them
PAPER_TARGETS = ("waste container", "ipod", "rifle", "pizza", "radio", "shark", "library", "cat", "piggy bank")
ATTACKS = 16
# crops of the sample photos: 15 concepts x 8 crops, the corpus's one set with several images per class
ATTACK_KINDS = ("photo",)


def emotions_stage(ctx: DemoContext, feelings: Path | None = None) -> dict:
    from worker.emotions import FEELINGS
    from worker.emotions import emotions_stage as run

    if done_before(ctx, "emotions"):
        return {"skipped": "done before"}
    data = run(ctx.store, ctx.model_name, ctx.loaded, feelings or FEELINGS)
    quality = [w["quality"] for w in data["words"]]
    return {"words": len(quality), "mean_quality": sum(quality) / len(quality)}


def attack_set(ctx: DemoContext) -> Path:
    """A manifest (path, label) of the probe corpus's photos, labelled by the concept their caption names."""
    out = ctx.data_dir / "demo" / "attack-set.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(ctx.manifest, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("kind") in ATTACK_KINDS and row.get("concept"):  # manifest paths are relative to it
                path = os.path.relpath(Path(ctx.corpus).resolve() / row["path"], out.parent.resolve())
                rows.append({"path": path, "label": bare(row["concept"])})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


def bare(concept: str) -> str:
    """"A cat" -> "cat": the class name the prompt "a photo of a {}" and the attack text both use."""
    words = concept.strip().lower().split()
    return " ".join(words[1:] if len(words) > 1 and words[0] in ("a", "an", "the") else words)


def pick_attacks(labels: list[str], n: int = ATTACKS) -> list[str]:
    """The paper's targets that are among `labels`, then labels spread evenly over the sorted rest."""
    chosen = [t for t in PAPER_TARGETS if t in labels][:n]
    rest = sorted(set(labels) - set(chosen))
    step = max(1, len(rest) // max(1, n - len(chosen)))
    return chosen + rest[::step][: n - len(chosen)]


def typographic_stage(ctx: DemoContext) -> dict:
    from worker.typographic import Attack, attack_stage, labelled_images

    if done_before(ctx, "typographic"):
        return {"skipped": "done before"}
    images = attack_set(ctx)
    labels = list(dict.fromkeys(label for _, label in labelled_images(images)))
    if len(labels) < 2:
        return {"skipped": f"the probe corpus has {len(labels)} labelled pictures of things"}
    attacks = [Attack(t, t) for t in pick_attacks(labels)]
    report = attack_stage(ctx.store, ctx.model_name, ctx.loaded, images, attacks, "a photo of a {}")
    rates = [a["success_rate"] for a in report["attacks"] if a["success_rate"] is not None]
    return {"images": report["n_images"], "clean_accuracy": report["clean_accuracy"],
            "mean_success_rate": sum(rates) / len(rates) if rates else None}


def stroop_stage(ctx: DemoContext) -> dict:
    from worker.stroop import stroop_stage as run

    if done_before(ctx, "stroop"):
        return {"skipped": "done before"}
    return run(ctx.store, ctx.model_name, ctx.loaded)["scores"]
