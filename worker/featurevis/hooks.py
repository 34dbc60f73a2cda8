"""Activation capture for optimisation: like `worker.layers.capture`, but the tensor handed to the
objective is the one the rest of the network computes from, so gradients *with respect to* a captured
activation exist (the faceted objective needs ∇f(g(x))). For a ViT the (B, units, h, w) grid of patch
tokens is a reshaped copy; the hook therefore rebuilds the layer's token output from that grid."""
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from worker.layers import layer_paths, to_grid
from worker.models import LoadedModel


class _Captured(Exception):
    """Every layer asked for has been seen: the rest of the tower need not run."""


def _tokens_from_grid(out: torch.Tensor, grid: torch.Tensor, batch_first: bool) -> torch.Tensor:
    tokens = out if batch_first else out.transpose(0, 1)
    rebuilt = torch.cat([tokens[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
    return rebuilt if batch_first else rebuilt.transpose(0, 1)


@contextmanager
def capture_graph(loaded: LoadedModel, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the named layers' activations (B, units, H, W) as part of the graph; run with `forward`."""
    visual = loaded.visual
    paths, batch_first = layer_paths(loaded, names)
    acts: dict[str, torch.Tensor] = {}

    def hook(name: str, out: torch.Tensor) -> torch.Tensor | None:
        acts[name] = grid = to_grid(out, batch_first)
        if len(acts) == len(names):
            raise _Captured
        return None if grid is out else _tokens_from_grid(out, grid, batch_first)

    handles = [visual.get_submodule(paths[n]).register_forward_hook(lambda _m, _i, out, n=n: hook(n, out))
               for n in names]
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


def forward(loaded: LoadedModel, images: torch.Tensor) -> None:
    """Run the image tower until `capture_graph` has every layer it asked for."""
    try:
        loaded.visual(images)
    except _Captured:
        pass
