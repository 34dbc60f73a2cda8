"""Synthetic neuron data, written the way the stages write it (one transaction per neuron), without torch.

For load benches, reader/writer concurrency tests and browser tests: `populate` registers a model and
fills its neurons with real small images in the cache; `write_unit` (re)writes one neuron's feature
visualization, dataset examples, word scores and statistics in the caller's transaction. Every number of
one write carries the same generation `gen`, so `neuron_generation` can tell from a page's JSON twin
whether it shows one whole neuron or pieces of two writes.
"""
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw
from sqlalchemy import delete, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.heatmaps import quantize
from app.unit_text import refresh_unit_text
from store.cache import Cache
from store.keys import UnitKey
from store.schema import (
    DatasetExample,
    FeatureVis,
    Image,
    Layer,
    Model,
    Unit,
    UnitHeatmaps,
    UnitStats,
    Word,
    WordScore,
    make_engine,
    make_sessionmaker,
)
from store.writes import Store, register_model
from worker.compute.layers import LayerSpec

K_EXAMPLES = 4  # per sign
K_WORDS = 5  # per sign
WORDS = ["apple", "banana", "cherry", "dog", "eagle", "forest", "guitar", "harbor", "island", "jungle", "kite"]
COLOURS = ["#d33", "#3a3", "#33d", "#dd3", "#3dd", "#d3d", "#999", "#f80", "#08f", "#8f0", "#f08", "#80f"]


class TornNeuron(AssertionError):
    """A page showed parts of a neuron from different writes (or only some of one write)."""


@dataclass
class Material:
    """What every synthetic neuron refers to: dataset images, words and each unit's render path."""

    image_ids: list[int]
    word_ids: list[int]
    units: list[tuple[int, UnitKey]] = field(default_factory=list)  # (unit id, key)


def picture(i: int, size: int = 64) -> PILImage.Image:
    """A small distinct test picture: a coloured field with a shape, numbered by its position."""
    img = PILImage.new("RGB", (size, size), COLOURS[i % len(COLOURS)])
    draw = ImageDraw.Draw(img)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    (draw.ellipse if i % 2 else draw.rectangle)(box, fill="white")
    draw.text((4, 4), str(i), fill="black")
    return img


def add_images(session: Session, cache: Cache, n: int) -> list[int]:
    ids = []
    for i in range(n):
        img = picture(i, 96)
        path = cache.put_image(img)
        sha = path.rsplit("/", 1)[-1].split(".")[0]
        row = session.scalar(select(Image).where(Image.sha256 == sha))
        if row is None:
            row = Image(sha256=sha, source=f"synthetic:{i}", caption=f"synthetic picture {i}", width=96,
                        height=96, path=path, thumb=cache.put_thumb(img, 64))
            session.add(row)
            session.flush()
        ids.append(row.id)
    return ids


def add_words(session: Session) -> list[int]:
    ids = []
    for rank, text in enumerate(WORDS):
        row = session.scalar(select(Word).where(Word.text == text))
        if row is None:
            row = Word(text=text, rank=rank)
            session.add(row)
            session.flush()
        ids.append(row.id)
    return ids


def populate(store: Store, model: str = "synth", layers: dict[str, int] | None = None, filled: int | None = None,
             n_images: int = 12) -> Material:
    """Register `model` with `layers` ({name: n_units}) and write generation 1 of the first `filled` units
    of each layer (all when None); every unit gets its feature-visualization PNG in the cache."""
    layers = layers or {"layer4": 32}
    with store.sessions.begin() as s:
        specs = [LayerSpec(name, f"visual.{name}", n, is_default=i == 0) for i, (name, n) in enumerate(layers.items())]
        register_model(s, model, "RN50", None, 224, specs, description="Synthetic neurons for tests and benches.")
        material = Material(add_images(s, store.cache, n_images), add_words(s))
    material.units = unit_keys(store.sessions, model)
    for _uid, key in material.units:
        store.cache.put_unit_image(key, "plain", picture(key.unit, 64))
    limit = {name: n if filled is None else min(filled, n) for name, n in layers.items()}
    for uid, key in material.units:
        if key.unit < limit[key.layer]:
            with store.sessions.begin() as s:
                write_unit(s, material, uid, key, gen=1)
    return material


def unit_keys(sessions, model: str) -> list[tuple[int, UnitKey]]:
    with sessions() as s:
        rows = s.execute(
            select(Unit.id, Layer.name, Unit.index).join(Layer, Unit.layer_id == Layer.id)
            .join(Model, Layer.model_id == Model.id).where(Model.name == model).order_by(Layer.position, Unit.index)
        ).all()
    return [(uid, UnitKey(model, layer, index)) for uid, layer, index in rows]


