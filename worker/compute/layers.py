"""Which layers of an open_clip image tower hold neurons, and how to read their activations.

What a neuron is in each tower family, and what its embedding reads of it, is data in
`worker.compute.towers.FAMILIES`; this module turns that into layer specs and captured activations.
A layer's map comes as (batch, units, height, width): conv maps as they are, transformer MLP units as
the grid of patch tokens (prefix tokens dropped). Its pooled value comes as (batch, units): the
family's pooling of the same tensor (class token, patch mean, attention-pool weighting or map mean).
"""
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from worker.compute.models import LoadedModel
from worker.compute.towers import Family, NeuronLayer, Tap, family_of_visual, value_description

TAPS = ("write", "value", "negative")


@dataclass
class LayerSpec:
    """A layer as the store registers it: its name, module path in the model, unit count and kind."""

    name: str
    module: str
    n_units: int
    kind: str = "conv"
    is_default: bool = False


class UnknownLayer(ValueError):
    """No layer of that name in the model's catalogue."""


def family_of(loaded: LoadedModel) -> Family:
    """The tower's family (Unsupported, one line, if it has none)."""
    return family_of_visual(loaded.visual)


def neuron_layers(loaded: LoadedModel) -> list[NeuronLayer]:
    return family_of(loaded).layers(loaded.visual)


def catalogue(loaded: LoadedModel) -> list[LayerSpec]:
    """The model's neuron layers, penultimate (last) one marked default. Module paths are under `visual.`."""
    fam, layers = family_of(loaded), neuron_layers(loaded)
    return [LayerSpec(la.name, f"visual.{la.write.path}", la.n_units, fam.kind, i == len(layers) - 1)
            for i, la in enumerate(layers)]


def layer_spec(loaded: LoadedModel, name: str | None = None) -> LayerSpec:
    """One layer by name (default: the penultimate layer)."""
    specs = catalogue(loaded)
    for spec in specs:
        if spec.name == name or (name is None and spec.is_default):
            return spec
    raise UnknownLayer(f"{loaded.arch} has no layer {name!r}; layers: {', '.join(s.name for s in specs)}")


def signal_description(loaded: LoadedModel) -> str:
    """Which value of a unit the examples, probes and feature vis show, in words (stored with each run)."""
    return value_description(loaded.visual)


def to_grid(x: torch.Tensor, batch_first: bool = True, prefix: int = 1) -> torch.Tensor:
    """(B, C, H, W) as is; transformer tokens (B, T, C) -> (B, C, h, w) of the patch tokens."""
    if x.dim() == 4:
        return x
    if not batch_first:
        x = x.transpose(0, 1)
    tokens = x[:, prefix:, :]
    side = int(round(tokens.shape[1] ** 0.5))
    if side * side != tokens.shape[1]:
        return tokens.transpose(1, 2).unsqueeze(2)
    return tokens.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def tokens_from_grid(out: torch.Tensor, grid: torch.Tensor, batch_first: bool, prefix: int) -> torch.Tensor:
    """The inverse of `to_grid`: `out`'s prefix tokens followed by the grid's positions as tokens."""
    tokens = out if batch_first else out.transpose(0, 1)
    rebuilt = torch.cat([tokens[:, :prefix], grid.flatten(2).transpose(1, 2)], dim=1)
    return rebuilt if batch_first else rebuilt.transpose(0, 1)


class _Stop(Exception):
    pass


