"""Sections of the neuron card. Each stage of the worker fills one; each says so when it has no data.

A section is `columns(dialect)`: the subqueries it adds to the page's one statement (app.sections.rows),
`build(values, ctx) -> dict | None`: its data from their values, plus a template under templates/sections/.
A section whose data lives in cached files (modality) reads the row naming them in the statement, and the
files through `ctx.cache`.
Add a stage's section by appending it to all_sections().
"""
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from app.sections.rows import PAGE_UNIT, fetch
from store.keys import UnitKey
from store.schema import UnitStats


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
    twin: bool = True  # for the JSON twin: also the numbers no picture of the HTML page shows (maps as floats)

    def sigma(self, value: float) -> float | None:
        """An activation in standard deviations from zero (the paper's unit)."""
        if self.stats is None or not self.stats.std:
            return None
        return value / self.stats.std


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    columns: Callable[[str], dict[str, Any]]  # by dialect, over rows.UNIT_ID, MODEL_ID, LAYER (the page's unit)
    build: Callable[[dict[str, Any], UnitContext], dict[str, Any] | None]
    empty: str  # what to say (and which command fills it) when there is no data yet
    joins: tuple = ()  # (table, on clause): one-row tables of the unit whose columns `columns` reads directly

    @property
    def template(self) -> str:
        return f"sections/{self.name}.html"


@cache
def all_sections() -> tuple[Section, ...]:
    from app.sections import examples, featurevis, labels, modality, places, stats, studies, words

    return (
        labels.SECTION,
        featurevis.SECTION,
        stats.SECTION,
        examples.SECTION,
        words.SECTION,
        modality.SECTION,
        places.SECTION,
        studies.SECTION,
    )


def context_columns(_dialect: str) -> dict:
    """The unit's ids and names (all None when the URL names no unit) and its statistics (None without)."""
    return {**{c.key: c for c in PAGE_UNIT.c}, **{f"stats_{f}": getattr(UnitStats, f) for f in Stats._fields}}


CONTEXT = Section("unit", "", context_columns, lambda values, _ctx: values, "",  # read, never shown
                  joins=((UnitStats.__table__, UnitStats.unit_id == PAGE_UNIT.c.unit_id),))


def read_page(db: Session | Connection, key: UnitKey, cache: Any = None, twin: bool = True,
              ) -> tuple[UnitContext, dict[str, dict[str, Any] | None]] | None:
    """The unit named by `key` and every section's data, read with one SELECT (so from one snapshot of the
    store); None if the store has no such unit. `twin`: for the JSON twin (else for the HTML page, which
    shows the maps as pictures and needs no float lists of them)."""
    sections = all_sections()
    values = fetch(db, (CONTEXT, *sections), {"model": key.model, "layer": key.layer, "index": key.unit})
    u = values[CONTEXT.name]
    if u["unit_id"] is None:
        return None
    stats = Stats(*(u[f"stats_{f}"] for f in Stats._fields)) if u["stats_n"] is not None else None
    ctx = UnitContext(ModelRef(u["model_id"], u["model_name"]),
                      LayerRef(u["layer_id"], u["layer_name"], u["n_units"], u["model_id"]),
                      UnitRef(u["unit_id"], u["unit_index"]),
                      UnitKey(u["model_name"], u["layer_name"], u["unit_index"]), stats, cache, twin)
    return ctx, {sec.name: sec.build(values[sec.name], ctx) for sec in sections}
