"""The demo's typographic attack set: the probe corpus's photos, labelled by the concept their caption
names, and the attack texts picked from those labels (the typographic stage's options in the demo build)."""
import json
import os
from pathlib import Path

from worker.demo.corpus import MANIFEST

# the paper's attack classes (figure 16), tried first when the demo's objects include them
PAPER_TARGETS = ("waste container", "ipod", "rifle", "pizza", "radio", "shark", "library", "cat", "piggy bank")
ATTACKS = 16
# crops of the sample photos: 15 concepts x 8 crops, the corpus's one set with several images per class
ATTACK_KINDS = ("photo",)


def attack_set(data_dir: Path, corpus: Path) -> Path:
    """A manifest (path, label) of the probe corpus's photos, labelled by the concept their caption names."""
    out = Path(data_dir) / "demo" / "attack-set.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(Path(corpus) / MANIFEST, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get("kind") in ATTACK_KINDS and row.get("concept"):  # manifest paths are relative to it
                path = os.path.relpath(Path(corpus).resolve() / row["path"], out.parent.resolve())
                rows.append({"path": path, "label": bare(row["concept"])})
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if not out.is_file() or out.read_text(encoding="utf-8") != text:  # unchanged: its digest stays the same
        out.write_text(text, encoding="utf-8")
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
