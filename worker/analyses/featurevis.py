"""The featurevis stage: render a layer's neurons (plain, a diversity strip, one image per facet) in
batches of neurons and store each image with its objective, settings and run.

Pure compute (`render_variant`) is split from the thin write (`write_unit`); each unit's new images are
written in one transaction. A unit whose images with the same settings hash exist is skipped, so a killed
run resumes where it stopped.
"""
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image as PILImage
from sqlalchemy import delete, select, tuple_

from store.keys import UnitKey
from store.schema import FeatureVis, Layer, Model, Unit
from store.writes import Store
from worker.analyses.facets import StoredProbe
from worker.compute.featurevis import objectives as O
from worker.compute.featurevis.render import RenderSettings, render
from worker.compute.featurevis.speed import fast_model
from worker.compute.models import LoadedModel

FV_VERSION = 2  # bump when a code change alters the images rendered for the same settings (2: channel
# objectives climb the unit's value — ResNets before the final ReLU, ViTs the pooled token value)
DIVERSITY_WEIGHT = 1e2
OBJECTIVES = {"channel": O.channel, "neuron": O.neuron}


@dataclass(frozen=True)
class FeatureVisSettings:
    """How a layer is rendered. `batch` is images per optimisation; it changes speed, not the images."""

    render: RenderSettings = field(default_factory=RenderSettings)
    seed: int = 0
    batch: int = 8
    diversity: int = 0  # images per neuron in the diversity strip; 0 = no strip
    objective: str = "channel"  # channel (the unit's value, as examples rank it) | neuron (centre position)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.batch < 1 or self.render.steps < 1:
            raise ValueError("batch and steps must be at least 1")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in 0 .. 2**31 - 1, got {self.seed}")
        if self.diversity == 1 or self.diversity < 0:
            raise ValueError("--diversity needs 0 (none) or at least 2 images per neuron")

    def as_dict(self) -> dict:
        return {"render": self.render.as_dict(), "seed": self.seed, "batch": self.batch,
                "diversity": self.diversity, "objective": self.objective}


@dataclass(frozen=True)
class Variant:
    """One kind of picture per unit: its stored kinds (several for a diversity strip), the settings hash
    that says when it is already done, and how to build its batched objective."""

    name: str
    kinds: tuple[str, ...]
    settings_hash: str
    objective: Callable[[str, list[int]], O.Objective]  # (layer, one unit per image) -> objective


@dataclass
class Picture:
    kind: str
    image: torch.Tensor  # (3, H, W) in [0, 1]
    objective: float


