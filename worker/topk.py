"""Streaming top-K per unit, with each kept image's spatial activation map.

Memory is units × K × (map size), whatever the corpus size. Ties are broken by the image's content
hash, so the result depends only on the set of images seen: updates in any batching and merges of
partial states (shards) give exactly the same top-K.
"""
import torch

EMPTY_HASH = torch.iinfo(torch.int64).max


class TopK:
    """The K largest `values` per unit. For the most negative K, feed negated values (`sign=-1`):
    `values` then holds the negated scalars and `maps` the maps as they were."""

    def __init__(self, units: int, k: int, map_size: int, sign: int = 1, device: str | torch.device = "cpu"):
        self.k, self.sign = k, sign
        self.values = torch.full((units, k), float("-inf"), device=device)
        self.hashes = torch.full((units, k), EMPTY_HASH, dtype=torch.int64, device=device)
        self.entries = torch.full((units, k), -1, dtype=torch.int64, device=device)
        self.maps = torch.zeros((units, k, map_size), dtype=torch.float16, device=device)

    def update(self, values: torch.Tensor, hashes: torch.Tensor, entries: torch.Tensor,
               maps: torch.Tensor) -> None:
        """values (B, U) scalars, hashes/entries (B,), maps (B, U, map_size)."""
        units, batch = self.values.shape[0], values.shape[0]
        if batch == 0:
            return
        self._keep(torch.cat([self.values, self.sign * values.T.float()], 1),
                   torch.cat([self.hashes, hashes.to(self.hashes.device).expand(units, batch)], 1),
                   torch.cat([self.entries, entries.to(self.entries.device).expand(units, batch)], 1),
                   torch.cat([self.maps, maps.transpose(0, 1).to(torch.float16)], 1))

    def merge(self, other: "TopK") -> None:
        """Fold in another partial state over a disjoint set of images."""
        self._keep(torch.cat([self.values, other.values], 1), torch.cat([self.hashes, other.hashes], 1),
                   torch.cat([self.entries, other.entries], 1), torch.cat([self.maps, other.maps], 1))

    def _keep(self, values, hashes, entries, maps) -> None:
        by_hash = hashes.argsort(dim=1, stable=True)
        ranked = values.gather(1, by_hash).argsort(dim=1, descending=True, stable=True)[:, : self.k]
        pick = by_hash.gather(1, ranked)
        self.values, self.hashes = values.gather(1, pick), hashes.gather(1, pick)
        self.entries = entries.gather(1, pick)
        self.maps = maps.gather(1, pick.unsqueeze(-1).expand(-1, -1, maps.shape[-1]))

    def rows(self, unit: int) -> list[tuple[float, int, torch.Tensor]]:
        """(value, entry, map) of one unit's kept images, best first, in the caller's sign."""
        keep = self.entries[unit] >= 0
        return [(self.sign * float(v), int(e), m) for v, e, m in
                zip(self.values[unit][keep].tolist(), self.entries[unit][keep].tolist(),
                    self.maps[unit][keep].float().cpu(), strict=True)]

    def state_dict(self) -> dict:
        return {"k": self.k, "sign": self.sign, "values": self.values.cpu(), "hashes": self.hashes.cpu(),
                "entries": self.entries.cpu(), "maps": self.maps.cpu()}

    @classmethod
    def from_state(cls, state: dict, device: str | torch.device = "cpu") -> "TopK":
        top = cls.__new__(cls)
        top.k, top.sign = state["k"], state["sign"]
        for name in ("values", "hashes", "entries", "maps"):
            setattr(top, name, state[name].to(device))
        return top
