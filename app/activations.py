"""Reading an activation matrix (see worker/analyses/activations.py for what it holds and how it is written), with
numpy only: np.memmap over each complete part, scanned in row blocks. The app and the analyses read it.
"""
import json
from pathlib import Path

import numpy as np

DTYPE = np.float16
ARTIFACT = "activations"  # the Artifact row naming a layer's matrix folder (path relative to the data folder)
SCAN_ROWS = 65_536  # rows per block of a sequential scan (2,560 units: 320 MB of fp16)


class MatrixError(ValueError):
    """No usable matrix at that folder (missing, incomplete, or parts that disagree)."""


class ActivationMatrix:
    """A layer's matrix, read lazily (np.memmap) over its complete parts in part order."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        sidecars = sorted(self.folder.glob("part-*.json"), key=_part_order)
        if not sidecars:
            raise MatrixError(f"no activation matrix in {self.folder}")
        self.meta = [json.loads(p.read_text()) for p in sidecars]
        if not all(m["complete"] for m in self.meta) or len(self.meta) != _part_count(sidecars[0]):
            raise MatrixError(f"the activation matrix in {self.folder} is incomplete (a run is still writing it)")
        self.units = self.meta[0]["units"]
        self._parts = [_open_part(p.with_suffix(""), m["rows"], self.units) for p, m in zip(sidecars, self.meta,
                                                                                          strict=True)]

    @property
    def rows(self) -> int:
        return sum(len(v) for v, _, _ in self._parts)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.units

    def blocks(self, rows: int = SCAN_ROWS):
        """(start row, float32 block) in row order: a sequential scan with bounded memory."""
        start = 0
        for values, _, _ in self._parts:
            for i in range(0, len(values), rows):
                block = np.asarray(values[i:i + rows], dtype=np.float32)
                yield start + i, block
            start += len(values)

    def project(self, direction: np.ndarray) -> np.ndarray:
        """matrix @ direction (rows,), float32."""
        d = np.asarray(direction, dtype=np.float32)
        out = np.empty(self.rows, dtype=np.float32)
        for start, block in self.blocks():
            out[start:start + len(block)] = block @ d
        return out

    def columns(self, units) -> np.ndarray:
        """(rows, len(units)) float32 of the given units."""
        idx = np.asarray(units, dtype=np.int64)
        return np.concatenate([np.asarray(v[:, idx], dtype=np.float32) for v, _, _ in self._parts])

    def dense(self) -> np.ndarray:
        """The whole matrix as float32 (for analyses of matrices that fit in memory)."""
        return np.concatenate([b for _, b in self.blocks()]) if self.rows else np.zeros((0, self.units), np.float32)

    @property
    def hashes(self) -> np.ndarray:
        return np.concatenate([h for _, h, _ in self._parts])

    @property
    def entries(self) -> np.ndarray:
        return np.concatenate([e for _, _, e in self._parts])

    @property
    def corpus(self) -> str:
        return self.meta[0].get("corpus", "")


def _part_order(path: Path) -> int:
    return int(path.name.split("-", 1)[1].split("of")[0])


def _part_count(path: Path) -> int:
    return int(path.name.split("of", 1)[1].split(".")[0])


def _open_part(base: Path, rows: int, units: int):
    def mm(suffix: str, dtype, shape):
        if rows == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(f"{base}{suffix}", dtype=dtype, mode="r", shape=shape)

    return mm(".f16", DTYPE, (rows, units)), mm(".hash.i64", np.int64, (rows,)), mm(".entry.i64", np.int64, (rows,))


def sha_range(hash64: int) -> tuple[str, str]:
    """The `images.sha256` range [lo, hi) of an image with this 63-bit content hash (lower-case hex sorts
    like the number): its first 64 bits are 2h or 2h+1."""
    lo = 2 * int(hash64)
    return f"{lo:016x}", f"{lo + 2:016x}" if lo + 2 < 2**64 else "g"
