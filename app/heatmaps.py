"""Dataset-example heatmaps as data: every example map of a unit quantized into one `unit_heatmaps` row.

Layout of a row (docs/store.md): `maps` is the unit's N example maps as uint8, C order (N, height, width);
rows 0..n_top-1 are the top examples by rank, rows n_top..N-1 the bottom ones by rank (the order of
`dataset_examples` sorted by sign then rank). `lo` and `hi` are float32 little-endian (N,): row i maps back
as lo[i] + q * (hi[i] - lo[i]) / 255, so each map keeps its own range (error at most (hi - lo) / 510).
That is 49 + 8 bytes an example for a 7x7 grid, against ~400 bytes of JSON floats plus a 4 KB PNG file.

A neuron's world-map grid (36 x 72 cells) is stored the same way in its map_activations row (`heat`
uint8 row-major, `lo`/`hi` floats), and its overlay drawn on request by `map_overlay` over the one grey
base map the maps stage leaves in the cache (MAP_BASE), instead of a 30 KB PNG file a neuron.

Overlays are drawn from the data: in the browser (static/heatmaps.js, a canvas over the image) and by
`overlay` here for the server-rendered PNG. Both use one rule: the positive (top) or negative (bottom)
part of the map relative to its peak, as opacity up to 230 of 255, in the sign's colour.
"""
import base64
import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

COLOURS = {"top": (255, 110, 0), "bottom": (0, 110, 255)}
PEAK_ALPHA = 230
LEVELS = 255
MAP_BASE = "maps/base-720.png"  # cache path of the grey world map (light sea, mid-grey land, dark borders)
MAP_SIZE = (720, 360)  # the base's size, when a store has no base yet
MAP_HEAT_ALPHA = 0.7


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


# -- world-map grids ------------------------------------------------------------------------------------------

def quantize_grid(grid: np.ndarray) -> dict:
    """The map_activations columns of one grid: rows, cols, heat (uint8), lo, hi."""
    q = quantize(np.asarray(grid, dtype=np.float32)[None], 1)
    return {"rows": q["height"], "cols": q["width"], "heat": q["maps"],
            "lo": float(np.frombuffer(q["lo"], "<f4")[0]), "hi": float(np.frombuffer(q["hi"], "<f4")[0])}


def grid_values(row) -> np.ndarray:
    """A map_activations row's grid, float32 (rows, cols)."""
    q = np.frombuffer(row.heat, np.uint8).reshape(row.rows, row.cols).astype(np.float32)
    return row.lo + q * ((row.hi - row.lo) / LEVELS)


@lru_cache(maxsize=8)
def lut(name: str) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def normalise(values: np.ndarray) -> np.ndarray:
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    return np.zeros_like(values, dtype=np.float32) if hi <= lo else ((values - lo) / (hi - lo)).astype(np.float32)


def map_overlay(grid: np.ndarray, base: np.ndarray) -> PILImage.Image:
    """The grey map `base` (H, W, 3 float) with the grid as inferno heat on top, more opaque where higher."""
    height, width = base.shape[:2]
    heat = np.asarray(PILImage.fromarray(normalise(grid)).resize((width, height), PILImage.Resampling.BILINEAR))
    heat = np.clip(heat, 0, 1)
    colour = lut("inferno")[(heat * 255).astype(np.uint8)].astype(np.float32)
    alpha = (MAP_HEAT_ALPHA * heat)[..., None]
    return PILImage.fromarray((base * (1 - alpha) + colour * alpha).astype(np.uint8))


def map_base(path: Path | None) -> np.ndarray:
    """The stored grey base map as float (H, W, 3); a plain light field where the store has none yet."""
    if path is None:
        return np.full((MAP_SIZE[1], MAP_SIZE[0], 3), 240.0, np.float32)
    return _base_at(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=2)
def _base_at(path: str, _mtime: int) -> np.ndarray:
    with PILImage.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32)


def map_overlay_jpeg(grid: np.ndarray, base: np.ndarray) -> bytes:
    """JPEG: an opaque, smooth picture drawn per request; 1 ms and ~20 KB, where PNG took 130 ms for 280 KB."""
    buf = io.BytesIO()
    map_overlay(grid, base).save(buf, format="JPEG", quality=85)
    return buf.getvalue()
