"""Sections of the neuron card. Each stage of the worker fills one; each says so when it has no data.

A section is a loader `(session, ctx) -> dict | None` plus a template under templates/sections/.
Add a stage's section by appending it to SECTIONS.
"""
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.db import Layer, Model, Unit, UnitStats
from app.keys import UnitKey


@dataclass
class UnitContext:
    model: Model
    layer: Layer
    unit: Unit
    key: UnitKey
    stats: UnitStats | None
    cache: Any = None  # app.cache.Cache: for sections whose data lives in cached files

    def sigma(self, value: float) -> float | None:
        """An activation in standard deviations from zero (the paper's unit)."""
        if self.stats is None or not self.stats.std:
            return None
        return value / self.stats.std


@dataclass
class Section:
    name: str
    title: str
    load: Callable[[Session, UnitContext], dict[str, Any] | None]
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
