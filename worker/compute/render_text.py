"""Rasterise words and place names deterministically: several fonts, font sizes and positions.

A `RenderPlan` fixes everything that decides the pixels (canvas size, fonts, font sizes as a fraction
of the canvas, text centres). The same word under the same plan always gives the same bytes: fonts are
files from Debian packages, PIL draws them without randomness, and nothing depends on the machine.

Variants: every (size, position) slot is drawn once; slot (s, p) uses font (s + p) mod n_fonts, so with
as many positions as fonts every font appears at every size without multiplying the image count.
"""
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_ROOT = Path("/usr/share/fonts")

# name -> candidate files under FONT_ROOT (Debian package in the comment). scripts/system-deps installs
# the first four; the others are used only where present.
FONTS: dict[str, tuple[str, ...]] = {
    "dejavu-sans": ("truetype/dejavu/DejaVuSans.ttf",),  # fonts-dejavu-core
    "liberation-serif": ("truetype/liberation2/LiberationSerif-Regular.ttf",  # fonts-liberation2
                         "truetype/liberation/LiberationSerif-Regular.ttf"),
    "comic-neue": ("opentype/comic-neue/ComicNeue-Regular.otf",  # fonts-comic-neue
                   "truetype/comic-neue/ComicNeue-Regular.ttf"),
    "dkg-handwriting": ("truetype/fifthhorseman/dkg.ttf",),  # fonts-dkg-handwriting
    "liberation-sans": ("truetype/liberation2/LiberationSans-Regular.ttf",),
    "free-serif": ("truetype/freefont/FreeSerif.ttf",),  # fonts-freefont-ttf
    "noto-mono": ("truetype/noto/NotoSansMono-Regular.ttf",),  # fonts-noto-mono
}
DEFAULT_FONTS = ("dejavu-sans", "liberation-serif")
MIN_PX = 3  # long words on small canvases shrink this far rather than spill over the edge


class FontMissing(RuntimeError):
    """A font the plan names is not installed."""


def font_path(name: str) -> Path:
    if name not in FONTS:
        raise FontMissing(f"unknown font {name!r}; known: {', '.join(FONTS)}")
    for rel in FONTS[name]:
        path = FONT_ROOT / rel
        if path.is_file():
            return path
    raise FontMissing(f"font {name!r} is not installed (looked for {', '.join(FONTS[name])} under {FONT_ROOT}); "
                      "run scripts/system-deps")


def available_fonts() -> list[str]:
    """The names in FONTS whose file is installed, in FONTS order."""
    out = []
    for name in FONTS:
        try:
            font_path(name)
            out.append(name)
        except FontMissing:
            pass
    return out


@lru_cache(maxsize=512)
def _font(name: str, px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path(name)), px)


@dataclass(frozen=True)
class Variant:
    size_index: int
    position_index: int
    font: str
    scale: float  # font size as a fraction of the canvas side
    centre: tuple[float, float]  # text centre as fractions of the canvas (x, y)


@dataclass(frozen=True)
class RenderPlan:
    """What decides the pixels of a rendered word. Scores reduce max over positions, mean over sizes."""

    canvas: int
    fonts: tuple[str, ...] = DEFAULT_FONTS
    scales: tuple[float, ...] = (0.22, 0.36)
    positions: tuple[tuple[float, float], ...] = field(default=((0.42, 0.36), (0.58, 0.64)))
    margin: float = 0.04  # fraction of the canvas kept clear at the borders

    def __post_init__(self):
        if self.canvas < 8:
            raise ValueError(f"canvas must be at least 8 px, got {self.canvas}")
        if not self.fonts or not self.scales or not self.positions:
            raise ValueError("a render plan needs at least one font, one size and one position")

    def variants(self) -> list[Variant]:
        """Slots in (size, position) order; index = size_index * n_positions + position_index."""
        n = len(self.fonts)
        return [Variant(s, p, self.fonts[(s + p) % n], scale, pos)
                for s, scale in enumerate(self.scales) for p, pos in enumerate(self.positions)]

    @property
    def n_variants(self) -> int:
        return len(self.scales) * len(self.positions)

    def describe(self) -> dict:
        return {"canvas": self.canvas, "fonts": list(self.fonts), "scales": list(self.scales),
                "positions": [list(p) for p in self.positions], "margin": self.margin,
                "font_files": {f: str(font_path(f)) for f in self.fonts}}


def fitted_font(text: str, font: str, px: int, max_width: int) -> ImageFont.FreeTypeFont:
    """The font at `px`, shrunk so that `text` fits `max_width` (long words would be clipped otherwise)."""
    f = _font(font, px)
    left, _, right, _ = f.getbbox(text)
    if right - left > max_width:
        px = max(MIN_PX, int(px * max_width / (right - left)))
        f = _font(font, px)
        while px > MIN_PX and f.getbbox(text)[2] - f.getbbox(text)[0] > max_width:  # hinting is not linear in px
            px -= 1
            f = _font(font, px)
    return f


def render(text: str, variant: Variant, plan: RenderPlan) -> Image.Image:
    """Black text on white at the variant's font, size and position, kept inside the canvas."""
    n = plan.canvas
    margin = round(plan.margin * n)
    f = fitted_font(text, variant.font, max(MIN_PX, round(variant.scale * n)), n - 2 * margin)
    left, top, right, bottom = f.getbbox(text)
    w, h = right - left, bottom - top
    x = round(variant.centre[0] * n - w / 2)
    y = round(variant.centre[1] * n - h / 2)
    x = min(max(x, margin), max(margin, n - margin - w))
    y = min(max(y, margin), max(margin, n - margin - h))
    img = Image.new("RGB", (n, n), "white")
    ImageDraw.Draw(img).text((x - left, y - top), text, font=f, fill="black")
    return img


def render_all(texts: list[str], plan: RenderPlan) -> np.ndarray:
    """uint8 array (len(texts), n_variants, canvas, canvas, 3) of every text in every variant."""
    variants = plan.variants()
    out = np.empty((len(texts), len(variants), plan.canvas, plan.canvas, 3), dtype=np.uint8)
    for i, text in enumerate(texts):
        for j, v in enumerate(variants):
            out[i, j] = np.asarray(render(text, v, plan))
    return out


def reduce_variants(values: np.ndarray, plan: RenderPlan) -> np.ndarray:
    """(n, n_variants, ...) -> (n, ...): max over positions, then mean over font sizes."""
    shaped = values.reshape(values.shape[0], len(plan.scales), len(plan.positions), *values.shape[2:])
    return shaped.max(axis=2).mean(axis=1)


@lru_cache(maxsize=8)
def attack_font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans Bold from matplotlib's own data, so every machine draws the same pixels."""
    from matplotlib import font_manager

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold"),
                                 fallback_to_default=False)
    return ImageFont.truetype(path, size)