@dataclass
class Captured:
    """What one forward recorded: each (layer, tap)'s tensor as the tower passes it on, and the attention
    pool's token weights (B, tokens) where the family pools by attention."""

    family: Family
    prefix: int
    batch_first: bool
    pooling: str
    raw: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    alpha: torch.Tensor | None = None
    grids: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)  # graph mode: the grid itself

    def grid(self, name: str, tap: str = "value") -> torch.Tensor:
        key = (name, tap)
        return self.grids[key] if key in self.grids else to_grid(self.raw[key], self.batch_first, self.prefix)

    def pooled(self, name: str, tap: str = "value") -> torch.Tensor:
        """(B, units): the family's pooling of the layer's tap (what the embedding reads of it)."""
        x = _at_least_float32(self.raw[(name, tap)])
        if x.dim() == 4:
            return x.mean(dim=(2, 3))
        tokens = x if self.batch_first else x.transpose(0, 1)
        if self.pooling == "cls":
            return tokens[:, 0]
        if self.pooling == "patches":
            return tokens[:, self.prefix:].mean(dim=1)
        if self.alpha is None:
            raise RuntimeError("attention pooling needs the pool's weights: capture with pooled=True")
        alpha = self.alpha.to(tokens.dtype)
        return (alpha[:, :, None] * tokens[:, -alpha.shape[1]:]).sum(dim=1)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 (autocast) sums in float32; float64 stays (gradient checks need it)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def layer_taps(loaded: LoadedModel, names: list[str]) -> dict[str, NeuronLayer]:
    layers = {la.name: la for la in neuron_layers(loaded)}
    missing = [n for n in names if n not in layers]
    if missing:
        raise UnknownLayer(f"unknown layers {missing}; layers: {', '.join(layers)}")
    return {n: layers[n] for n in names}


def layer_paths(loaded: LoadedModel, names: list[str]) -> tuple[dict[str, str], bool]:
    """Each catalogued layer's module path inside the image tower (UnknownLayer if a name is not one), and
    whether the tower's token outputs are batch-first."""
    layers = layer_taps(loaded, list({la.name for la in neuron_layers(loaded)} if not names else names))
    return {n: la.write.path for n, la in layers.items()}, family_of(loaded).batch_first(loaded.visual)


