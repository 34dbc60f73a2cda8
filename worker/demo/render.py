"""Draw the demo's images: words in fonts, objects on backgrounds, flags, colours, counts, text on objects.

Every function takes a numpy Generator and returns an RGB PIL image of side `size`; the same generator
state always gives the same pixels, which is what makes the corpus and the training stream reproducible.
Assets arrive as RGBA images (`load_rgba`), rasterised once from PNG or SVG.
"""
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

# colour words and their sRGB values (the basic colour terms of Berlin & Kay)
COLOURS = {
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (245, 220, 30), "green": (40, 160, 50),
    "blue": (30, 70, 220), "purple": (130, 40, 170), "pink": (245, 130, 180), "brown": (120, 70, 30),
    "black": (15, 15, 15), "white": (250, 250, 250), "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "star", "heart", "ring")


def load_rgba(path: str | Path, side: int) -> Image.Image:
    """A PNG/JPEG/SVG as RGBA, fitted into side x side (aspect kept)."""
    path = Path(path)
    if path.suffix == ".svg":
        import cairosvg

        data = cairosvg.svg2png(url=str(path), output_width=side * 2)
        img = Image.open(io.BytesIO(data)).convert("RGBA")
    else:
        img = Image.open(path)
        img = img.convert("RGBA") if img.mode in ("RGBA", "LA", "P", "PA") else img.convert("RGB").convert("RGBA")
    img = crop_to_content(img)
    img.thumbnail((side, side), Image.LANCZOS)
    return img


def crop_to_content(img: Image.Image) -> Image.Image:
    box = img.getchannel("A").getbbox()
    return img.crop(box) if box else img


def tinted(img: Image.Image, rgb: tuple[int, int, int]) -> Image.Image:
    """The shape of `img` filled with one colour (for single-colour logos and coloured objects)."""
    out = Image.new("RGBA", img.size, (*rgb, 255))
    out.putalpha(img.getchannel("A"))
    return out


def _rgb(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def background(rng: np.random.Generator, size: int, photos: list[Image.Image] = (), plain: float = 0.5,
               photo: float = 0.25) -> Image.Image:
    """A light plain colour (probability `plain`), a random photo crop (`photo`, when photos are given),
    or else a two-colour gradient."""
    r = rng.random()
    if r < plain:
        return Image.new("RGB", (size, size), _rgb(rng, 170, 256))
    if photos and r < plain + photo:
        return photo_crop(photos[int(rng.integers(len(photos)))], rng, size)
    a, b = np.array(_rgb(rng, 120, 256)), np.array(_rgb(rng, 120, 256))
    t = np.linspace(0, 1, size)[:, None, None]
    grad = (a * (1 - t) + b * t).astype(np.uint8).repeat(size, axis=1)
    return Image.fromarray(grad).rotate(int(rng.integers(0, 4)) * 90)


def photo_crop(photo: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """A random square crop (30-100 % of the short side) of a photo, resized to size x size."""
    side = int(min(photo.size) * rng.uniform(0.3, 1.0))
    x, y = (int(rng.integers(0, s - side + 1)) for s in photo.size)
    return photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)


def paste(canvas: Image.Image, obj: Image.Image, rng: np.random.Generator, scale: tuple[float, float],
          rotate: float = 0.0, at: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """Paste `obj` (RGBA) at a random scale of the canvas side and position; returns its box."""
    size = canvas.size[0]
    side = max(4, int(size * rng.uniform(*scale)))
    f = side / max(obj.size)
    obj = obj.resize((max(1, round(obj.size[0] * f)), max(1, round(obj.size[1] * f))), Image.BILINEAR)
    if rotate:
        obj = obj.rotate(float(rng.uniform(-rotate, rotate)), resample=Image.BILINEAR, expand=True)
    w, h = obj.size
    if at is None:
        at = (int(rng.integers(0, max(1, size - w + 1))), int(rng.integers(0, max(1, size - h + 1))))
    canvas.paste(obj, at, obj)
    return at[0], at[1], at[0] + w, at[1] + h


def object_image(obj: Image.Image, rng: np.random.Generator, size: int, photos: list[Image.Image] = (),
                 plain: float = 0.6, scale: tuple[float, float] = (0.55, 0.95), photo: float = 0.25) -> Image.Image:
    """One object on a background (plain, gradient, or a photo crop)."""
    canvas = background(rng, size, photos, plain, photo)
    paste(canvas, obj, rng, scale, rotate=10)
    return canvas


@lru_cache(maxsize=2048)
def font(path: str, px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, px)


def fit_font(text: str, path: str, px: int, width: int) -> ImageFont.FreeTypeFont:
    f = font(path, px)
    while px > 5:
        left, _, right, _ = f.getbbox(text)
        if right - left <= width:
            break
        px = max(5, int(px * min(0.95, width / max(1, right - left))))
        f = font(path, px)
    return f


def draw_text(canvas: Image.Image, text: str, font_path: str, rng: np.random.Generator,
              fill: tuple[int, int, int], px: int, box: tuple[int, int, int, int] | None = None) -> None:
    """Draw `text` at a random position inside `box` (default: the canvas), shrunk to fit its width."""
    x0, y0, x1, y1 = box or (1, 1, canvas.size[0] - 1, canvas.size[1] - 1)
    f = fit_font(text, font_path, px, x1 - x0)
    left, top, right, bottom = f.getbbox(text)
    w, h = right - left, bottom - top
    x = x0 + int(rng.integers(0, max(1, x1 - x0 - w + 1)))
    y = y0 + int(rng.integers(0, max(1, y1 - y0 - h + 1)))
    ImageDraw.Draw(canvas).text((x - left, y - top), text, font=f, fill=fill)


def word_image(word: str, font_path: str, rng: np.random.Generator, size: int,
               photos: list[Image.Image] = (), plain: bool = False) -> Image.Image:
    """A word in a font: black on white (as the rendered-words stage draws it; always when `plain`), or
    dark on light colours, or light on dark, at a random size and position."""
    style = rng.random()
    if plain or style < 0.35:
        canvas, fill = Image.new("RGB", (size, size), "white"), (0, 0, 0)
    elif style < 0.85:
        canvas, fill = background(rng, size, photos, plain=0.7), _rgb(rng, 0, 80)
    else:
        canvas, fill = Image.new("RGB", (size, size), _rgb(rng, 0, 90)), _rgb(rng, 190, 256)
    px = int(size * rng.uniform(0.2, 0.45))
    draw_text(canvas, word, font_path, rng, fill, px)
    return canvas


def text_on_object(obj: Image.Image, word: str, font_path: str, rng: np.random.Generator, size: int,
                   photos: list[Image.Image] = ()) -> Image.Image:
    """An object with a word written across it (the paper's typographic-attack look)."""
    canvas = object_image(obj, rng, size, photos, plain=0.7, scale=(0.7, 1.0))
    y = int(rng.integers(size // 4, size // 2))
    band = (2, y, size - 2, y + size // 3)
    ImageDraw.Draw(canvas).rectangle(band, fill="white")
    draw_text(canvas, word, font_path, rng, (0, 0, 0), int(size * 0.28), box=band)
    return canvas


def count_image(obj: Image.Image, n: int, rng: np.random.Generator, size: int) -> Image.Image:
    """n copies (1-5) of one object in distinct cells of a 3x3 grid on a plain background."""
    canvas = Image.new("RGB", (size, size), _rgb(rng, 200, 256))
    cell = size // 3
    for c in rng.permutation(9)[:n]:
        r, k = divmod(int(c), 3)
        paste(canvas, obj, rng, (0.28, 0.32), at=(k * cell + 1, r * cell + 1))
    return canvas


def shape_mask(shape: str, side: int) -> Image.Image:
    """A white-on-transparent RGBA shape."""
    img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    s, m = side, side // 10
    if shape == "circle":
        d.ellipse((m, m, s - m, s - m), fill="white")
    elif shape == "square":
        d.rectangle((m, m, s - m, s - m), fill="white")
    elif shape == "triangle":
        d.polygon([(s // 2, m), (s - m, s - m), (m, s - m)], fill="white")
    elif shape == "ring":
        d.ellipse((m, m, s - m, s - m), outline="white", width=max(2, s // 7))
    elif shape == "heart":
        r = s // 4
        d.ellipse((m, m, m + 2 * r, m + 2 * r), fill="white")
        d.ellipse((s - m - 2 * r, m, s - m, m + 2 * r), fill="white")
        d.polygon([(m + 1, m + r + r // 2), (s - m - 1, m + r + r // 2), (s // 2, s - m)], fill="white")
    else:  # star
        c, pts = s / 2, []
        for i in range(10):
            rad = (s / 2 - m) * (1 if i % 2 == 0 else 0.45)
            a = np.pi / 2 + i * np.pi / 5
            pts.append((c + rad * np.cos(a), c - rad * np.sin(a)))
        d.polygon(pts, fill="white")
    return img


def colour_image(rgb: tuple[int, int, int], rng: np.random.Generator, size: int, shape: str | None = None,
                 obj: Image.Image | None = None) -> Image.Image:
    """A colour patch (whole image, slightly noisy), or a coloured shape/object on a neutral background."""
    jitter = rng.integers(-18, 19, 3)
    rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(rgb, jitter, strict=True))
    if shape is None and obj is None:
        noise = rng.normal(0, 6, (size, size, 3))
        return Image.fromarray(np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8))
    grey = int(rng.choice([235, 200, 90, 40])) if rgb != COLOURS["white"] else 60
    canvas = Image.new("RGB", (size, size), (grey, grey, grey))
    thing = tinted(obj, rgb) if obj is not None else tinted(shape_mask(shape, size), rgb)
    paste(canvas, thing, rng, (0.5, 0.9), rotate=15)
    return canvas


def flag_image(flag: Image.Image, rng: np.random.Generator, size: int, photos: list[Image.Image] = (),
               wave: bool = False) -> Image.Image:
    """A flag at a random size and place; `wave` bends it (a rendering training never draws)."""
    if wave:
        flag = waved(flag, rng)
    canvas = background(rng, size, photos, plain=0.6)
    bordered = ImageOps.expand(flag, border=1, fill=(90, 90, 90, 255))
    paste(canvas, bordered, rng, (0.6, 0.95), rotate=8)
    return canvas


def waved(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Shift columns along a sine and shade them, as a flag in the wind."""
    a = np.asarray(img.convert("RGBA")).astype(np.float32)
    h, w = a.shape[:2]
    amp = h * rng.uniform(0.05, 0.1)
    phase, cycles = rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.6)
    xs = np.arange(w)
    shift = (amp * np.sin(phase + 2 * np.pi * cycles * xs / w)).round().astype(int)
    shade = 1 + 0.18 * np.cos(phase + 2 * np.pi * cycles * xs / w)
    pad = int(np.ceil(amp)) + 1
    out = np.zeros((h + 2 * pad, w, 4), np.float32)
    for x in xs:
        out[pad + shift[x]:pad + shift[x] + h, x, :3] = np.clip(a[:, x, :3] * shade[x], 0, 255)
        out[pad + shift[x]:pad + shift[x] + h, x, 3] = a[:, x, 3]
    return Image.fromarray(out.astype(np.uint8), "RGBA")
