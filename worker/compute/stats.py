"""Per-unit activation statistics in fixed memory, mergeable across shards.

- `Moments`: exact count, mean, std (Chan et al.'s parallel update in float64), min and max.
- `Sketch`: counts in log-spaced bins (relative width `GAMMA`, like DDSketch) on both sides of zero,
  fixed independently of the data, so two shards' counts add up to exactly one run's. Quantiles
  are read from it within ±2.5 % relative error; the page's histogram is re-binned from it.
- `Samples`: per unit and per coarse bin, the image with the smallest content hash (a uniform random
  pick, fixed by the set of images alone), from which `spread` draws a sample covering the
  activation range for conditional-probability studies.
"""
import math

import torch

GAMMA = 1.05
MIN_ABS, MAX_ABS = 1e-4, 1e4
SIDE = math.ceil(math.log(MAX_ABS / MIN_ABS) / math.log(GAMMA))  # bins per sign
N_BINS = 2 * SIDE + 1  # [most negative … -MIN_ABS) [zero] (MIN_ABS … most positive], ascending
SAMPLE_COARSENESS = 2  # sketch bins per sample bin
QUANTILES = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
HISTOGRAM_BINS = 40


def bin_of(values: torch.Tensor) -> torch.Tensor:
    """The sketch bin (0 … N_BINS-1, ascending in value) of each value."""
    magnitude = values.abs().float().clamp_min(MIN_ABS)
    k = torch.floor(torch.log(magnitude / MIN_ABS) / math.log(GAMMA)).long().clamp(0, SIDE - 1)
    signed = torch.where(values > 0, SIDE + 1 + k, SIDE - 1 - k)
    return torch.where(values.abs() < MIN_ABS, torch.full_like(signed, SIDE), signed)


def bin_values(device: str | torch.device = "cpu") -> torch.Tensor:
    """A representative value (geometric centre) per sketch bin."""
    k = torch.arange(SIDE, device=device, dtype=torch.float64)
    pos = MIN_ABS * GAMMA ** (k + 0.5)
    return torch.cat([-pos.flip(0), torch.zeros(1, device=device, dtype=torch.float64), pos])