def _attention_weights(module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    """(B, tokens): the pool's attention from its first query, averaged over heads (open_clip's
    AttentionalPooler's nn.MultiheadAttention, or timm's AttentionPoolLatent)."""
    if isinstance(module, nn.MultiheadAttention):
        q, k, v = args[:3]
        _, weights = module.forward(q, k, v, need_weights=True, average_attn_weights=True)
        return weights[:, 0]
    x = args[0]
    b, n, c = x.shape
    if getattr(module, "pos_embed", None) is not None:
        x = x + module.pos_embed.unsqueeze(0).to(x.dtype)
    q = module.q(module.latent.expand(b, -1, -1)).reshape(b, -1, module.num_heads, module.head_dim).transpose(1, 2)
    k = module.kv(x).reshape(b, n, 2, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)[0]
    q, k = module.q_norm(q), module.k_norm(k)
    return ((q * module.scale) @ k.transpose(-2, -1)).softmax(dim=-1)[:, :, 0].mean(dim=1)


def _attention_module(loaded: LoadedModel, path: str) -> nn.Module:
    module = loaded.visual.get_submodule(path)
    return getattr(module, "attn", module) if isinstance(getattr(module, "attn", None), nn.MultiheadAttention) \
        else module


@contextmanager
def capture(loaded: LoadedModel, names: list[str], taps: tuple[str, ...] = ("value",), pooled: bool = False,
            stop_early: bool = False, graph: bool = False) -> Iterator[Captured]:
    """Record the named layers' taps during forward passes of the image tower.

    pooled: also record what the family's pooling needs (the attention pool's weights, held fixed).
    stop_early: abort the forward once everything is recorded (run it with `forward_visual`).
    graph: the recorded grid is the tensor the tower continues from, so gradients with respect to a map
    exist (feature vis); otherwise recorded tensors are detached copies where the next module is in-place.
    """
    fam, visual = family_of(loaded), loaded.visual
    layers = layer_taps(loaded, names)
    pooling = fam.pooling(visual) if pooled else "mean"
    got = Captured(fam, fam.prefix(visual), fam.batch_first(visual), pooling)
    want = {(n, t) for n in names for t in taps}
    attention = fam.attention(visual) if pooled and pooling == "attention" else None

    def done() -> None:
        if stop_early and want <= got.raw.keys() and (attention is None or got.alpha is not None):
            raise _Stop

    def record(key: tuple[str, str], value: torch.Tensor, before: bool) -> torch.Tensor:
        """Keep the tap's tensor; return what the module is to receive (`before`: the module's input)."""
        if graph and value.dim() == 3:  # the grid becomes an input of the rest of the tower
            got.grids[key] = grid = to_grid(value, got.batch_first, got.prefix)
            value = tokens_from_grid(value, grid, got.batch_first, got.prefix)
        # ResNet's act3 is an in-place ReLU: what it receives must not be the tensor kept
        got.raw[key] = value.clone() if before and not graph else value
        done()
        return value.clone() if before and graph else value

    by_tap: dict[Tap, list[tuple[str, str]]] = {}
    for key in sorted(want):
        by_tap.setdefault(getattr(layers[key[0]], key[1]), []).append(key)
    handles = [_hook(visual, tap, keys, record) for tap, keys in by_tap.items()]
    if attention is not None:
        def weights(module, args, kwargs, _out=None):
            got.alpha = _attention_weights(module, args, kwargs).detach()
            done()
        handles.append(_attention_module(loaded, attention).register_forward_pre_hook(weights, with_kwargs=True))
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def _hook(visual: nn.Module, tap: Tap, keys: list[tuple[str, str]], record):
    module = visual.get_submodule(tap.path)

    def run(value: torch.Tensor) -> torch.Tensor:
        for key in keys:
            value = record(key, value, tap.where == "input")
        return value

    if tap.where == "input":
        return module.register_forward_pre_hook(lambda _m, inp: (run(inp[0]), *inp[1:]))
    return module.register_forward_hook(lambda _m, _i, out: run(out))


def forward_visual(loaded: LoadedModel, images: torch.Tensor) -> None:
    """Run the image tower, tolerating an early stop requested by `capture(stop_early=True)`."""
    try:
        loaded.visual(images)
    except _Stop:
        pass


def activations(loaded: LoadedModel, images: torch.Tensor, names: list[str],
                tap: str = "value") -> dict[str, torch.Tensor]:
    """The named layers' maps (B, units, H, W) at `tap` for a batch of preprocessed images, stopping as
    early as possible. "value" (the unit's signal: ResNets before the final ReLU), "write" (what the
    next module reads: ResNets after it), "negative" (the pre-activation)."""
    with capture(loaded, names, (tap,), stop_early=True) as got:
        forward_visual(loaded, images)
    return {n: got.grid(n, tap) for n in names}


@dataclass
class Reading:
    """One layer's signals for a batch: pooled (B, units) and as maps (B, units, H, W)."""

    value: torch.Tensor
    negative: torch.Tensor
    heat: torch.Tensor
    heat_negative: torch.Tensor


def readings(loaded: LoadedModel, images: torch.Tensor, names: list[str]) -> dict[str, Reading]:
    """Each named layer's value and negative signal, pooled as the embedding pools them, and their maps."""
    with capture(loaded, names, ("value", "negative"), pooled=True, stop_early=True) as got:
        forward_visual(loaded, images)
    return {n: Reading(got.pooled(n), got.pooled(n, "negative"), got.grid(n), got.grid(n, "negative"))
            for n in names}


def pooled(loaded: LoadedModel, images: torch.Tensor, layer: str, taps: tuple[str, ...]) -> list[torch.Tensor]:
    """The layer's taps, each pooled as the embedding pools it ((B, units) each, in `taps`' order)."""
    with capture(loaded, [layer], taps, pooled=True, stop_early=True) as got:
        forward_visual(loaded, images)
    return [got.pooled(layer, t) for t in taps]


def unit_values(loaded: LoadedModel, images: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (B, units), maps (B, units, H, W)) of one layer: the numbers the examples rank by."""
    r = readings(loaded, images, [layer])[layer]
    return r.value, r.heat
