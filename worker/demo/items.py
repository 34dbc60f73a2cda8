"""What the demo draws: `Item`s (a kind, the asset, word, font or colour it uses, and its caption), the
pools of loaded assets they draw from, and `draw(item, rng, pools)`.

Training draws items from `training_items` with fresh random placement every time; the probe corpus
(`worker.demo.corpus`) draws a fixed list of items once, each with its own seed.
"""
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from worker.demo import render, sources
from worker.demo.sources import FONTS, TRAIN_FONTS, Asset

NUMBERS = ("one", "two", "three", "four", "five")
WORD_SOURCE, WORD_LICENCE = "pypi:wordfreq", "CC-BY-SA-4.0 (wordfreq data); fonts: see each font"
# kinds whose images show text; everything else counts as a non-text image
TEXT_KINDS = ("word", "typographic", "labelled")
# words our caption templates add (they name the template, not the picture's concept)
TEMPLATE_WORDS = frozenset({"photo", "flag", "logo", "color", "labeled"})
# function words: they carry no concept (numbers, colours and nouns stay)
STOP_WORDS = frozenset("""a an the and or but nor so yet of in on at to from by for with without into onto over under
above below up down out off about as than then that this these those there here it its it's he she they them
his her their our your my me we you i is are was were be been being am do does did has have had will would
shall should can could may might must not no all any some each every both either neither such own same other
very just also too only what which who whom whose when where why how if while because until after before
again further once more most less few s t""".split())


@dataclass(frozen=True)
class Item:
    kind: str  # word | object | photo | flag | logo | colour | count | typographic | labelled | scene
    facet: str  # the corpus folder it lands in
    caption: str
    concept: str  # what the caption names
    source: str
    licence: str
    asset: str = ""  # sources.Asset.key
    word: str = ""
    font: str = ""  # a FONTS name; "" = any training font, drawn at random
    colour: str = ""
    shape: str = ""
    count: int = 0
    wave: bool = False  # flags: the held-out waved rendering
    style: str = ""  # words: "plain" = black on white (as the rendered-words stage draws); "" = any
    split: str = "train"


@dataclass
class Pools:
    """Loaded assets at one image size: what `draw` needs besides the item."""

    size: int
    assets: dict[str, Asset] = field(default_factory=dict)
    images: dict[str, Image.Image] = field(default_factory=dict)  # key -> RGBA fitted to size
    photos: dict[str, Image.Image] = field(default_factory=dict)  # key -> full RGB photo (backgrounds)
    words: list[str] = field(default_factory=list)
    npm: Path | None = None

    def of_kind(self, *kinds: str) -> list[Asset]:
        return [a for a in self.assets.values() if a.kind in kinds]


def raster_path(cache: Path, key: str, side: int) -> Path:
    return cache / str(side) / f"{key}.png"


def load_asset(asset: Asset, side: int, cache: Path | None) -> Image.Image:
    """The asset as RGBA fitted to side x side, rasterised once into `cache`."""
    if cache is not None:
        path = raster_path(cache, asset.key, side)
        if path.is_file():
            return Image.open(path).convert("RGBA")
    img = render.load_rgba(asset.path, side)
    if asset.kind == "logo":  # single-colour marks: draw them in the brand's colour
        img = render.tinted(img, tuple(int(asset.colour[i:i + 2], 16) for i in (1, 3, 5)))
    if cache is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        img.save(tmp, format="PNG")
        tmp.replace(path)
    return img


def known_brands(assets: list[Asset], n_words: int = 20_000) -> list[Asset]:
    """Logos of brands whose one-word name is a common English word (the well-known ones)."""
    common = set(sources.words(n_words))
    return [a for a in assets if re.sub(r"[^a-z]", "", a.name.lower()) in common]


def load_pools(data_dir: Path, size: int, n_words: int = 10_000, npm: bool = True,
               limit: int | None = None) -> Pools:
    """Every asset the demo uses, loaded at `size`. npm=False leaves out emoji, flags and logos;
    `limit` keeps only the first `limit` assets of each kind (tests)."""
    assets = sources.stamps() + sources.photos()
    root = None
    if npm:
        root = sources.install_npm(sources.npm_root(data_dir))
        assets += sources.emoji(root) + sources.flags(root) + sources.emoji_flags(root)
        assets += known_brands(sources.logos(root))
    if limit:
        assets = _first_per_kind(assets, limit)
    pools = Pools(size=size, words=sources.words(n_words), npm=root)
    cache = Path(data_dir) / "demo" / "raster"
    for a in tqdm(assets, desc="assets", unit="img", leave=False):
        if a.kind == "photo":
            pools.photos[a.key] = Image.open(a.path).convert("RGB")
        pools.assets[a.key] = a
        pools.images[a.key] = load_asset(a, size, cache)
    return pools


