"""The canonical neuron key: model / layer / unit. Database key, cache path and URL all use it."""
import re
from dataclasses import dataclass

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")


class KeyError_(ValueError):
    """A key part that can never name a neuron (bad characters, negative unit)."""


def check_name(part: str, what: str) -> str:
    if not NAME_RE.match(part) or part.endswith(".json"):
        raise KeyError_(f"{what} name {part!r} must be letters, digits and _ . @ + - (max 128)")
    return part


def parse_unit(text: str) -> int:
    if not text.isdigit():
        raise KeyError_(f"unit must be a non-negative whole number, got {text!r}")
    return int(text)


@dataclass(frozen=True, order=True)
class UnitKey:
    model: str
    layer: str
    unit: int

    @property
    def path(self) -> str:
        return f"{self.model}/{self.layer}/{self.unit}"

    def __str__(self) -> str:
        return self.path

    @classmethod
    def parse(cls, text: str) -> "UnitKey":
        parts = text.strip("/").split("/")
        if len(parts) != 3:
            raise KeyError_(f"a neuron key is model/layer/unit, got {text!r}")
        model, layer, unit = parts
        return cls(check_name(model, "model"), check_name(layer, "layer"), parse_unit(unit))
