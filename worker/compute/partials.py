"""Partial states in files: what one piece of a stage's work left for the merge, on shared storage.

A partial lives at `<data>/partials/<fingerprint>/<item>.pt` and is written atomically (a temporary name,
then `os.replace`), so a file that exists is whole: a killed driver or worker leaves either the finished
partial or none, and a resumed build recomputes only the items without one. Database rows are no place for
them: one RN50x4 layer's state is about 110 MB (see `tensor_bytes`), four layers near the 1 GB limit of a
SQLite blob or a Postgres bytea, and the merge reads them by unit range, which a file read with
`mmap=True` allows without loading the rest.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch


def folder(data_dir: str | Path, fingerprint: str) -> Path:
    return Path(data_dir) / "partials" / fingerprint


def path_of(data_dir: str | Path, fingerprint: str, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return folder(data_dir, fingerprint) / f"{safe}.pt"


def save(path: Path, state: dict) -> int:
    """Write `state` atomically; returns the file's size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:  # a file object: torch names the archive's records "archive/…", not after the
        torch.save(state, f)    # temp name (with the pid in it), so equal states make files of equal size
    os.replace(tmp, path)
    return path.stat().st_size


def load(path: Path) -> dict:
    """The state, memory-mapped: slicing a unit range reads only those pages."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def drop(data_dir: str | Path, fingerprint: str) -> None:
    """Remove a stage's partials once its results are in the store."""
    shutil.rmtree(folder(data_dir, fingerprint), ignore_errors=True)


def tensor_bytes(state) -> int:
    """The bytes of every tensor in a nested state: what a partial file holds besides a few KB of
    pickle and zip headers."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(tensor_bytes(v) for v in state)
    return 0


def unit_slice(state, units: int, start: int, stop: int):
    """The same nested state with every per-unit tensor (first dimension == units) cut to [start, stop)."""
    if isinstance(state, torch.Tensor):
        return state[start:stop].clone() if state.dim() and state.shape[0] == units else state
    if isinstance(state, dict):
        return {k: unit_slice(v, units, start, stop) for k, v in state.items()}
    return state
