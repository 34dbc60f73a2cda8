"""The demo's probe corpus on disk: a few thousand images drawn once from registry data, with a manifest.

Layout (under `<data_dir>/demo/corpus/`)::

    manifest.jsonl        one JSON object per image: path (relative to this folder), caption, kind,
                          facet, concept, source (package@version), licence, split (train | heldout)
    text/                 rendered common words (split heldout: the held-out font, never trained on)
    faces/                face emoji (emotions)          emoji/      other emoji
    clipart/              tuxpaint stamps                photos/     crops of the sample photos
    flags/                flags (split heldout: waved renderings drawn from the SVGs, never trained on)
    logos/                brand logos                    colours/    colour patches, coloured shapes and objects
    counts/               1-5 copies of an object        typographic/ objects with a word written on them
    scenes/               objects on photo backgrounds
    build.json            what built it (settings and counts); its presence means the corpus is complete

Each top-level folder is a facet (`worker.analyses.facets` reads them so); the manifest is an ordinary
corpus for `worker.compute.corpus` (path + caption). Every image is drawn from its own seed (`items.item_seed`),
so the same code and packages give the same files.
"""
import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from worker.demo.items import (
    Item,
    Pools,
    as_scene,
    asset_item,
    colour_items,
    count_items,
    countable,
    draw,
    item_seed,
    load_pools,
    typographic_items,
    word_item,
)
from worker.demo.sources import HELDOUT_FONT, TRAIN_FONTS

VERSION = 1
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Plan:
    """How many of each kind the probe corpus holds."""

    train_words: int = 2000  # the most common words, each in one training font (cycled)
    heldout_words: int = 1000  # the most common words in the held-out font (reading evaluation)
    emoji: int = 1500  # non-face emoji (all face emoji are kept)
    photo_crops: int = 8  # per photo
    coloured: int = 200
    counts: int = 300
    typographic: int = 300
    scenes: int = 300


def corpus_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "demo" / "corpus"


def probe_items(pools: Pools, plan: Plan = Plan(), seed: int = 1) -> list[Item]:
    """The fixed list of items the corpus holds, in a stable order."""
    rng = np.random.default_rng(seed)
    words = pools.words
    items = [word_item(w, TRAIN_FONTS[i % len(TRAIN_FONTS)]) for i, w in enumerate(words[:plan.train_words])]
    items += [word_item(w, HELDOUT_FONT, split="heldout", style="plain") for w in words[:plan.heldout_words]]
    items += [asset_item(a) for a in pools.of_kind("face", "clipart")]
    others = pools.of_kind("emoji")
    items += [asset_item(others[i]) for i in sorted(rng.permutation(len(others))[:plan.emoji])]
    for a in pools.of_kind("photo"):
        items += [Item("photo", "photos", a.caption, a.name, a.source, a.licence, asset=a.key, count=i)
                  for i in range(plan.photo_crops)]
    flags = pools.of_kind("flag")
    items += [asset_item(a) for a in flags]
    items += [Item("flag", "flags", f"the flag of {a.name}", a.name, a.source, a.licence, asset=a.key, wave=True,
                   split="heldout") for a in flags if a.key.count("/") == 1]
    items += [asset_item(a) for a in pools.of_kind("logo")]
    objects = countable(pools)
    items += colour_items(objects, plan.coloured, rng)
    if objects:
        items += count_items(objects, plan.counts, rng)
        items += typographic_items(objects, words[:2000], plan.typographic, rng)
    scenery = pools.of_kind("emoji", "face", "clipart")
    items += [as_scene(asset_item(scenery[i])) for i in sorted(rng.permutation(len(scenery))[:plan.scenes])]
    return items


def file_name(item: Item, index: int) -> str:
    stem = "".join(c if c.isalnum() else "-" for c in (item.word or item.asset.rsplit("/", 1)[-1] or item.concept))
    return f"{item.facet}/{index:05d}-{stem[:40].strip('-').lower() or 'item'}.png"


def write_corpus(pools: Pools, root: Path, plan: Plan = Plan()) -> dict:
    """Draw every probe item into `root` (replacing what is there) and write the manifest last."""
    root = Path(root)
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    items = probe_items(pools, plan)
    rows = []
    for i, item in enumerate(tqdm(items, desc="corpus", unit="img")):
        rel = file_name(item, i)
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        draw(item, np.random.default_rng(item_seed(item, str(i))), pools).save(path, format="PNG")
        rows.append({"path": rel, **{k: v for k, v in asdict(item).items()
                                     if k in ("caption", "kind", "facet", "concept", "source", "licence", "split")}})
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    report = summarise(rows)
    (tmp / "build.json").write_text(json.dumps({"version": VERSION, "size": pools.size, "plan": asdict(plan),
                                                **report}, indent=2) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return report


def summarise(rows: list[dict]) -> dict:
    return {"images": len(rows),
            "by_facet": dict(sorted(Counter(r["facet"] for r in rows).items())),
            "by_source": dict(sorted(Counter(r["source"].split(";")[0] for r in rows).items())),
            "by_split": dict(sorted(Counter(r["split"] for r in rows).items()))}


def is_built(root: Path, size: int) -> bool:
    info = Path(root) / "build.json"
    if not info.is_file() or not (Path(root) / MANIFEST).is_file():
        return False
    meta = json.loads(info.read_text())
    return meta.get("version") == VERSION and meta.get("size") == size


def build_corpus(data_dir: Path, size: int, plan: Plan = Plan(), npm: bool = True, force: bool = False,
                 pools: Pools | None = None) -> Path:
    """The probe corpus for images of side `size`, built once under the data folder and then reused."""
    root = corpus_dir(data_dir)
    if is_built(root, size) and not force:
        return root
    t = time.perf_counter()
    pools = pools or load_pools(Path(data_dir), size, npm=npm)
    report = write_corpus(pools, root, plan)
    tqdm.write(f"corpus: {report['images']} images in {time.perf_counter() - t:.0f} s at {root}")
    return root


def read_manifest(root: Path) -> list[dict]:
    """The manifest's rows (each with an absolute `file` added)."""
    root = Path(root)
    rows = []
    with open(root / MANIFEST, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            row["file"] = str(root / row["path"])
            rows.append(row)
    return rows