def write_unit(session: Session, material: Material, unit_id: int, key: UnitKey, gen: int) -> None:
    """Replace one neuron's computed sections with generation `gen` (in the caller's transaction)."""
    for table in (FeatureVis, DatasetExample, UnitHeatmaps, WordScore, UnitStats):
        session.execute(delete(table).where(table.unit_id == unit_id))
    session.add(FeatureVis(unit_id=unit_id, kind="plain", image=f"units/{key.path}/plain.png", objective=float(gen),
                           steps=gen, size=64, seed=gen))
    images = material.image_ids
    for sign, factor in (("top", 1), ("bottom", -1)):
        for rank in range(K_EXAMPLES):
            image_id = images[(key.unit + rank + (0 if sign == "top" else K_EXAMPLES)) % len(images)]
            session.add(DatasetExample(unit_id=unit_id, sign=sign, rank=rank, activation=factor * (gen + rank / 100),
                                       image_id=image_id))
    session.add(UnitHeatmaps(unit_id=unit_id, **quantize(synthetic_maps(gen), K_EXAMPLES)))
    words = material.word_ids
    for sign, factor in (("top", 1), ("bottom", -1)):
        for rank in range(K_WORDS):
            word_id = words[(key.unit + rank + (0 if sign == "top" else K_WORDS)) % len(words)]
            session.add(WordScore(unit_id=unit_id, word_id=word_id, score=factor * (gen + rank / 100), sign=sign,
                                  rank=rank))
    session.add(UnitStats(unit_id=unit_id, n=gen, mean=0.0, std=1.0, min=-gen - 0.5, max=gen + 0.5,
                          quantiles={"0.5": 0.0}, histogram={"edges": [-gen, 0, gen], "counts": [gen, gen]}))
    session.flush()
    refresh_unit_text(session, unit_id)  # top words feed search, as the words stage keeps them


def synthetic_maps(gen: int) -> np.ndarray:
    """2 * K_EXAMPLES 2x2 maps: top ones hot in the top-left corner, bottom ones negative there."""
    maps = np.zeros((2 * K_EXAMPLES, 2, 2), np.float32)
    maps[:K_EXAMPLES, 0, 0], maps[:K_EXAMPLES, 1, 1] = gen, gen / 2
    maps[K_EXAMPLES:, 0, 0], maps[K_EXAMPLES:, 1, 1] = -gen, gen / 2
    return maps


SECTIONS = ("featurevis", "examples", "words", "stats")


def neuron_generation(page: dict) -> int | None:
    """The generation a neuron page's JSON twin shows, None if it shows no computed data yet.
    Raises TornNeuron if it mixes generations or shows only part of one write."""
    sections = page["sections"]
    present = {name: sections.get(name) is not None for name in SECTIONS}
    if not any(present.values()):
        return None
    if not all(present.values()):
        raise TornNeuron(f"{page['key']}: only some sections present {present}")
    ex, words = sections["examples"], sections["words"]
    counts = (len(ex["top"]), len(ex["bottom"]), len(words["top"]), len(words["bottom"]))
    if counts != (K_EXAMPLES, K_EXAMPLES, K_WORDS, K_WORDS):
        raise TornNeuron(f"{page['key']}: incomplete section rows {counts}")
    gens = {int(sections["featurevis"]["plain"]["objective"]), int(sections["stats"]["n"])}
    gens |= {int(abs(e["activation"])) for e in ex["top"] + ex["bottom"]}
    gens |= {int(abs(w["score"])) for w in words["top"] + words["bottom"]}
    if len(gens) != 1:
        raise TornNeuron(f"{page['key']}: sections from several writes, generations {sorted(gens)}")
    return gens.pop()


def keep_writing(db_url: str, model: str, seconds: float, pause: float = 0.0, results=None, stop=None,
                 ready=None) -> dict:
    """A writer process: rewrite the model's neurons round-robin, one transaction each, for `seconds` or
    until `stop` (a multiprocessing Event) is set; sets `ready` (an Event) after its first commit.
    Returns (and puts on `results`, a multiprocessing queue) the commits made and the errors by message."""
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    with sessions() as s:
        material = Material(list(s.scalars(select(Image.id).where(Image.source.like("synthetic:%"))
                                            .order_by(Image.id))),
                            list(s.scalars(select(Word.id).where(Word.text.in_(WORDS)).order_by(Word.rank))))
    material.units = unit_keys(sessions, model)
    report = {"commits": 0, "errors": {}, "units": len(material.units)}
    gen, deadline = 2, time.monotonic() + seconds

    def done() -> bool:
        return time.monotonic() >= deadline or (stop is not None and stop.is_set())

    while not done():
        for uid, key in material.units:
            if done():
                break
            try:
                with sessions.begin() as s:
                    write_unit(s, material, uid, key, gen)
                report["commits"] += 1
                if ready is not None:
                    ready.set()
            except OperationalError as e:
                msg = str(e.orig)
                report["errors"][msg] = report["errors"].get(msg, 0) + 1
            if pause:
                time.sleep(pause)
        gen += 1
    engine.dispose()
    if results is not None:
        results.put(report)
    return report