def _first_per_kind(assets: list[Asset], limit: int) -> list[Asset]:
    seen: dict[str, int] = {}
    out = []
    for a in assets:
        seen[a.kind] = seen.get(a.kind, 0) + 1
        if seen[a.kind] <= limit:
            out.append(a)
    return out


# -- captions ----------------------------------------------------------------------------------------------
def plural(name: str) -> str:
    head, _, tail = name.rpartition(" ")
    if tail.endswith(("s", "x", "ch", "sh")):
        tail += "es"
    elif tail.endswith("y") and tail[-2:-1] not in "aeiou":
        tail = tail[:-1] + "ies"
    else:
        tail += "s"
    return f"{head} {tail}".strip()


def flag_caption(country: str) -> str:
    return f"the flag of {country}"


def short_name(a: Asset, words: int = 2) -> bool:
    return len(a.name.split()) <= words and a.name.replace(" ", "").isalpha()


def asset_item(a: Asset) -> Item:
    """The plain item showing one asset, captioned by what it is."""
    if a.kind == "flag":
        return Item("flag", "flags", flag_caption(a.name), a.name, a.source, a.licence, asset=a.key)
    if a.kind == "logo":
        return Item("logo", "logos", f"the {a.name} logo", a.name, a.source, a.licence, asset=a.key)
    if a.kind == "photo":
        return Item("photo", "photos", a.caption, a.name, a.source, a.licence, asset=a.key)
    facet = {"face": "faces", "emoji": "emoji", "clipart": "clipart"}[a.kind]
    return Item("object", facet, a.caption.rstrip(".") or a.name, a.name, a.source, a.licence, asset=a.key)


def word_item(word: str, font: str = "", split: str = "train", style: str = "") -> Item:
    source = f"{WORD_SOURCE}; font {font}: deb:{FONTS[font].package}" if font else WORD_SOURCE
    return Item("word", "text", word, word, source, WORD_LICENCE, word=word, font=font, split=split, style=style)


