"""What the demo corpus is made of: data that registries ship, each piece with its package and licence.

- fonts: Debian font packages (scripts/system-deps installs them); one family is held out of training
- words: wordfreq's most common English words
- clip art: tuxpaint-stamps-default (Debian), captions from each stamp's .txt file
- photos: scikit-image, scikit-learn and matplotlib sample images, captions from `PHOTOS`
- emoji: openmoji and emoji-datasource-google (npm), names from openmoji's annotations
- flags: svg-country-flags (npm), names from its countries.json
- logos: simple-icons (npm), brand names from its data file

npm packages are installed, at pinned versions, into a git-ignored folder (`install_npm`).
"""
import json
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

FONT_ROOT = Path("/usr/share/fonts")
STAMPS_ROOT = Path("/usr/share/tuxpaint/stamps")

NPM_PACKAGES = {
    "openmoji": "17.0.0",
    "emoji-datasource-google": "16.0.0",
    "svg-country-flags": "1.2.10",
    "simple-icons": "16.37.0",
}


class SourceMissing(RuntimeError):
    """A registry package the corpus needs is not installed here."""


@dataclass(frozen=True)
class Font:
    name: str
    files: tuple[str, ...]  # candidates under FONT_ROOT, first found wins
    package: str
    licence: str

    @property
    def path(self) -> Path:
        for rel in self.files:
            if (FONT_ROOT / rel).is_file():
                return FONT_ROOT / rel
        raise SourceMissing(f"font {self.name} not installed (Debian package {self.package}); "
                            "run scripts/system-deps")


def _font(name: str, package: str, licence: str, *files: str) -> Font:
    return Font(name, files, package, licence)


FONTS: dict[str, Font] = {f.name: f for f in (
    _font("dejavu-sans", "fonts-dejavu-core", "Bitstream-Vera", "truetype/dejavu/DejaVuSans.ttf"),
    _font("dejavu-sans-bold", "fonts-dejavu-core", "Bitstream-Vera", "truetype/dejavu/DejaVuSans-Bold.ttf"),
    _font("dejavu-serif", "fonts-dejavu-core", "Bitstream-Vera", "truetype/dejavu/DejaVuSerif.ttf"),
    _font("dejavu-mono", "fonts-dejavu-core", "Bitstream-Vera", "truetype/dejavu/DejaVuSansMono.ttf"),
    _font("liberation-sans", "fonts-liberation2", "OFL-1.1", "truetype/liberation2/LiberationSans-Regular.ttf"),
    _font("liberation-sans-bold", "fonts-liberation2", "OFL-1.1", "truetype/liberation2/LiberationSans-Bold.ttf"),
    _font("liberation-serif", "fonts-liberation2", "OFL-1.1", "truetype/liberation2/LiberationSerif-Regular.ttf"),
    _font("liberation-mono", "fonts-liberation2", "OFL-1.1", "truetype/liberation2/LiberationMono-Regular.ttf"),
    _font("comic-neue", "fonts-comic-neue", "OFL-1.1", "opentype/comic-neue/ComicNeue-Regular.otf",
          "truetype/comic-neue/ComicNeue-Regular.ttf"),
    _font("comic-neue-bold", "fonts-comic-neue", "OFL-1.1", "opentype/comic-neue/ComicNeue-Bold.otf",
          "truetype/comic-neue/ComicNeue-Bold.ttf"),
    _font("dkg-handwriting", "fonts-dkg-handwriting", "OFL-1.1", "truetype/fifthhorseman/dkg.ttf"),
    _font("free-sans", "fonts-freefont-ttf", "GPL-3+ with font exception", "truetype/freefont/FreeSans.ttf"),
    _font("free-serif", "fonts-freefont-ttf", "GPL-3+ with font exception", "truetype/freefont/FreeSerif.ttf"),
    _font("free-mono", "fonts-freefont-ttf", "GPL-3+ with font exception", "truetype/freefont/FreeMono.ttf"),
    _font("nimbus-sans", "fonts-urw-base35", "AGPL-3 with font exception",
          "opentype/urw-base35/NimbusSans-Regular.otf"),
    _font("nimbus-roman", "fonts-urw-base35", "AGPL-3 with font exception",
          "opentype/urw-base35/NimbusRoman-Regular.otf"),
    _font("urw-gothic", "fonts-urw-base35", "AGPL-3 with font exception", "opentype/urw-base35/URWGothic-Book.otf"),
    _font("urw-bookman", "fonts-urw-base35", "AGPL-3 with font exception",
          "opentype/urw-base35/URWBookman-Light.otf"),
    _font("p052", "fonts-urw-base35", "AGPL-3 with font exception", "opentype/urw-base35/P052-Roman.otf"),
    # held out: never drawn in training, used only by the reading evaluation
    _font("c059", "fonts-urw-base35", "AGPL-3 with font exception", "opentype/urw-base35/C059-Roman.otf"),
)}
HELDOUT_FONT = "c059"
TRAIN_FONTS = tuple(n for n in FONTS if n != HELDOUT_FONT)


