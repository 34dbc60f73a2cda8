"""Activation capture for optimisation: `worker.compute.layers.capture` in graph mode, so the tensor handed to the
objective is the one the rest of the network computes from and gradients *with respect to* a captured
map exist (the faceted objective needs ∇f(g(x))). For a ViT the (B, units, h, w) grid of patch tokens is
a reshaped copy, so the tower continues from tokens rebuilt from that grid. Each layer's pooled value
(what the examples rank by: `worker.compute.towers`) comes with it."""
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from worker.compute.layers import capture, forward_visual
from worker.compute.models import LoadedModel


@contextmanager
def capture_graph(loaded: LoadedModel, names: list[str]) -> Iterator[tuple[dict, dict]]:
    """(maps, values): filled by `forward` with each named layer's maps (B, units, H, W) and pooled values
    (B, units), both part of the graph."""
    maps: dict[str, torch.Tensor] = {}
    values: dict[str, torch.Tensor] = {}
    with capture(loaded, names, ("value",), pooled=True, stop_early=True, graph=True) as got:
        yield maps, values
        for n in names:
            if (n, "value") in got.raw:
                maps[n], values[n] = got.grid(n), got.pooled(n)


def forward(loaded: LoadedModel, images: torch.Tensor) -> None:
    """Run the image tower until `capture_graph` has every layer it asked for."""
    forward_visual(loaded, images)