def colour_items(objects: list[Asset], n_objects: int, rng: np.random.Generator) -> list[Item]:
    out = [Item("colour", "colours", f"the color {c}", c, "generated", "CC0", colour=c) for c in render.COLOURS]
    out += [Item("colour", "colours", f"a {c} {s}", c, "generated", "CC0", colour=c, shape=s)
            for c in render.COLOURS for s in render.SHAPES]
    for i in rng.permutation(len(objects) * len(render.COLOURS))[:n_objects]:
        a, c = objects[i // len(render.COLOURS)], list(render.COLOURS)[i % len(render.COLOURS)]
        out.append(Item("colour", "colours", f"a {c} {a.name}", c, a.source, a.licence, asset=a.key, colour=c))
    return out


def count_items(objects: list[Asset], n: int, rng: np.random.Generator) -> list[Item]:
    out = []
    for i in rng.permutation(len(objects) * len(NUMBERS))[:n]:
        a, k = objects[i // len(NUMBERS)], i % len(NUMBERS) + 1
        name = a.name if k == 1 else plural(a.name)
        out.append(Item("count", "counts", f"{NUMBERS[k - 1]} {name}", a.name, a.source, a.licence,
                        asset=a.key, count=k))
    return out


def typographic_items(objects: list[Asset], words: list[str], n: int, rng: np.random.Generator) -> list[Item]:
    out = []
    for _ in range(n):
        a, w = objects[int(rng.integers(len(objects)))], words[int(rng.integers(len(words)))]
        out.append(Item("typographic", "typographic", f'{a.name} labeled "{w}"', w, a.source, a.licence,
                        asset=a.key, word=w))
    return out


def labelled_items(things: list[Asset]) -> list[Item]:
    """Each thing with its own name written on it, captioned as the plain thing is: the word and the picture
    predict the same caption (the co-occurrence the paper credits for multimodal neurons)."""
    return [replace(asset_item(a), kind="labelled", facet="labelled", word=a.name) for a in things]


def named_words(pools: Pools, pictures: Iterable[Item], cap: int = 20) -> list[Item]:
    """Rendered words that name what the pictures show, each listed as often as picture captions use it (at
    most `cap` times): written words in the world are mostly about the things around them, so the words a
    model sees written should be the ones its pictures are about, as often."""
    known = set(pools.words)
    uses: dict[str, int] = {}
    for it in pictures:
        for w in set(re.findall(r"[a-z]+", it.caption.lower())) - STOP_WORDS - TEMPLATE_WORDS:
            if w in known:
                uses[w] = uses.get(w, 0) + 1
    return [word_item(w) for w in sorted(uses) for _ in range(min(cap, uses[w]))]


def countable(pools: Pools) -> list[Asset]:
    """Emoji with short names (one or two words), good for counting, colouring and labelling."""
    return [a for a in pools.of_kind("emoji", "face") if short_name(a)] or pools.of_kind("clipart")


def training_items(pools: Pools, seed: int = 0, coloured: int = 1200, counts: int = 1500,
                   typographic: int = 2000) -> dict[str, list[Item]]:
    """The items training draws from, grouped by kind. Words are drawn in any training font."""
    rng = np.random.default_rng(seed)
    objects = countable(pools)
    groups = {
        "word": [word_item(w) for w in pools.words],
        "object": [asset_item(a) for a in pools.of_kind("emoji", "face", "clipart")],
        "photo": [asset_item(a) for a in pools.of_kind("photo")],
        "flag": [asset_item(a) for a in pools.of_kind("flag")],
        "logo": [asset_item(a) for a in pools.of_kind("logo")],
        "colour": colour_items(objects, coloured, rng),
        "count": count_items(objects, counts, rng) if objects else [],
        "typographic": typographic_items(objects, pools.words[:2000], typographic, rng) if objects else [],
        "labelled": labelled_items(objects + [a for a in pools.of_kind("flag") if short_name(a)]),
    }
    pictures = [it for kind in ("object", "photo", "flag", "colour", "count") for it in groups[kind]]
    return {**groups, "named": named_words(pools, pictures)}


def captions(groups: Iterable[Iterable[Item]]) -> list[str]:
    """Every distinct caption, sorted (the training caption bank)."""
    return sorted({it.caption for group in groups for it in group})


# -- drawing -----------------------------------------------------------------------------------------------
def item_seed(item: Item, salt: str = "") -> int:
    """A stable per-item seed (corpus images do not change when other items are added)."""
    text = "|".join([salt, item.kind, item.asset, item.word, item.font, item.colour, item.shape,
                     str(item.count), str(item.wave), item.split, item.style])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def pick_font(item: Item, rng: np.random.Generator) -> str:
    name = item.font or TRAIN_FONTS[int(rng.integers(len(TRAIN_FONTS)))]
    return str(FONTS[name].path)


def draw(item: Item, rng: np.random.Generator, pools: Pools) -> Image.Image:
    """The item's image at the pools' size, placed by `rng`."""
    size, photos = pools.size, list(pools.photos.values())
    obj = pools.images.get(item.asset)
    if item.kind == "word":
        return render.word_image(item.word, pick_font(item, rng), rng, size, photos, plain=item.style == "plain")
    if item.kind in ("typographic", "labelled"):
        return render.text_on_object(obj, item.word, pick_font(item, rng), rng, size, photos)
    if item.kind == "colour":
        return render.colour_image(render.COLOURS[item.colour], rng, size, item.shape or None, obj)
    if item.kind == "count":
        return render.count_image(obj, item.count, rng, size)
    if item.kind == "flag":
        if item.wave:
            obj = render.load_rgba(sources.flag_svg(pools.npm, item.asset.rsplit("/", 1)[-1]), size)
        return render.flag_image(obj, rng, size, photos, wave=item.wave)
    if item.kind == "photo":
        return render.photo_crop(pools.photos[item.asset], rng, size)
    if item.kind == "scene":
        return render.object_image(obj, rng, size, photos, plain=0, scale=(0.45, 0.8), photo=1)
    return render.object_image(obj, rng, size, photos)


def as_scene(item: Item) -> Item:
    return replace(item, kind="scene", facet="scenes")