def settings_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def image_seed(seed: int, unit: int, kind: str) -> int:
    """Image (unit, kind)'s own seed: independent of which units share its batch."""
    digest = hashlib.blake2b(f"{seed}/{unit}/{kind}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


def variants(settings: FeatureVisSettings, arch: str, weights: str | None, layer: str,
             probes: dict[str, StoredProbe] | None = None) -> list[Variant]:
    """Plain, then the diversity strip (if asked), then one per facet probe."""
    base = {"v": FV_VERSION, "arch": arch, "weights": weights, "layer": layer, "seed": settings.seed,
            "objective": settings.objective, "render": settings.render.as_dict()}
    unit_objective = OBJECTIVES[settings.objective]
    out = [Variant("plain", ("plain",), settings_hash(base), lambda la, units: unit_objective(la, units))]
    n = settings.diversity
    if n:
        def diverse(la: str, units: list[int]) -> O.Objective:
            return unit_objective(la, units) - DIVERSITY_WEIGHT * O.diversity(la, n)

        out.append(Variant("diversity", tuple(f"diversity-{i}" for i in range(n)),
                           settings_hash({**base, "diversity": n, "weight": DIVERSITY_WEIGHT}), diverse))
    for name, probe in sorted((probes or {}).items()):
        def faceted(la: str, units: list[int], p: StoredProbe = probe) -> O.Objective:
            return O.facet(unit_objective(la, units), p.layer, p.weights)

        out.append(Variant(f"facet:{name}", (f"facet:{name}",),
                           settings_hash({**base, "facet": name, "facet_layer": probe.layer, "probe": probe.digest}),
                           faceted))
    return out


def render_variant(loaded: LoadedModel, layer: str, units: Sequence[int], variant: Variant,
                   settings: FeatureVisSettings, on_step=None) -> dict[int, list[Picture]]:
    """Render `variant` for `units` in one optimisation: image i optimises its own unit (a diversity
    strip puts a unit's images side by side). Returns each unit's pictures."""
    per_unit = len(variant.kinds)
    image_units = [u for u in units for _ in range(per_unit)]
    seeds = [image_seed(settings.seed, u, k) for u in units for k in variant.kinds]
    result = render(loaded, variant.objective(layer, image_units), seeds, settings.render, on_step=on_step)
    out: dict[int, list[Picture]] = {}
    for i, u in enumerate(image_units):
        kind = variant.kinds[i % per_unit]
        out.setdefault(u, []).append(Picture(kind, result.images[i], float(result.objective[i])))
    return out


def to_pil(image: torch.Tensor) -> PILImage.Image:
    # numpy, not torch: tiny per-image torch ops pay a thread-pool round trip each on a busy machine
    array = np.clip(image.numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return PILImage.fromarray(np.ascontiguousarray(array), "RGB")


def done_kinds(store: Store, layer_id: int, units: Sequence[int]) -> dict[int, set[tuple[str, str]]]:
    """{unit index: {(kind, settings_hash)}} already stored for these units."""
    out: dict[int, set[tuple[str, str]]] = {u: set() for u in units}
    with store.sessions() as s:
        for chunk in range(0, len(units), 500):
            rows = s.execute(select(Unit.index, FeatureVis.kind, FeatureVis.settings_hash)
                             .join(FeatureVis, FeatureVis.unit_id == Unit.id)
                             .where(Unit.layer_id == layer_id, Unit.index.in_(list(units[chunk:chunk + 500]))))
            for index, kind, h in rows:
                out[index].add((kind, h))
    return out


def pending(store: Store, layer_id: int, units: Sequence[int], wanted: list[Variant]) -> dict[int, list[Variant]]:
    """The variants each unit still lacks (a strip counts as missing unless every image of it is there)."""
    done = done_kinds(store, layer_id, units)
    todo = {u: [v for v in wanted if any((k, v.settings_hash) not in done[u] for k in v.kinds)] for u in units}
    return {u: vs for u, vs in todo.items() if vs}


def write_unit(store: Store, model: str, layer: Layer, unit: int, unit_id: int,
               pictures: list[tuple[Variant, Picture]], settings: FeatureVisSettings, run_id: int | None) -> None:
    """Store one unit's new pictures: files first, then all its rows in one transaction."""
    key = UnitKey(model, layer.name, unit)
    rows = []
    for variant, pic in pictures:
        img = to_pil(pic.image)
        path = store.cache.put_unit_image(key, f"featurevis/{pic.kind.replace(':', '-')}-{variant.settings_hash[:12]}",
                                          img, fmt="png")
        rows.append(FeatureVis(unit_id=unit_id, kind=pic.kind, image=path, thumb=store.cache.put_thumb(img),
                               objective=pic.objective, steps=settings.render.steps, size=img.width,
                               seed=settings.seed, settings_hash=variant.settings_hash, run_id=run_id))
    with store.sessions.begin() as s:
        # a strip is rendered again whole when one of its images was missing: replace what is left of it
        s.execute(delete(FeatureVis).where(FeatureVis.unit_id == unit_id,
                                           tuple_(FeatureVis.kind, FeatureVis.settings_hash)
                                           .in_([(r.kind, r.settings_hash) for r in rows])))
        s.add_all(rows)


def unit_ids(store: Store, layer_id: int, units: Sequence[int]) -> dict[int, int]:
    with store.sessions() as s:
        rows = s.execute(select(Unit.index, Unit.id).where(Unit.layer_id == layer_id, Unit.index.in_(list(units))))
        return {index: uid for index, uid in rows}


def get_layer(store: Store, model: str, layer: str) -> Layer:
    with store.sessions() as s:
        row = s.scalar(select(Layer).join(Model).where(Model.name == model, Layer.name == layer))
        if row is None:
            have = ", ".join(s.scalars(select(Layer.name).join(Model).where(Model.name == model))) or "none"
            raise ValueError(f"model {model!r} has no layer {layer!r} in the store; layers: {have}")
        return row


def check_units(units: Sequence[int] | None, n_units: int, layer: str) -> list[int]:
    if units is None:
        return list(range(n_units))
    bad = [u for u in units if not 0 <= u < n_units]
    if bad:
        raise ValueError(f"layer {layer} has units 0..{n_units - 1}; asked for {bad[:5]}")
    return sorted(set(units))


def run_layer(store: Store, loaded: LoadedModel, model: str, layer: str, units: Sequence[int] | None,
              settings: FeatureVisSettings, probes: dict[str, StoredProbe] | None = None,
              run_id: int | None = None, progress: bool = False, channels_last: bool = True) -> dict:
    """Render every pending unit of `layer` in chunks of `settings.batch` neurons and store the images.
    Renders through a faster copy of the model (`speed.fast_model`). Returns a report: units rendered and
    skipped, images written, seconds per neuron."""
    from tqdm import tqdm

    layer_row = get_layer(store, model, layer)
    with store.sessions() as s:
        arch, weights = s.execute(select(Model.arch, Model.weights).where(Model.name == model)).one()
    wanted = variants(settings, arch, weights, layer, probes)
    units = check_units(units, layer_row.n_units, layer)
    todo = pending(store, layer_row.id, units, wanted)
    report = {"units": len(units), "rendered": 0, "skipped": len(units) - len(todo), "images": 0,
              "kinds": [k for v in wanted for k in v.kinds]}
    started = time.perf_counter()
    if todo:
        loaded = fast_model(loaded, channels_last)
    order = sorted(todo)
    bar = tqdm(total=len(order), desc=f"featurevis {model}/{layer}", unit="neuron", disable=not progress)
    steps = tqdm(total=0, desc="steps", leave=False, disable=not progress)
    for start in range(0, len(order), settings.batch):
        chunk = order[start:start + settings.batch]
        made = render_chunk(loaded, layer, chunk, todo, settings, steps)
        ids = unit_ids(store, layer_row.id, chunk)
        for unit in chunk:
            write_unit(store, model, layer_row, unit, ids[unit], made[unit], settings, run_id)
            report["images"] += len(made[unit])
        report["rendered"] += len(chunk)
        bar.update(len(chunk))
    steps.close()
    bar.close()
    seconds = time.perf_counter() - started
    report.update(seconds=round(seconds, 3),
                  seconds_per_neuron=round(seconds / report["rendered"], 3) if report["rendered"] else None)
    return report


def render_chunk(loaded: LoadedModel, layer: str, chunk: list[int], todo: dict[int, list[Variant]],
                 settings: FeatureVisSettings, steps_bar) -> dict[int, list[tuple[Variant, Picture]]]:
    """Every pending variant of a chunk of units, each variant as batched optimisations."""
    made: dict[int, list[tuple[Variant, Picture]]] = {u: [] for u in chunk}
    variants_here = list(dict.fromkeys(v for u in chunk for v in todo[u]))
    for variant in variants_here:
        needing = [u for u in chunk if variant in todo[u]]
        per_job = max(1, settings.batch // len(variant.kinds))
        for i in range(0, len(needing), per_job):
            steps_bar.reset(total=settings.render.steps)
            steps_bar.set_description(f"{variant.name} {len(needing[i:i + per_job])} neurons")
            pictures = render_variant(loaded, layer, needing[i:i + per_job], variant, settings,
                                      on_step=lambda *_: steps_bar.update(1))
            for unit, pics in pictures.items():
                made[unit].extend((variant, p) for p in pics)
    return made
