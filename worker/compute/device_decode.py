"""JPEG decoding on the model's device (nvJPEG on a GPU, through `torchvision.io.decode_jpeg`), for when
the CPU's decoders cannot keep a GPU fed (whether they can is what bench/gpu_check.sh measures: PIL
workers against nvJPEG, side by side).

Loader workers still read and hash every file (`CorpusBatches(jpeg_on_device=True)`), but hand an
upright RGB or grey JPEG's bytes on undecoded. (nvJPEG ignores EXIF orientation: `decode_jpeg` applies it
only on the CPU; so rotated photos, like CMYK ones, are decoded by PIL in the workers.)
`DeviceDecoder.finish` decodes a batch's JPEGs in one batched call on the device and runs the model's own
preprocessing transforms there on tensors, one call per image size (torchvision's Resize and CenterCrop
take tensors, and round to uint8 as PIL does). A JPEG the device decoder rejects is decoded again with
PIL in the main process, so a bad file is skipped for the same reason as on the CPU path. Pixels differ
from the PIL path only by the decoders' and resamplers' rounding (at most 1/255 in the tests), and large
photos are decoded at full size (no DCT-scaled draft).
"""
from collections import Counter
from collections.abc import Callable

import torch
from torchvision import transforms as tv
from torchvision.io import ImageReadMode, decode_jpeg

from worker.compute.corpus import Batch, Skip, decode

MODES = ("workers", "device", "auto")


def tensor_transform(preprocess: Callable) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The model's preprocessing for a (3, H, W) uint8 tensor, or None when it holds a step that only
    takes PIL images (the device path is then unavailable for this model)."""
    steps = []
    for step in getattr(preprocess, "transforms", [None]):
        name = type(step).__name__
        if isinstance(step, tv.Resize | tv.CenterCrop | tv.Normalize):
            steps.append(step)
        elif name in ("MaybeToTensor", "ToTensor"):
            steps.append(lambda x: x.float() / 255)
        elif name not in ("MaybeConvertMode", "function"):  # RGB conversion: decode_jpeg gives RGB
            return None
    return tv.Compose(steps)


def resolve_mode(asked: str, device: torch.device, preprocess: Callable) -> str:
    """workers | device. auto is device on a GPU whose model's preprocessing runs on tensors."""
    if asked not in MODES:
        raise ValueError(f"--jpeg-decode must be one of {', '.join(MODES)}, got {asked!r}")
    usable = tensor_transform(preprocess) is not None
    if asked == "device" and not usable:
        raise ValueError("--jpeg-decode device: this model's preprocessing has a step that takes only PIL "
                         "images; use --jpeg-decode workers")
    if asked == "auto":
        return "device" if device.type == "cuda" and usable else "workers"
    return asked


class DeviceDecoder:
    """Decodes the JPEGs a batch carries as bytes on `device` and returns the batch with all its pixels
    there, the rows of unusable files removed and counted as skips."""

    def __init__(self, preprocess: Callable, device: torch.device, max_pixels: int):
        self.preprocess, self.device, self.max_pixels = preprocess, device, max_pixels
        self.transform = tensor_transform(preprocess)

    def finish(self, batch: Batch) -> Batch:
        if not batch.jpegs:
            return batch
        n = len(batch.entries)
        on_cpu = torch.ones(n, dtype=torch.bool)
        on_cpu[batch.jpeg_rows] = False
        pixels, skipped = [None] * n, Counter(batch.skipped)
        for row, x in zip(on_cpu.nonzero().squeeze(1).tolist(),
                          batch.pixels.to(self.device, non_blocking=True), strict=True):
            pixels[row] = x
        for row, x in zip(batch.jpeg_rows.tolist(), self.decode(batch.jpegs), strict=True):
            if isinstance(x, Skip):
                skipped[x.reason] += 1
            else:
                pixels[row] = x
        keep = torch.tensor([p is not None for p in pixels], dtype=torch.bool)
        stack = torch.stack([p for p in pixels if p is not None]) if keep.any() else torch.empty(0)
        return Batch(batch.number, stack, batch.entries[keep], batch.hashes[keep], batch.n_entries, skipped)

    def decode(self, jpegs: list[bytes]) -> list[torch.Tensor | Skip]:
        """Each JPEG preprocessed on the device, or the Skip PIL gives the ones the device rejects."""
        data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
        try:
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # one bad file fails the batched call: decode them one by one
            images = [self.one(d) for d in data]
        out: list = [None] * len(jpegs)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, (jpeg, image) in enumerate(zip(jpegs, images, strict=True)):
            if image is None:
                out[i] = self.fallback(jpeg)
            else:
                by_shape.setdefault(tuple(image.shape), []).append(i)
        for rows in by_shape.values():  # one transform call per size: a few kernels, not a few per image
            for i, x in zip(rows, self.transform(torch.stack([images[i] for i in rows])), strict=True):
                out[i] = x
        return out

    def one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return None

    def fallback(self, jpeg: bytes) -> torch.Tensor | Skip:
        try:
            return self.preprocess(decode(jpeg, self.max_pixels)).to(self.device)
        except Skip as s:
            return s
        except Exception:  # noqa: BLE001 — as CorpusBatches.pixels: a transform's failure is a bad file
            return Skip("corrupt")
