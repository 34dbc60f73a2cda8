"""Composable image transforms for robust feature visualization: small (images, draws) -> images callables.

Unlike Lucent, every image of a batch gets its own random offset, scale and angle, drawn from its own
seeded stream (`Draws`), so an image's transforms do not depend on which other images share its batch.
"""
import math
import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


class Draws:
    """One random stream per image of a batch, each seeded independently. Plain Python generators: a few
    numbers per image and step need no tensor ops (each of which costs a thread-pool round trip)."""

    def __init__(self, seeds: Sequence[int]):
        self.generators = [random.Random(int(s)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def uniform(self, low: float, high: float) -> torch.Tensor:
        """One value per image, uniform in [low, high)."""
        return torch.tensor([low + (high - low) * g.random() for g in self.generators], dtype=torch.float32)

    def integers(self, high: int) -> list[int]:
        """One whole number per image, uniform in [0, high)."""
        return [min(int(g.random() * high), high - 1) for g in self.generators]


Transform = Callable[[torch.Tensor, Draws], torch.Tensor]


def compose(*transforms: Transform) -> Transform:
    """Apply transforms left to right."""
    def apply(x: torch.Tensor, draws: Draws) -> torch.Tensor:
        for t in transforms:
            x = t(x, draws)
        return x

    return apply


def pad(width: int, value: float = 0.5) -> Transform:
    """Pad every side by `width` pixels of a constant (grey by default)."""
    return lambda x, _draws: F.pad(x, [width] * 4, mode="constant", value=value)


def jitter(d: int) -> Transform:
    """Crop each image to (H - d, W - d) at its own random offset in [0, d]."""
    def apply(x: torch.Tensor, draws: Draws) -> torch.Tensor:
        h, w = x.shape[-2] - d, x.shape[-1] - d
        oy, ox = draws.integers(d + 1), draws.integers(d + 1)
        if len(set(oy)) == 1 and len(set(ox)) == 1:
            return x[..., oy[0]:oy[0] + h, ox[0]:ox[0] + w]
        # one gather for the whole batch rather than a slice per image
        rows = torch.tensor(oy, device=x.device)[:, None] + torch.arange(h, device=x.device)
        cols = torch.tensor(ox, device=x.device)[:, None] + torch.arange(w, device=x.device)
        batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
        return x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    return apply


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_scale(low: float = 0.9, high: float = 1.1) -> Transform:
    """Zoom each image about its centre by its own factor in [low, high) (size unchanged)."""
    def apply(x: torch.Tensor, draws: Draws) -> torch.Tensor:
        inv = 1.0 / draws.uniform(low, high)
        zero = torch.zeros_like(inv)
        theta = torch.stack([torch.stack([inv, zero, zero], 1), torch.stack([zero, inv, zero], 1)], 1)
        return _warp(x, theta)

    return apply


def random_rotate(degrees: float = 10.0) -> Transform:
    """Rotate each image about its centre by its own angle in [-degrees, degrees)."""
    def apply(x: torch.Tensor, draws: Draws) -> torch.Tensor:
        a = draws.uniform(-degrees, degrees) * (math.pi / 180.0)
        cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        return _warp(x, theta)

    return apply


def resize(size: int) -> Transform:
    """Resample to size x size (the model's native resolution)."""
    def apply(x: torch.Tensor, _draws: Draws) -> torch.Tensor:
        if x.shape[-1] == size and x.shape[-2] == size:
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)

    return apply


def normalize(mean: Sequence[float], std: Sequence[float]) -> Transform:
    """Standardise channels with the model's own mean and std."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return lambda x, _draws: (x - m.to(x.device, x.dtype)) / s.to(x.device, x.dtype)


def standard(size: int = 224) -> Transform:
    """Lucid's standard robustness transforms: pad 12, jitter 8, scale 0.9-1.1, rotate ±10°, jitter 4.

    The pixel amounts are Lucid's for a 224 px image; smaller images get them in proportion (at least
    1 px), because 12 px of padding on a 32 px image would be a different transform altogether."""
    def px(n: int) -> int:
        return max(1, round(n * min(1.0, size / 224)))

    return compose(pad(px(12)), jitter(px(8)), random_scale(0.9, 1.1), random_rotate(10.0), jitter(px(4)))


def identity() -> Transform:
    return lambda x, _draws: x
