"""Numeric precision of a model's forward pass: fp32, or autocast to bf16 / fp16.

It is part of what a stage computes (top-K and statistics move with it), so it goes into job
fingerprints and settings hashes: a checkpoint made at one precision is never resumed at another, and
shards of mixed precision never merge. `auto` is bf16 on a GPU that has it (same range as fp32, so no
overflow), fp32 elsewhere: an older GPU's fp16 can overflow (inf activations are then dropped and
counted, see `worker.analyses.examples.LayerState.update`), which a default should not risk; and on a CPU the
speed of autocast depends on the chip (GUIDE: bf16 2-5x slower without bf16 instructions; on a Xeon with
AMX bf16 the tiny test model ran 1-4x faster in bf16), so fp32, exact, stays the default there.
"""
from contextlib import AbstractContextManager, nullcontext

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHOICES = (*DTYPES, "auto")


class PrecisionMismatch(ValueError):
    """State saved at another precision (or with another JPEG decoder) exists for the same job: a
    checkpoint, a shard's state."""


def resolve_precision(asked: str, device: str | torch.device) -> str:
    """fp32 | bf16 | fp16 for `device`; `auto` picks (see the module docstring). ValueError if unknown
    or if bf16 is asked for on a GPU without it."""
    device = torch.device(device)
    if asked not in CHOICES:
        raise ValueError(f"--precision must be one of {', '.join(CHOICES)}, got {asked!r}")
    cuda = device.type == "cuda"
    if asked == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if asked == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("--precision bf16: this GPU has no bfloat16; use fp16 or fp32")
    return asked


def autocast(device: str | torch.device, precision: str) -> AbstractContextManager:
    """The forward pass's context: nothing for fp32, else autocast to the precision's dtype."""
    dtype = DTYPES[precision]
    return nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)
