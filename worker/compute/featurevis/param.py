"""Image parameterizations: the tensors the optimiser changes, and how they become RGB images in [0, 1].

`image(seeds, size)` is the Lucid default: a Fourier spectrum scaled by 1/frequency, colours
decorrelated with the square root of the ImageNet colour correlation, squashed by a sigmoid.
Each image's initial noise comes from its own seed, so a batch never changes an image's start.
"""
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# Square root of ImageNet's RGB colour correlation matrix (from its SVD): optimising in this basis
# makes one step change luminance and colour as a natural image would.
COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                       [0.27, 0.00, -0.05],
                                       [0.27, -0.09, 0.03]])
FFT_MAGIC = 4.0  # Lucid's spectrum divisor: keeps the initial image near grey rather than saturated


@dataclass
class ImageParam:
    """What to optimise (`params`) and the image it stands for (`image()` -> (B, 3, H, W) in [0, 1])."""

    params: list[torch.Tensor]
    image: Callable[[], torch.Tensor]


def seeded_normal(shape: Sequence[int], seeds: Sequence[int], sd: float, device="cpu") -> torch.Tensor:
    """A (len(seeds), *shape) normal sample whose row i depends only on seeds[i]."""
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return (torch.stack(rows) * sd).to(device)


def rfft_frequencies(h: int, w: int) -> torch.Tensor:
    """|frequency| of each coefficient of a real 2-D FFT of an h x w image, shape (h, w // 2 + 1)."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def fft_raw(seeds: Sequence[int], size: int, sd: float = 0.01, decay_power: float = 1.0,
            device="cpu") -> ImageParam:
    """Unbounded images from a Fourier spectrum whose amplitudes are scaled by 1 / max(freq, 1/size)."""
    h = w = size
    freqs = rfft_frequencies(h, w)
    scale = (1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay_power)[None, None, :, :, None].to(device)
    spectrum = seeded_normal((3, *freqs.shape, 2), seeds, sd, device).requires_grad_(True)

    def image() -> torch.Tensor:
        coeffs = torch.view_as_complex((scale * spectrum).contiguous())
        return torch.fft.irfft2(coeffs, s=(h, w), norm="ortho") / FFT_MAGIC

    return ImageParam([spectrum], image)


def pixel_raw(seeds: Sequence[int], size: int, sd: float = 0.01, device="cpu") -> ImageParam:
    """Unbounded images as plain pixels (one parameter per pixel and channel)."""
    pixels = seeded_normal((3, size, size), seeds, sd, device).requires_grad_(True)
    return ImageParam([pixels], lambda: pixels)


def decorrelate_colors(raw: torch.Tensor) -> torch.Tensor:
    """Map channels from the decorrelated basis to RGB (matrix normalised by its largest column norm)."""
    matrix = COLOR_CORRELATION_SQRT / COLOR_CORRELATION_SQRT.norm(dim=0).max()
    return torch.einsum("bchw,dc->bdhw", raw, matrix.to(raw.device, raw.dtype))


def to_rgb(raw: ImageParam, decorrelate: bool = True) -> ImageParam:
    """Squash an unbounded parameterization into valid RGB with a sigmoid."""
    def image() -> torch.Tensor:
        x = raw.image()
        return torch.sigmoid(decorrelate_colors(x) if decorrelate else x)

    return ImageParam(raw.params, image)


def image(seeds: Sequence[int], size: int, fft: bool = True, decorrelate: bool = True, sd: float = 0.01,
          device="cpu") -> ImageParam:
    """One image per seed, size x size: FFT (1/f) + decorrelated colour + sigmoid by default."""
    if size < 2:
        raise ValueError(f"image size must be at least 2 pixels, got {size}")
    raw = fft_raw(seeds, size, sd, device=device) if fft else pixel_raw(seeds, size, sd, device=device)
    return to_rgb(raw, decorrelate)
