"""Composable objectives: named callables from a render context to one value per image, to maximise.

They accept "layer:unit" strings, combine with + - * / and numbers, and are batched: a unit argument
may be a list with one unit per image, so one optimisation renders a different neuron in each image.
"""
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class Context:
    """What an objective can read: captured activations (B, units, H, W) by layer name, the image, and each
    layer's pooled unit values (B, units): the value the dataset examples rank by (`worker.compute.towers`)."""

    acts: dict[str, torch.Tensor]
    image: torch.Tensor  # (B, 3, H, W) in [0, 1], before any transform
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def value(self, layer: str) -> torch.Tensor:
        """(B, units): the layer's pooled values; the spatial mean of its maps where none were captured."""
        return self.values[layer] if layer in self.values else self.acts[layer].mean(dim=(-2, -1))


Fn = Callable[[Context], torch.Tensor]
Units = int | Sequence[int] | torch.Tensor | None


class Objective:
    """A value per image (shape (B,)) to maximise, and the layers it reads."""

    def __init__(self, fn: Fn, layers: frozenset[str] = frozenset(), name: str = "", second_order: bool = False):
        self.fn, self.layers, self.name = fn, frozenset(layers), name
        self.second_order = second_order  # differentiates through a gradient (needs double backward)

    def __call__(self, ctx: Context) -> torch.Tensor:
        return self.fn(ctx)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    def _combine(self, other, op, symbol: str) -> "Objective":
        if isinstance(other, Objective):
            return Objective(lambda c: op(self(c), other(c)), self.layers | other.layers,
                             f"({self.name} {symbol} {other.name})", self.second_order or other.second_order)
        if isinstance(other, int | float):
            return Objective(lambda c: op(self(c), other), self.layers, f"({self.name} {symbol} {other:g})",
                             self.second_order)
        return NotImplemented

    def __add__(self, other):
        return self._combine(other, lambda a, b: a + b, "+")

    def __radd__(self, other):
        return self._combine(other, lambda a, b: b + a, "+")

    def __sub__(self, other):
        return self._combine(other, lambda a, b: a - b, "-")

    def __rsub__(self, other):
        return self._combine(other, lambda a, b: b - a, "-")

    def __mul__(self, other):
        return self._combine(other, lambda a, b: a * b, "*")

    def __rmul__(self, other):
        return self._combine(other, lambda a, b: b * a, "*")

    def __truediv__(self, other):
        return self._combine(other, lambda a, b: a / b, "/")

    def __neg__(self) -> "Objective":
        return Objective(lambda c: -self(c), self.layers, f"-{self.name}", self.second_order)


def parse_target(target: str, units: Units = None) -> tuple[str, Units]:
    """'layer4:12' -> ('layer4', 12); a bare layer name keeps `units`. Layer names may hold dots."""
    layer, sep, unit = target.rpartition(":")
    if not sep:
        return target, units
    if not unit.isdigit():
        raise ValueError(f"objective target {target!r}: the unit after ':' must be a whole number")
    if units is not None:
        raise ValueError(f"objective target {target!r} names a unit; do not also pass units")
    return layer, int(unit)


def _select(acts: torch.Tensor, units: Units, layer: str) -> torch.Tensor:
    """(B, units, ...) -> (B, ...): per image the unit asked for (one for all, or one per image)."""
    n = acts.shape[1]
    if units is None:
        raise ValueError(f"objective on {layer!r} needs a unit ('{layer}:N' or units=...)")
    idx = torch.as_tensor(units, dtype=torch.long).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"layer {layer!r} has units 0..{n - 1}; asked for {idx.tolist()}")
    if idx.numel() == 1:
        return acts[:, int(idx[0])]
    if idx.numel() != acts.shape[0]:
        raise ValueError(f"{idx.numel()} units for a batch of {acts.shape[0]} images on {layer!r}")
    return acts[torch.arange(acts.shape[0], device=acts.device), idx.to(acts.device)]


def channel(target: str, units: Units = None) -> Objective:
    """The unit's value ('layer:unit', or a layer with one unit per image): the number its dataset examples
    rank by (conv maps: the mean over positions; ViT: the class token, patch mean or attention weighting
    its tower pools by)."""
    layer, units = parse_target(target, units)
    return Objective(lambda c: _select(c.value(layer), units, layer),
                     frozenset({layer}), f"channel {layer}:{_units_name(units)}")