@dataclass(frozen=True)
class Asset:
    """One picture from a package, with the concept its captions name."""

    key: str  # stable, unique: "<kind>/<id>"
    name: str  # the concept: "grinning face", "France", "a red apple"
    kind: str  # clipart | photo | emoji | face | flag | logo
    source: str  # package@version
    licence: str
    path: str
    caption: str = ""  # a ready caption (clip art, photos); otherwise templates make one from `name`
    colour: str = ""  # logos: the brand colour (#rrggbb)


def words(n: int = 10_000) -> list[str]:
    """wordfreq's n most common English words, alphabetic only (no "00", "2nd", "don't")."""
    from wordfreq import top_n_list

    out = [w for w in top_n_list("en", int(n * 1.2)) if w.isalpha()]
    return out[:n]


def wordfreq_source() -> str:
    from importlib.metadata import version

    return f"wordfreq@{version('wordfreq')}"


# -- npm ---------------------------------------------------------------------------------------------------
def npm_root(data_dir: Path) -> Path:
    return Path(data_dir) / "npm"


def npm_ready(root: Path) -> bool:
    marker = root / "installed.json"
    return marker.is_file() and json.loads(marker.read_text()) == NPM_PACKAGES


def install_npm(root: Path) -> Path:
    """Install the pinned npm packages into `root` (once; reused while the pins are unchanged)."""
    root = Path(root)
    if npm_ready(root):
        return root
    npm = shutil.which("npm")
    if npm is None:
        raise SourceMissing("npm is not installed; it fetches the emoji, flag and logo packages "
                            "(Debian package npm)")
    root.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}@{version}" for name, version in NPM_PACKAGES.items()]
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--no-save",
                           "--prefix", str(root), *specs], capture_output=True, text=True)
    if done.returncode != 0:
        raise SourceMissing(f"npm install {' '.join(specs)} failed: {done.stderr.strip()[-500:]}")
    (root / "installed.json").write_text(json.dumps(NPM_PACKAGES))
    return root


def _pkg(root: Path, name: str) -> Path:
    path = Path(root) / "node_modules" / name
    if not path.is_dir():
        raise SourceMissing(f"npm package {name} not found under {root}; run `microscope demo corpus`")
    return path


def _src(name: str) -> str:
    return f"npm:{name}@{NPM_PACKAGES[name]}"


# -- clip art and photos -----------------------------------------------------------------------------------
def stamps(root: Path = STAMPS_ROOT) -> list[Asset]:
    """tuxpaint stamps with an English caption (letters, sign language and mirrored copies left out)."""
    if not root.is_dir():
        raise SourceMissing(f"{root} missing: Debian package tuxpaint-stamps-default (scripts/system-deps)")
    out = []
    for png in sorted(root.rglob("*.png")):
        rel = png.relative_to(root)
        if rel.parts[:2] == ("symbols", "alphabets") or png.stem.endswith(("_mirror", "_flip")):
            continue
        txt = png.with_suffix(".txt")
        caption = txt.read_text(errors="replace").splitlines()[0].strip() if txt.is_file() else ""
        if caption:
            out.append(Asset(f"clipart/{rel.with_suffix('').as_posix()}", caption.rstrip("."), "clipart",
                             "deb:tuxpaint-stamps-default", "GPL-2", str(png), caption=caption))
    return out