class Moments:
    """Per unit: count, mean, M2, min, max. Counts are per unit because a non-finite activation (an
    fp16 overflow) is left out of its unit only, not out of the image's other units."""

    def __init__(self, units: int, device: str | torch.device = "cpu"):
        self.n = torch.zeros(units, dtype=torch.int64, device=device)
        self.mean = torch.zeros(units, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(units, dtype=torch.float64, device=device)
        self.min = torch.full((units,), float("inf"), device=device)
        self.max = torch.full((units,), float("-inf"), device=device)

    def update(self, values: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """values (B, U); valid (B, U): which values count (default: all)."""
        if values.shape[0] == 0:
            return
        v = values.double()
        if valid is None:
            valid = torch.ones_like(v, dtype=torch.bool)
        count = valid.sum(0)
        mean = torch.where(valid, v, 0.0).sum(0) / count.clamp_min(1)
        m2 = torch.where(valid, (v - mean) ** 2, 0.0).sum(0)
        lo = torch.where(valid, values.float(), float("inf")).amin(0)
        hi = torch.where(valid, values.float(), float("-inf")).amax(0)
        self._combine(count, mean, m2, lo, hi)

    def merge(self, other: "Moments") -> None:
        self._combine(other.n, other.mean, other.m2, other.min, other.max)

    def _combine(self, n, mean, m2, lo, hi) -> None:
        total = self.n + n
        share = n.double() / total.clamp_min(1)
        delta = mean - self.mean
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + m2 + delta**2 * self.n.double() * share
        self.n = total
        self.min, self.max = torch.minimum(self.min, lo), torch.maximum(self.max, hi)

    @property
    def std(self) -> torch.Tensor:
        return (self.m2 / self.n.clamp_min(1)).sqrt()


class Sketch:
    def __init__(self, units: int, device: str | torch.device = "cpu"):
        self.counts = torch.zeros((units, N_BINS), dtype=torch.int64, device=device)

    def update(self, values: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """values (B, U); valid (B, U): which values count (default: all)."""
        units = self.counts.shape[0]
        offsets = torch.arange(units, device=values.device) * N_BINS
        flat = (bin_of(values) + offsets).reshape(-1).to(self.counts.device)
        weight = torch.ones_like(flat) if valid is None else valid.reshape(-1).to(flat)
        self.counts.view(-1).index_add_(0, flat, weight)

    def merge(self, other: "Sketch") -> None:
        self.counts += other.counts

    def quantiles(self, lo: torch.Tensor, hi: torch.Tensor, qs=QUANTILES) -> torch.Tensor:
        """(U, len(qs)) quantile estimates, clamped to each unit's exact [min, max]."""
        cum = self.counts.cumsum(1)
        n = cum[:, -1:].clamp_min(1)
        rank = torch.tensor(qs, dtype=torch.float64, device=cum.device) * (n - 1).double()
        index = torch.searchsorted(cum.double(), rank, right=True).clamp_max(N_BINS - 1)
        est = bin_values(cum.device)[index]
        return torch.maximum(torch.minimum(est, hi.double().unsqueeze(1)), lo.double().unsqueeze(1))

    def histogram(self, lo: torch.Tensor, hi: torch.Tensor, bins: int = HISTOGRAM_BINS) -> torch.Tensor:
        """(U, bins) counts over each unit's [min, max], each sketch bin placed at its centre."""
        lo, hi = lo.double().unsqueeze(1), hi.double().unsqueeze(1)
        centre = bin_values(self.counts.device).unsqueeze(0)
        span = (hi - lo).clamp_min(1e-12)
        index = ((centre.clamp(lo, hi) - lo) / span * bins).long().clamp(0, bins - 1)
        out = torch.zeros((self.counts.shape[0], bins), dtype=torch.int64, device=self.counts.device)
        return out.scatter_add_(1, index.expand_as(self.counts), self.counts)


class Samples:
    def __init__(self, units: int, device: str | torch.device = "cpu"):
        size = (units, math.ceil(N_BINS / SAMPLE_COARSENESS))
        self.hashes = torch.full(size, torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
        self.entries = torch.full(size, -1, dtype=torch.int64, device=device)
        self.values = torch.zeros(size, device=device)

    def update(self, values: torch.Tensor, hashes: torch.Tensor, entries: torch.Tensor,
               valid: torch.Tensor | None = None) -> None:
        """values (B, U); hashes, entries (B,) — hashes unique (images are de-duplicated first);
        valid (B, U): which values may be sampled (default: all)."""
        batch, units = values.shape
        if batch == 0:
            return
        device = self.hashes.device
        cols = self.hashes.shape[1]
        flat = ((bin_of(values) // SAMPLE_COARSENESS).to(device) + torch.arange(units, device=device) * cols)
        flat = flat.reshape(-1)
        h = hashes.to(device).unsqueeze(1).expand(batch, units).reshape(-1)
        e = entries.to(device).unsqueeze(1).expand(batch, units).reshape(-1)
        v = values.float().to(device).reshape(-1)
        if valid is not None:
            keep = valid.to(device).reshape(-1)
            flat, h, e, v = flat[keep], h[keep], e[keep], v[keep]
        self._place(flat, h, e, v)

    def merge(self, other: "Samples") -> None:
        units, cols = self.hashes.shape
        flat = torch.arange(units * cols, device=self.hashes.device)
        keep = other.entries.reshape(-1) >= 0
        self._place(flat[keep], other.hashes.reshape(-1)[keep], other.entries.reshape(-1)[keep],
                    other.values.reshape(-1)[keep])

    def _place(self, flat, hashes, entries, values) -> None:
        table = self.hashes.view(-1)
        table.scatter_reduce_(0, flat, hashes, reduce="amin")
        won = table[flat] == hashes
        self.entries.view(-1)[flat[won]] = entries[won]
        self.values.view(-1)[flat[won]] = values[won]

    def candidates(self, unit: int) -> list[tuple[float, int]]:
        keep = self.entries[unit] >= 0
        return list(zip(self.values[unit][keep].tolist(), self.entries[unit][keep].tolist(), strict=True))


def spread(candidates: list[tuple[float, int]], n: int) -> list[tuple[float, int]]:
    """Up to n of (value, entry) candidates, nearest to n evenly spaced points from min to max."""
    pool = sorted(set(candidates))
    if len(pool) <= n:
        return pool
    values = torch.tensor([v for v, _ in pool], dtype=torch.float64)
    targets = torch.linspace(values[0].item(), values[-1].item(), n, dtype=torch.float64)
    right = torch.searchsorted(values, targets).clamp(1, len(pool) - 1)
    left = right - 1
    nearest = torch.where((targets - values[left]).abs() <= (values[right] - targets).abs(), left, right)
    return [pool[i] for i in sorted(set(nearest.tolist()))]


def state_of(obj) -> dict:
    return {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in vars(obj).items()}


def restore(cls, state: dict, device: str | torch.device = "cpu"):
    obj = cls.__new__(cls)
    for k, v in state.items():
        setattr(obj, k, v.to(device) if isinstance(v, torch.Tensor) else v)
    return obj