def neuron(target: str, units: Units = None) -> Objective:
    """Activation at the centre position of the map."""
    layer, units = parse_target(target, units)

    def fn(c: Context) -> torch.Tensor:
        a = _select(c.acts[layer], units, layer)
        return a[:, a.shape[-2] // 2, a.shape[-1] // 2]

    return Objective(fn, frozenset({layer}), f"neuron {layer}:{_units_name(units)}")


def direction(layer: str, vector: torch.Tensor) -> Objective:
    """Dot product of the layer's unit values (as `channel` reads them) with a direction ((units,) or (B, units))."""
    def fn(c: Context) -> torch.Tensor:
        values = c.value(layer)
        return (values * vector.to(values.device, values.dtype)).sum(-1)

    return Objective(fn, frozenset({layer}), f"direction {layer}")


def gram_similarity(acts: torch.Tensor, group: int) -> torch.Tensor:
    """Per image, the summed cosine similarity of its Gram matrix with those of the other images of its
    group (consecutive runs of `group` images), divided by the group size: Lucid's diversity term."""
    b, c = acts.shape[:2]
    if b % group:
        raise ValueError(f"a batch of {b} images does not split into diversity groups of {group}")
    f = acts.reshape(b // group, group, c, -1)  # (groups, group, units, positions)
    # <G_i, G_j> = ||F_i F_j^T||^2 uses the smaller of the two inner dimensions (units vs positions)
    if f.shape[-1] <= c:
        inner = torch.einsum("gicp,gjcq->gijpq", f, f).pow(2).sum(dim=(-2, -1))
    else:
        grams = torch.einsum("gicp,gidp->gicd", f, f)
        inner = torch.einsum("gicd,gjcd->gij", grams, grams)
    norms = torch.diagonal(inner, dim1=-2, dim2=-1).clamp_min(1e-20).sqrt()
    cos = inner / (norms[..., :, None] * norms[..., None, :])
    off = cos - torch.diag_embed(torch.diagonal(cos, dim1=-2, dim2=-1))
    return (off.sum(-1) / group).reshape(b)


def diversity(layer: str, group: int) -> Objective:
    """Gram-matrix cosine similarity within each group of `group` images; subtract it (× 1e2) to make a
    neuron's group of images differ: `channel(...) - 1e2 * diversity(layer, n)`."""
    if group < 2:
        raise ValueError("diversity needs groups of at least 2 images")
    return Objective(lambda c: gram_similarity(c.acts[layer], group), frozenset({layer}), f"diversity {layer}")


def l2(constant: float = 0.5, epsilon: float = 1e-6) -> Objective:
    """Euclidean distance of each image from a constant grey (subtract it to penalise)."""
    return Objective(lambda c: torch.sqrt(epsilon + ((c.image - constant) ** 2).sum(dim=(1, 2, 3))),
                     frozenset(), "l2")


def total_variation() -> Objective:
    """Summed absolute differences between neighbouring pixels (subtract it to smooth)."""
    def fn(c: Context) -> torch.Tensor:
        x = c.image
        return ((x[..., 1:, :] - x[..., :-1, :]).abs().sum(dim=(1, 2, 3))
                + (x[..., :, 1:] - x[..., :, :-1]).abs().sum(dim=(1, 2, 3)))

    return Objective(fn, frozenset(), "tv")


def facet(objective: "Objective | str", layer: str, weights: torch.Tensor) -> Objective:
    """Faceted objective f(g(x)) + wᵀ(g(x) ⊙ ∇f(g(x))) with g = activations of the lower `layer` and
    w a linear probe on its channels. w is applied at every position and summed, so the facet term is on
    the scale of f (g ⊙ ∇f is f's first-order attribution over g). The gradient ∇f keeps its graph, so
    the whole term is optimised through it, not treated as a constant."""
    inner = as_objective(objective)

    def fn(c: Context) -> torch.Tensor:
        g = c.acts[layer]
        f = inner(c)
        (grad,) = torch.autograd.grad(f.sum(), g, create_graph=True, allow_unused=True)
        if grad is None:
            raise ValueError(f"facet layer {layer!r} does not feed the objective {inner.name}; pick a lower layer")
        w = weights.to(g.device, g.dtype).view(1, -1, 1, 1)
        return f + (w * g * grad).sum(dim=(1, 2, 3))

    return Objective(fn, inner.layers | {layer}, f"facet[{layer}]({inner.name})", second_order=True)


def as_objective(obj: "Objective | str") -> Objective:
    """An Objective as is; a 'layer:unit' string as its channel objective."""
    if isinstance(obj, Objective):
        return obj
    if isinstance(obj, str):
        return channel(obj)
    raise TypeError(f"not an objective: {obj!r}")


def _units_name(units: Units) -> str:
    if units is None or isinstance(units, int):
        return str(units)
    idx = torch.as_tensor(units).reshape(-1).tolist()
    return str(idx[0]) if len(idx) == 1 else f"[{len(idx)} units]"