# file -> caption; the licences are those the packages state for each sample image
PHOTOS = {
    ("skimage", "astronaut.png"): ("a photo of an astronaut in a space suit", "public domain (NASA)"),
    ("skimage", "chelsea.png"): ("a photo of a cat", "CC0 (Stefan van der Walt)"),
    ("skimage", "coffee.png"): ("a photo of a cup of coffee", "CC0 (Rachel Michetti)"),
    ("skimage", "rocket.jpg"): ("a photo of a rocket launch", "public domain (NASA)"),
    ("skimage", "hubble_deep_field.jpg"): ("a photo of galaxies in space", "public domain (NASA)"),
    ("skimage", "motorcycle_left.png"): ("a photo of a motorcycle", "CC BY (Middlebury stereo)"),
    ("skimage", "grass.png"): ("a photo of grass", "CC0"),
    ("skimage", "gravel.png"): ("a photo of gravel", "CC0"),
    ("skimage", "brick.png"): ("a photo of a brick wall", "CC0"),
    ("skimage", "coins.png"): ("a photo of old coins", "public domain (Brooklyn Museum)"),
    ("skimage", "camera.png"): ("a photo of a man with a camera", "CC0 (Lav Varshney)"),
    ("skimage", "moon.png"): ("a photo of the surface of the moon", "public domain (NASA)"),
    ("sklearn", "china.jpg"): ("a photo of a chinese temple", "CC BY 2.0 (Wikimedia)"),
    ("sklearn", "flower.jpg"): ("a photo of a flower", "CC BY 2.0 (Wikimedia)"),
    ("matplotlib", "grace_hopper.jpg"): ("a photo of a woman in a navy uniform", "public domain (US Navy)"),
}
PHOTO_DIRS = {"skimage": ("skimage", "data"), "sklearn": ("sklearn", "datasets/images"),
              "matplotlib": ("matplotlib", "mpl-data/sample_data")}


def _package_dir(module: str) -> Path | None:
    from importlib.util import find_spec

    spec = find_spec(module)
    return Path(spec.origin).parent if spec and spec.origin else None


def photos() -> list[Asset]:
    """The sample photos the Python packages ship (those installed here)."""
    from importlib.metadata import version

    out = []
    for (pkg, name), (caption, licence) in PHOTOS.items():
        module, sub = PHOTO_DIRS[pkg]
        base = _package_dir(module)
        path = base / sub / name if base else None
        if path and path.is_file():
            dist = {"skimage": "scikit-image", "sklearn": "scikit-learn"}.get(pkg, pkg)
            out.append(Asset(f"photo/{pkg}/{Path(name).stem}", caption.removeprefix("a photo of "), "photo",
                             f"pypi:{dist}@{version(dist)}", licence, str(path), caption=caption))
    return out


# -- npm: emoji, flags, logos ------------------------------------------------------------------------------
FACE_SUBGROUPS = ("face-", "cat-face", "monkey-face")
EMOJI_GROUPS = ("smileys-emotion", "people-body", "animals-nature", "food-drink", "travel-places",
                "activities", "objects", "symbols")


@cache
def _openmoji_names(root: str) -> dict[str, tuple[str, str, str]]:
    """hexcode -> (annotation, group, subgroup) for every emoji without a skin tone."""
    data = json.loads((_pkg(Path(root), "openmoji") / "data" / "openmoji.json").read_text())
    return {e["hexcode"].upper(): (e["annotation"], e["group"], e["subgroups"]) for e in data if not e["skintone"]}


