"""Images for the live image probe: uploads checked by their content, and activation heatmaps drawn over them.

An upload is accepted only if Pillow recognises it as one of a few real image formats (the filename and
the declared content type are ignored), it is at most MAX_BYTES, and its pixel count is at most
MAX_PIXELS, checked from the header before any pixel is decoded, so a decompression bomb is refused
without being unpacked.
"""
import base64
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}
OVERLAY_SIZE = 160


class BadImage(ValueError):
    """An upload that is not an acceptable image; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.message, self.status = message, status


def read_image(data: bytes) -> Image.Image:
    """The upload as an RGB image, or BadImage saying what is wrong with it."""
    if not data:
        raise BadImage("The upload is empty: choose an image file.")
    if len(data) > MAX_BYTES:
        raise BadImage(f"The upload is {len(data) / 1e6:.1f} MB; the limit is {MAX_BYTES / 1e6:.0f} MB.", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("That file is not an image this server reads (JPEG, PNG, WebP, GIF, BMP or TIFF).",
                       415) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise BadImage(f"Refused: the image is a decompression bomb ({e}).", 413) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"That file is not a readable image: {e}", 415) from None
    if img.format not in FORMATS:
        raise BadImage(f"{img.format} images are not accepted; use JPEG, PNG, WebP, GIF, BMP or TIFF.", 415)
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise BadImage(f"Refused: {width}×{height} pixels would decompress to far more than its file size "
                       f"(limit {MAX_PIXELS:,} pixels); this looks like a decompression bomb.", 413)
    return decode(img)


def decode(img: Image.Image) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.seek(0)
            return ImageOps.exif_transpose(img).convert("RGB")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise BadImage(f"Refused: the image is a decompression bomb ({e}).", 413) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"The image is damaged or truncated and could not be decoded: {e}") from None


def model_view(img: Image.Image, size: int) -> Image.Image:
    """The square the model sees (shorter side resized to `size`, centre crop), for drawing heatmaps on."""
    return ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)


def overlay(view: Image.Image, grid: np.ndarray, vmax: float) -> Image.Image:
    """The activation grid (h × w, values ≥ 0 shown) stretched over the image in warm colours."""
    heat = np.clip(np.asarray(grid, dtype=np.float32) / (vmax if vmax > 0 else 1.0), 0, 1)
    side = view.size[0]
    up = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR),
                    dtype=np.float32)[..., None] / 255
    base = np.asarray(view.convert("RGB"), dtype=np.float32) * 0.45
    warm = np.stack([np.full_like(up[..., 0], 255), 220 * up[..., 0], 40 * up[..., 0]], axis=-1)
    out = base * (1 - up) + (base * 0.2 + warm * 0.8) * up
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def data_uri(img: Image.Image, size: int = OVERLAY_SIZE) -> str:
    """A small inline PNG (the page's CSP allows data: images), so probe results need no cache writes."""
    small = img.copy()
    small.thumbnail((size, size))
    buf = io.BytesIO()
    small.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
