"""Dataset-example heatmaps as data: every example map of a unit quantized into one `unit_heatmaps` row.

Layout of a row (docs/store.md): `maps` is the unit's N example maps as uint8, C order (N, height, width);
rows 0..n_top-1 are the top examples by rank, rows n_top..N-1 the bottom ones by rank (the order of
`dataset_examples` sorted by sign then rank). `lo` and `hi` are float32 little-endian (N,): row i maps back
as lo[i] + q * (hi[i] - lo[i]) / 255, so each map keeps its own range (error at most (hi - lo) / 510).
That is 49 + 8 bytes an example for a 7x7 grid, against ~400 bytes of JSON floats plus a 4 KB PNG file.

Overlays are drawn from the data: in the browser (static/heatmaps.js, a canvas over the image) and by
`overlay` here for the server-rendered PNG. Both use one rule: the positive (top) or negative (bottom)
part of the map relative to its peak, as opacity up to 230 of 255, in the sign's colour.
"""
import base64
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage

COLOURS = {"top": (255, 110, 0), "bottom": (0, 110, 255)}
PEAK_ALPHA = 230
LEVELS = 255


@dataclass(frozen=True)
class Heatmaps:
    """One unit's example maps, still quantized."""

    n_top: int
    maps: np.ndarray  # uint8 (N, H, W)
    lo: np.ndarray  # float32 (N,)
    hi: np.ndarray  # float32 (N,)

    def row(self, sign: str, rank: int) -> int | None:
        """The row of example (sign, rank), None if the unit has no such example."""
        i = rank if sign == "top" else self.n_top + rank
        in_part = 0 <= rank < (self.n_top if sign == "top" else len(self.maps) - self.n_top)
        return i if in_part and sign in COLOURS else None

    def values(self, i: int) -> np.ndarray:
        """Row i dequantized, float32 (H, W)."""
        return self.lo[i] + self.maps[i].astype(np.float32) * ((self.hi[i] - self.lo[i]) / LEVELS)

    def b64(self, i: int) -> str:
        """Row i's quantized bytes in base64 (what the page hands the canvas)."""
        return base64.b64encode(self.maps[i].tobytes()).decode()


def quantize(maps: np.ndarray, n_top: int) -> dict:
    """The `unit_heatmaps` columns (without unit_id) for float maps (N, H, W): top rows first."""
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    flat = maps.reshape(len(maps), -1)
    lo, hi = (flat.min(1), flat.max(1)) if flat.size else (np.zeros(0), np.zeros(0))
    span = np.where(hi > lo, hi - lo, 1.0)[:, None]
    q = np.rint((flat - lo[:, None]) / span * LEVELS).clip(0, LEVELS).astype(np.uint8)
    h, w = maps.shape[1:] if maps.ndim == 3 else (0, 0)
    return {"n_top": n_top, "height": int(h), "width": int(w), "maps": q.tobytes(),
            "lo": lo.astype("<f4").tobytes(), "hi": hi.astype("<f4").tobytes()}


def unpack(row) -> Heatmaps:
    """A `unit_heatmaps` row (ORM object or mapping with its columns) as arrays."""
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    lo, hi = np.frombuffer(get("lo"), "<f4"), np.frombuffer(get("hi"), "<f4")
    maps = np.frombuffer(get("maps"), np.uint8).reshape(len(lo), get("height"), get("width"))
    return Heatmaps(get("n_top"), maps, lo, hi)


def alpha(values: np.ndarray, sign: str) -> np.ndarray:
    """Opacity per position (uint8): the sign's part of the map relative to its peak."""
    part = np.clip(values if sign == "top" else -values, 0, None)
    peak = float(part.max()) if part.size else 0.0
    return np.rint(part / peak * PEAK_ALPHA).astype(np.uint8) if peak > 0 else np.zeros(part.shape, np.uint8)


def overlay(values: np.ndarray, sign: str) -> PILImage.Image:
    """A tiny RGBA image, one pixel per position (browsers scale it smoothly)."""
    rgba = np.zeros((*values.shape, 4), dtype=np.uint8)
    rgba[..., :3] = COLOURS[sign]
    rgba[..., 3] = alpha(values, sign)
    return PILImage.fromarray(rgba, "RGBA")


def overlay_png(values: np.ndarray, sign: str) -> bytes:
    buf = io.BytesIO()
    overlay(values, sign).save(buf, format="PNG")
    return buf.getvalue()


def recover_from_overlay(img: PILImage.Image, sign: str) -> np.ndarray:
    """A map read back from an old overlay PNG: only the sign's part relative to its peak survives (opacity
    / 230, so the peak reads 1, and the other sign's part reads 0); the activation scale is lost."""
    a = np.asarray(img.convert("RGBA"), dtype=np.float32)[..., 3] / PEAK_ALPHA
    return a if sign == "top" else -a