def _emoji_kind(group: str, subgroup: str) -> str:
    return "face" if group == "smileys-emotion" and subgroup.startswith(FACE_SUBGROUPS) else "emoji"


def emoji(root: Path) -> list[Asset]:
    """openmoji (SVG) and Google (64 px PNG) emoji, named by openmoji's annotations; flags excluded."""
    names = _openmoji_names(str(root))
    out = []
    om = _pkg(root, "openmoji") / "color" / "svg"
    for hexcode, (name, group, sub) in sorted(names.items()):
        if group in EMOJI_GROUPS and (om / f"{hexcode}.svg").is_file():
            out.append(Asset(f"emoji/openmoji/{hexcode}", name, _emoji_kind(group, sub), _src("openmoji"),
                             "CC-BY-SA-4.0", str(om / f"{hexcode}.svg")))
    google = _pkg(root, "emoji-datasource-google")
    for e in json.loads((google / "emoji.json").read_text()):
        hexcode = e["unified"].upper()
        name, group, sub = names.get(hexcode) or names.get(e.get("non_qualified") or "", (None, "", ""))
        path = google / "img" / "google" / "64" / e["image"]
        if name and group in EMOJI_GROUPS and e.get("has_img_google") and path.is_file():
            out.append(Asset(f"emoji/google/{hexcode}", name, _emoji_kind(group, sub), _src("emoji-datasource-google"),
                             "Apache-2.0 (Noto Emoji images)", str(path)))
    return out


def countries(root: Path) -> dict[str, str]:
    """ISO code (upper case) -> country name, as svg-country-flags names them."""
    return json.loads((_pkg(root, "svg-country-flags") / "countries.json").read_text())


def flags(root: Path) -> list[Asset]:
    """Country flags: svg-country-flags PNGs (the flat renderings training and evaluation start from)."""
    pkg = _pkg(root, "svg-country-flags")
    out = []
    for code, name in sorted(countries(root).items()):
        png = pkg / "png250px" / f"{code.lower()}.png"
        if png.is_file():
            out.append(Asset(f"flag/{code.lower()}", name, "flag", _src("svg-country-flags"), "public domain",
                             str(png)))
    return out


def flag_svg(root: Path, code: str) -> Path:
    return _pkg(root, "svg-country-flags") / "svg" / f"{code.lower()}.svg"


def emoji_flags(root: Path) -> list[Asset]:
    """The emoji renderings of the same flags (openmoji and Google), named as svg-country-flags names them."""
    names = countries(root)
    out = []
    om = _pkg(root, "openmoji") / "color" / "svg"
    google = _pkg(root, "emoji-datasource-google") / "img" / "google" / "64"
    for code, name in sorted(names.items()):
        hexcode = "-".join(f"{0x1F1E6 + ord(c) - ord('A'):X}" for c in code.upper())
        if len(code) == 2 and (om / f"{hexcode}.svg").is_file():
            out.append(Asset(f"flag/openmoji/{code.lower()}", name, "flag", _src("openmoji"), "CC-BY-SA-4.0",
                             str(om / f"{hexcode}.svg")))
        png = google / f"{hexcode.lower()}.png"
        if len(code) == 2 and png.is_file():
            out.append(Asset(f"flag/google/{code.lower()}", name, "flag", _src("emoji-datasource-google"),
                             "Apache-2.0 (Noto Emoji images)", str(png)))
    return out


def logos(root: Path) -> list[Asset]:
    """simple-icons brand marks (single colour SVGs) with the brand's name and colour."""
    pkg = _pkg(root, "simple-icons")
    out = []
    for icon in json.loads((pkg / "data" / "simple-icons.json").read_text()):
        svg = pkg / "icons" / f"{icon['slug']}.svg"
        if svg.is_file():
            out.append(Asset(f"logo/{icon['slug']}", icon["title"], "logo", _src("simple-icons"),
                             icon.get("license", {}).get("type", "CC0-1.0"), str(svg), colour=f"#{icon['hex']}"))
    return out
