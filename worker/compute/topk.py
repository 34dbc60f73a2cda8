"""Streaming top-K per unit, with each kept image's spatial activation map.

Memory is units × K × (map size), whatever the corpus size. Images are ranked by one int64 key per
(image, unit): the activation's float bits made sortable, then the image's content hash (smaller first)
to break ties, so the kept set depends only on the set of images seen: any batching, and merges of
partial states (shards), give exactly the same top-K.

The K slots of a unit are unordered while streaming; an update writes only the slots whose image was
pushed out (most batches change few), and `rows` sorts them when they are read.

Maps are kept in float16 divided by their own peak |value| (a float32 scale per slot): an fp16 copy of
the raw map would overflow to inf above 65504, and bfloat16 would keep only 3 significant digits.
A candidate marked invalid (a non-finite activation) gets INVALID_KEY, below every empty slot's key,
so it never takes a slot.
"""
from typing import NamedTuple

import numpy as np
import torch

INVALID_KEY = torch.iinfo(torch.int64).min
EMPTY_KEY = INVALID_KEY + 1  # any real value's key is far above (about -2**62 at the lowest)
TINY = torch.finfo(torch.float32).tiny
LOW_BITS = 31


def rank_keys(values: torch.Tensor, hashes: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered like (value descending, content hash ascending), for float32 values."""
    bits = values.float().contiguous().view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()  # monotone in the float's value
    return (ordered << LOW_BITS) | ((1 << LOW_BITS) - 1 - (hashes >> (63 - LOW_BITS)))


class TopK:
    """The K largest `values` per unit. For the most negative K, use `sign=-1`: values are negated for
    ranking and reported back in their own sign; maps are kept as they were."""

    def __init__(self, units: int, k: int, map_size: int, sign: int = 1, device: str | torch.device = "cpu"):
        self.k, self.sign = k, sign
        self.keys = torch.full((units, k), EMPTY_KEY, dtype=torch.int64, device=device)
        self.values = torch.full((units, k), float("-inf"), device=device)
        self.hashes = torch.zeros((units, k), dtype=torch.int64, device=device)
        self.entries = torch.full((units, k), -1, dtype=torch.int64, device=device)
        self.maps = torch.zeros((units, k, map_size), dtype=torch.float16, device=device)  # map / scale
        self.scales = torch.zeros((units, k), device=device)

    def update(self, values: torch.Tensor, hashes: torch.Tensor, entries: torch.Tensor,
               maps: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """values (B, U) scalars, hashes/entries (B,), maps (B, U, map_size); valid (B, U): which
        candidates may be kept (default: all)."""
        if values.shape[0] == 0:
            return
        units, batch = self.keys.shape[0], values.shape[0]
        signed = (self.sign * values.float()).T
        hashes, entries = hashes.to(self.keys.device), entries.to(self.keys.device)
        keys = rank_keys(signed, hashes.unsqueeze(0))
        if valid is not None:
            keys = torch.where(valid.T.to(keys.device), keys, INVALID_KEY)
        ones = torch.ones((), device=self.scales.device).expand(units, batch)
        self._absorb(keys, signed, hashes.expand(units, batch), entries.expand(units, batch),
                     maps.transpose(0, 1), ones)

    def merge(self, other: "TopK") -> None:
        """Fold in another partial state over a disjoint set of images."""
        self._absorb(other.keys, other.values, other.hashes, other.entries, other.maps, other.scales)

    def _absorb(self, keys, values, hashes, entries, maps, scales) -> None:
        """Candidates per unit, all (U, C[, map]) (a candidate's map is maps × scales): each one better
        than a unit's worst kept image takes the slot of an image the candidates push out."""
        rows = (keys > self.keys.amin(1, keepdim=True)).any(1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        pool = torch.cat([self.keys[rows], keys[rows]], 1)
        chosen = torch.zeros_like(pool, dtype=torch.bool).scatter_(1, pool.topk(self.k, 1, sorted=False).indices, True)
        freed = (~chosen[:, : self.k]).nonzero()  # (row, slot), row-major: pairs up with `incoming`
        incoming = chosen[:, self.k:].nonzero()  # (row, candidate): as many per row as slots freed
        unit, slot, cand = rows[freed[:, 0]], freed[:, 1], incoming[:, 1]
        self.keys[unit, slot] = keys[unit, cand]
        self.values[unit, slot] = values[unit, cand].float()
        self.hashes[unit, slot] = hashes[unit, cand]
        self.entries[unit, slot] = entries[unit, cand]
        full = maps[unit, cand].float() * scales[unit, cand].unsqueeze(-1)
        peak = full.abs().amax(-1)
        self.maps[unit, slot] = (full / peak.clamp_min(TINY).unsqueeze(-1)).to(self.maps.dtype)
        self.scales[unit, slot] = peak

    def rows(self, unit: int) -> list[tuple[float, int, torch.Tensor]]:
        """(value, entry, map) of one unit's kept images, best first, in the caller's sign."""
        order = self.keys[unit].argsort(descending=True)
        order = order[self.entries[unit][order] >= 0]
        return [(self.sign * v, e, m) for v, e, m in
                zip(self.values[unit][order].tolist(), self.entries[unit][order].tolist(),
                    (self.maps[unit][order].float() * self.scales[unit][order].unsqueeze(-1)).cpu(),
                    strict=True)]

    def ranked(self) -> "Ranked":
        """Every unit's kept images best first, as arrays: one sort for the whole layer, where `rows`
        sorts one unit (1 ms a call: most of the time of writing a layer)."""
        order = self.keys.argsort(1, descending=True)
        maps = self.maps.gather(1, order.unsqueeze(2).expand(-1, -1, self.maps.shape[2])).float()
        maps *= self.scales.gather(1, order).unsqueeze(2)
        return Ranked((self.sign * self.values.gather(1, order)).cpu().numpy(),
                      self.entries.gather(1, order).cpu().numpy(), maps.cpu().numpy())

    def ranked_entries(self) -> torch.Tensor:
        """(U, K) entries best first (-1 for empty slots)."""
        return self.entries.gather(1, self.keys.argsort(1, descending=True))

    def state_dict(self) -> dict:
        return {"k": self.k, "sign": self.sign, "keys": self.keys.cpu(), "values": self.values.cpu(),
                "hashes": self.hashes.cpu(), "entries": self.entries.cpu(), "maps": self.maps.cpu(),
                "scales": self.scales.cpu()}

    @classmethod
    def from_state(cls, state: dict, device: str | torch.device = "cpu") -> "TopK":
        top = cls.__new__(cls)
        top.k, top.sign = state["k"], state["sign"]
        for name in ("keys", "values", "hashes", "entries", "maps", "scales"):
            setattr(top, name, state[name].to(device))
        return top


class Ranked(NamedTuple):
    """A TopK's units sorted best first: values in the caller's sign and entries (U, K; entry -1 marks an
    empty slot), maps (U, K, map size)."""

    values: np.ndarray
    entries: np.ndarray
    maps: np.ndarray

    def rows(self, unit: int) -> list[tuple[float, int, np.ndarray]]:
        keep = np.flatnonzero(self.entries[unit] >= 0)
        return list(zip(self.values[unit, keep].tolist(), self.entries[unit, keep].tolist(), self.maps[unit, keep],
                        strict=True))
