"""Which layers of an open_clip image tower hold neurons, and how to read their activations.

The catalogue is data: one entry per image-tower class, listing how to enumerate its layers.
Every captured activation is returned as (batch, units, height, width): conv maps as they are,
ViT MLP hidden units as the grid of patch tokens (the class token is dropped).
"""
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from worker.models import LoadedModel


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


@dataclass(frozen=True)
class Family:
    """How to enumerate one kind of image tower's neuron layers."""

    blocks: Callable[[nn.Module], list[tuple[str, str]]]  # visual -> [(layer name, module path)]
    kind: str
    pre_relu: Callable[[nn.Module], nn.Module] | None = None  # layer -> module whose input is pre-ReLU


def _resnet_blocks(visual: nn.Module) -> list[tuple[str, str]]:
    return [(f"layer{i}", f"layer{i}") for i in range(1, 5) if hasattr(visual, f"layer{i}")]


def _resnet_units(module: nn.Module) -> int:
    return module[-1].conv3.out_channels


def _vit_blocks(visual: nn.Module) -> list[tuple[str, str]]:
    n = len(visual.transformer.resblocks)
    return [(f"resblocks.{i}.mlp", f"transformer.resblocks.{i}.mlp.gelu") for i in range(n)]


CATALOGUE: dict[str, Family] = {
    "ModifiedResNet": Family(_resnet_blocks, "conv", pre_relu=lambda layer: layer[-1].act3),
    "VisionTransformer": Family(_vit_blocks, "mlp"),
}


def family_of(loaded: LoadedModel) -> Family:
    name = type(loaded.visual).__name__
    if name not in CATALOGUE:
        raise ValueError(f"no layer catalogue for image tower {name}; known: {', '.join(CATALOGUE)}")
    return CATALOGUE[name]


def n_units(visual: nn.Module, path: str) -> int:
    module = visual.get_submodule(path)
    if path.endswith(".mlp.gelu"):
        return visual.get_submodule(path.removesuffix(".gelu")).c_fc.out_features
    return _resnet_units(module)


def catalogue(loaded: LoadedModel) -> list[LayerSpec]:
    """The model's neuron layers, penultimate (last) one marked default. Module paths are under `visual.`."""
    fam = family_of(loaded)
    blocks = fam.blocks(loaded.visual)
    return [LayerSpec(name, f"visual.{path}", n_units(loaded.visual, path), fam.kind, i == len(blocks) - 1)
            for i, (name, path) in enumerate(blocks)]


def layer_spec(loaded: LoadedModel, name: str | None = None) -> LayerSpec:
    """One layer by name (default: the penultimate layer)."""
    specs = catalogue(loaded)
    for spec in specs:
        if spec.name == name or (name is None and spec.is_default):
            return spec
    raise UnknownLayer(f"{loaded.arch} has no layer {name!r}; layers: {', '.join(s.name for s in specs)}")


def to_grid(x: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    """(B, C, H, W) as is; transformer tokens (B, T, C) -> (B, C, h, w) of the patch tokens."""
    if x.dim() == 4:
        return x
    if not batch_first:
        x = x.transpose(0, 1)
    tokens = x[:, 1:, :]
    side = int(round(tokens.shape[1] ** 0.5))
    if side * side != tokens.shape[1]:
        return tokens.transpose(1, 2).unsqueeze(2)
    return tokens.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


class _Stop(Exception):
    pass


def layer_paths(loaded: LoadedModel, names: list[str]) -> tuple[dict[str, str], bool]:
    """Each catalogued layer's module path inside the image tower (UnknownLayer if a name is not one), and
    whether the tower's token outputs are batch-first."""
    paths = {spec.name: spec.module.removeprefix("visual.") for spec in catalogue(loaded)}
    missing = [n for n in names if n not in paths]
    if missing:
        raise UnknownLayer(f"unknown layers {missing}; layers: {', '.join(paths)}")
    return paths, getattr(getattr(loaded.visual, "transformer", None), "batch_first", True)


@contextmanager
def capture(loaded: LoadedModel, names: list[str], pre_relu: bool = False,
            stop_early: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record the named layers' activations (B, units, H, W) during forward passes of the image tower.

    pre_relu: read a ResNet layer before its final ReLU (for most-negative examples).
    stop_early: abort the forward once every layer is captured (use `forward_visual`).
    """
    fam = family_of(loaded)
    visual = loaded.visual
    paths, batch_first = layer_paths(loaded, names)
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def record(name: str, value: torch.Tensor) -> None:
        acts[name] = to_grid(value, batch_first)
        if stop_early and len(acts) == len(names):
            raise _Stop

    for name in names:
        if pre_relu and fam.pre_relu is not None:
            module = fam.pre_relu(visual.get_submodule(paths[name]))
            # act3 is an in-place ReLU: its input must be cloned before it is overwritten
            handles.append(module.register_forward_pre_hook(
                lambda _m, inp, n=name: record(n, inp[0].clone())))
        else:
            module = visual.get_submodule(paths[name])
            handles.append(module.register_forward_hook(lambda _m, _i, out, n=name: record(n, out)))
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


def forward_visual(loaded: LoadedModel, images: torch.Tensor) -> None:
    """Run the image tower, tolerating an early stop requested by `capture(stop_early=True)`."""
    try:
        loaded.visual(images)
    except _Stop:
        pass


def activations(loaded: LoadedModel, images: torch.Tensor, names: list[str],
                pre_relu: bool = False) -> dict[str, torch.Tensor]:
    """The named layers' activations for a batch of preprocessed images, stopping as early as possible."""
    with capture(loaded, names, pre_relu=pre_relu, stop_early=True) as acts:
        forward_visual(loaded, images)
    return dict(acts)
