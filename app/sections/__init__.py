"""Sections of the neuron card. Each stage of the worker fills one; each says so when it has no data.

A section is `columns(dialect)`: the subqueries it adds to the page's one statement (app.sections.rows),
`build(values, ctx) -> dict | None`: its data from their values, plus a template under templates/sections/.
A section whose data lives in cached files (modality) reads the row naming them in the statement, and the
files through `ctx.cache`.
Add a stage's section by appending it to all_sections().
"""
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy.orm import Session

from store.keys import UnitKey


class ModelRef(NamedTuple):
    id: int
    name: str


class LayerRef(NamedTuple):
    id: int
    name: str
    n_units: int
    model_id: int


class UnitRef(NamedTuple):
    id: int
    index: int


class Stats(NamedTuple):
    """A unit's unit_stats row."""

    n: int
    mean: float
    std: float
    min: float
    max: float
    quantiles: dict
    histogram: dict


@dataclass
class UnitContext:
    """The unit a page is about, as plain rows read with one Core statement (app.views.browse.unit_context)."""

    model: ModelRef
    layer: LayerRef
    unit: UnitRef
    key: UnitKey
    stats: Stats | None
    cache: Any = None  # store.cache.Cache: for sections whose data lives in cached files

    def sigma(self, value: float) -> float | None:
        """An activation in standard deviations from zero (the paper's unit)."""
        if self.stats is None or not self.stats.std:
            return None
        return value / self.stats.std


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    columns: Callable[[str], dict[str, Any]]  # by dialect, over rows.UNIT_ID, MODEL_ID, LAYER
    build: Callable[[dict[str, Any], UnitContext], dict[str, Any] | None]
    empty: str  # what to say (and which command fills it) when there is no data yet

    @property
    def template(self) -> str:
        return f"sections/{self.name}.html"


def all_sections() -> list[Section]:
    from app.sections import examples, featurevis, labels, modality, places, stats, studies, words

    return [
        labels.SECTION,
        featurevis.SECTION,
        stats.SECTION,
        examples.SECTION,
        words.SECTION,
        modality.SECTION,
        places.SECTION,
        studies.SECTION,
    ]


def load_sections(session: Session, ctx: UnitContext, sections: list[Section]) -> dict[str, dict[str, Any] | None]:
    """Every section's data, read with one SELECT (in the session's snapshot)."""
    from app.sections.rows import fetch

    params = {"unit_id": ctx.unit.id, "model_id": ctx.model.id, "layer": ctx.layer.name}
    values = fetch(session, tuple(sections), params)
    return {sec.name: sec.build(values[sec.name], ctx) for sec in sections}
