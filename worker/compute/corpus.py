"""Image corpora for the worker: a folder (recursive), a CSV/JSONL manifest, WebDataset-style tar shards.

A corpus is listed as a deterministic stream of `Entry`s, never held whole in memory, so a run's
memory does not grow with the corpus. Reading, hashing and decoding happen in DataLoader workers
(`CorpusBatches`). A bad file never stops a run: it becomes a skip with a reason (`SKIP_REASONS`)
that the run's report counts. Images are identified by the SHA-256 of their bytes, so copies of one
image are found wherever they sit; a listing is cut into ranges for parallel work by
`worker.analyses.example_parts`, which reads each image of a range once.
"""
import csv
import hashlib
import io
import json
import os
import tarfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import IterableDataset, get_worker_info

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "pgm", "pbm"}
MANIFEST_EXTS = {".csv", ".jsonl", ".ndjson"}
PATH_KEYS = ("path", "image", "file", "filename")
CAPTION_KEYS = ("caption", "text", "title")
MAX_BYTES = 64 * 2**20
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
EXIF_ORIENTATION = 0x0112
SKIP_REASONS = ("missing", "unreadable", "empty", "too-large", "not-image", "truncated", "corrupt",
                "bad-manifest-line")


class CorpusError(ValueError):
    """The corpus as a whole cannot be read (no such path, a manifest without a path column …)."""


class Skip(Exception):
    """One entry is unusable; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Entry:
    """One item of a corpus. `source` is what the store records; `path`/`offset` say where the bytes are."""

    source: str
    path: str
    caption: str = ""
    offset: int = -1  # byte offset of a tar member's data; -1 for a plain file
    size: int = -1
    error: str = ""  # a problem found while listing (a skip reason)


def _ext(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def iter_entries(corpus: str | Path) -> Iterator[Entry]:
    """Every entry of a corpus, in a fixed order: a folder, a .tar shard, or a .csv/.jsonl manifest."""
    path = Path(corpus).expanduser()
    if path.is_dir():
        yield from _folder(path)
    elif path.suffix.lower() == ".tar" and path.is_file():
        yield from _tar(path, path.name)
    elif path.suffix.lower() in MANIFEST_EXTS and path.is_file():
        yield from _manifest(path)
    elif path.exists():
        raise CorpusError(f"corpus {path} is neither a folder, a .tar shard nor a .csv/.jsonl manifest")
    else:
        raise CorpusError(f"corpus {path} does not exist")


def _folder(root: Path) -> Iterator[Entry]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = sorted(f for f in filenames if not f.startswith("."))
        stems = {n.rsplit(".", 1)[0] for n in names if _ext(n) in IMAGE_EXTS}
        for name in names:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            ext = _ext(name)
            if ext == "tar":
                yield from _tar(full, rel)
            elif ext == "txt" and name.rsplit(".", 1)[0] in stems:
                continue  # a caption sidecar, read with its image
            else:
                yield Entry(rel, str(full), _sidecar_caption(full) if ext in IMAGE_EXTS else "")


def _sidecar_caption(image: Path) -> str:
    """The first line of `<stem>.txt` beside an image (the tuxpaint-stamps layout), if any."""
    txt = image.with_suffix(".txt")
    try:
        with open(txt, encoding="utf-8", errors="replace") as f:
            return f.readline().strip()
    except OSError:
        return ""


def _tar(path: Path, source: str) -> Iterator[Entry]:
    """WebDataset layout: members grouped by key (name up to the first dot); the image member is the
    entry, a `.txt` or `.json` ("caption") member of the same key its caption."""
    try:
        tf = tarfile.open(path, mode="r:")  # uncompressed only: members are read by offset in workers
    except (tarfile.TarError, OSError):
        yield Entry(source, str(path), error="corrupt")
        return
    with tf:
        group: list[tarfile.TarInfo] = []
        try:
            for member in tf:
                if not member.isfile():
                    continue
                if group and _key(member.name) != _key(group[0].name):
                    yield _tar_entry(tf, path, source, group)
                    group = []
                group.append(member)
        except (tarfile.TarError, OSError):
            yield Entry(f"{source}:{len(group)}", str(path), error="truncated")
        if group:
            yield _tar_entry(tf, path, source, group)


def _key(name: str) -> str:
    head, _, base = name.rpartition("/")
    return f"{head}/{base.split('.', 1)[0]}"


def _tar_entry(tf: tarfile.TarFile, path: Path, source: str, group: list[tarfile.TarInfo]) -> Entry:
    image = next((m for m in group if _ext(m.name) in IMAGE_EXTS), group[0])
    caption = ""
    for m in group:
        ext = m.name.split("/")[-1].split(".", 1)[-1].lower()
        if ext in ("txt", "json") and m.size < 1_000_000:
            caption = caption or _member_caption(tf, m, ext)
    return Entry(f"{source}:{image.name}", str(path), caption, image.offset_data, image.size)


def _member_caption(tf: tarfile.TarFile, member: tarfile.TarInfo, ext: str) -> str:
    try:
        text = tf.extractfile(member).read().decode("utf-8", errors="replace")
        if ext == "txt":
            return text.strip().splitlines()[0] if text.strip() else ""
        data = json.loads(text)
        return str(next((data[k] for k in CAPTION_KEYS if k in data), "")) if isinstance(data, dict) else ""
    except (tarfile.TarError, OSError, ValueError):
        return ""


def _manifest(path: Path) -> Iterator[Entry]:
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    for lineno, row in rows:
        where = f"{path.name}:{lineno}"
        if row is None:
            yield Entry(where, "", error="bad-manifest-line")
            continue
        value = next((row[k] for k in PATH_KEYS if row.get(k)), None)
        if not isinstance(value, str):
            yield Entry(where, "", error="bad-manifest-line")
            continue
        full = (path.parent / value).expanduser()
        caption = next((str(row[k]) for k in CAPTION_KEYS if row.get(k)), "")
        yield Entry(value, str(full), caption)


def _csv_rows(path: Path) -> Iterator[tuple[int, dict | None]]:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in reader.fieldnames or []]
        if not any(k in fields for k in PATH_KEYS):
            raise CorpusError(f"manifest {path} needs a header with a path column ({', '.join(PATH_KEYS)}); "
                              f"found {fields}")
        reader.fieldnames = fields
        for row in reader:
            yield reader.line_num, row


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | None]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            yield lineno, row if isinstance(row, dict) else None


def survey(corpus: str | Path) -> tuple[int, str]:
    """(number of entries, digest of their sources): what a checkpoint is valid for."""
    digest, n = hashlib.sha256(), 0
    for entry in iter_entries(corpus):
        digest.update(entry.source.encode() + b"\0")
        n += 1
    return n, digest.hexdigest()


def entries_at(corpus: str | Path, wanted: Iterable[int]) -> dict[int, Entry]:
    """The entries at the given stream positions (one pass over the listing)."""
    wanted = set(wanted)
    out = {}
    for i, entry in enumerate(iter_entries(corpus)):
        if i in wanted:
            out[i] = entry
            if len(out) == len(wanted):
                break
    return out


def read_bytes(entry: Entry, max_bytes: int = MAX_BYTES) -> bytes:
    """The entry's raw bytes, or Skip."""
    if entry.error:
        raise Skip(entry.error)
    try:
        with open(entry.path, "rb") as f:
            if entry.offset >= 0:
                if entry.size > max_bytes:
                    raise Skip("too-large")
                f.seek(entry.offset)
                data = f.read(entry.size)
            else:
                if os.fstat(f.fileno()).st_size > max_bytes:
                    raise Skip("too-large")
                data = f.read(max_bytes + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise Skip("missing") from None
    except OSError:
        raise Skip("unreadable") from None
    if not data:
        raise Skip("empty")
    if len(data) > max_bytes or (entry.size >= 0 and len(data) < entry.size):
        raise Skip("too-large" if len(data) > max_bytes else "truncated")
    return data


def content_hash(data: bytes) -> tuple[str, int]:
    """(hex SHA-256, its first 63 bits as a non-negative int64) of an image's bytes."""
    digest = hashlib.sha256(data).digest()
    return digest.hex(), int.from_bytes(digest[:8], "big") >> 1


def decode(data: bytes, max_pixels: int = MAX_PIXELS, draft: int | None = None) -> Image.Image:
    """An RGB image (transparency flattened on white, EXIF orientation applied), or Skip.

    draft: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as both sides stay >= draft (the
    model's input size): a big photo then decodes many times faster, for a resize that follows anyway.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise Skip("too-large")
            if draft and img.format == "JPEG":
                img.draft("RGB", (draft, draft))
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except Skip:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Skip("too-large") from None
    except UnidentifiedImageError:
        raise Skip("not-image") from None
    except MemoryError:
        raise Skip("too-large") from None
    except Exception as e:  # noqa: BLE001 — any decoder failure is one bad file, never the run's end
        raise Skip("truncated" if "truncated" in str(e).lower() else "corrupt") from None


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return img.convert("RGB")


def is_whole_jpeg(data: bytes) -> bool:
    """A JPEG that ends with its end-of-image marker. A truncated one is left to PIL, which skips it as
    truncated (a GPU decoder would pad it with grey)."""
    return data.startswith(JPEG_START) and data.rstrip(b"\0\n\r ").endswith(JPEG_END)


def device_decodable(data: bytes, max_pixels: int = MAX_PIXELS) -> bool:
    """Whether a whole JPEG can go to the GPU decoder, from its header alone: RGB or grey, and upright
    (nvJPEG ignores EXIF orientation, and CMYK needs PIL's conversion). Skip("too-large") if too big;
    False when the header does not parse (PIL then gives the reason)."""
    if not is_whole_jpeg(data):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > max_pixels:
                    raise Skip("too-large")
                return img.mode in ("RGB", "L") and img.getexif().get(EXIF_ORIENTATION, 1) == 1
    except Image.DecompressionBombError:
        raise Skip("too-large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False


def open_entry(entry: Entry, max_pixels: int = MAX_PIXELS) -> tuple[str, Image.Image]:
    """(sha256 hex, RGB image) of one entry, or Skip."""
    data = read_bytes(entry)
    sha, _ = content_hash(data)
    return sha, decode(data, max_pixels)


def batched(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class Batch:
    """One batch of the entry stream, decoded: its images and the skips."""

    number: int
    pixels: torch.Tensor  # (n, 3, H, W), preprocessed
    entries: torch.Tensor  # (n,) int64 stream positions
    hashes: torch.Tensor  # (n,) int64 content hashes
    n_entries: int
    skipped: Counter
    jpegs: list[bytes] = field(default_factory=list)  # JPEGs left for the device to decode …
    jpeg_rows: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))  # … their rows

    def pin_memory(self) -> "Batch":
        """Called by a DataLoader with pin_memory=True (CUDA): page-locked pixels copy asynchronously."""
        self.pixels = self.pixels.pin_memory()
        return self


class CorpusBatches(IterableDataset):
    """The corpus as numbered batches of `batch_entries` entries from batch `start` on. With
    `jpeg_on_device`, a whole, upright RGB or grey JPEG is read and hashed but left undecoded
    (`worker.compute.device_decode`).

    With several DataLoader workers, worker w takes batches start+w, start+w+W, … and the loader's
    round robin (worker 0, 1, …, W-1, 0, …) puts them back in order, so batch numbers (and what is in
    each batch) never depend on the number of workers. Counting from `start`, not from 0, is what lets
    a run resume with workers: worker 0 must hold the first batch asked for.
    """

    def __init__(self, corpus: str | Path, transform: Callable, batch_entries: int, start: int = 0,
                 max_pixels: int = MAX_PIXELS, draft: int | None = None, jpeg_on_device: bool = False):
        self.corpus, self.transform, self.batch_entries = str(corpus), transform, batch_entries
        self.start, self.max_pixels, self.draft = start, max_pixels, draft
        self.jpeg_on_device = jpeg_on_device

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for number, chunk in enumerate(batched(iter_entries(self.corpus), self.batch_entries)):
            if number >= self.start and (number - self.start) % workers == worker:
                yield self.load(number, chunk)

    def load(self, number: int, chunk: list[Entry]) -> Batch:
        pixels, entries, hashes, skipped, jpegs, jpeg_rows = [], [], [], Counter(), [], []
        for i, entry in enumerate(chunk):
            position = number * self.batch_entries + i
            try:
                data = read_bytes(entry)
                _, hash64 = content_hash(data)
                if self.jpeg_on_device and device_decodable(data, self.max_pixels):
                    jpegs.append(data)
                    jpeg_rows.append(len(entries))
                else:
                    pixels.append(self.pixels(data))
            except Skip as s:
                skipped[s.reason] += 1
                continue
            entries.append(position)
            hashes.append(hash64)
        stack = torch.stack(pixels) if pixels else torch.empty(0)
        return Batch(number, stack, torch.tensor(entries, dtype=torch.int64),
                     torch.tensor(hashes, dtype=torch.int64), len(chunk), skipped, jpegs,
                     torch.tensor(jpeg_rows, dtype=torch.int64))

    def pixels(self, data: bytes) -> torch.Tensor:
        image = decode(data, self.max_pixels, self.draft)
        try:
            return self.transform(image)
        except Exception:  # noqa: BLE001 — e.g. a degenerate size the transform rejects
            raise Skip("corrupt") from None


class SeenHashes:
    """The content hashes seen so far, 8 bytes per image (a sorted array plus a small recent set)."""

    def __init__(self, hashes: torch.Tensor | None = None):
        self.sorted = hashes if hashes is not None else torch.empty(0, dtype=torch.int64)
        self.recent: set[int] = set()

    def first_seen(self, hashes: torch.Tensor) -> torch.Tensor:
        """A mask of the hashes not seen before (nor earlier in `hashes`); marks them seen."""
        known = self._known(hashes)
        keep = []
        for h, k in zip(hashes.tolist(), known.tolist(), strict=True):
            new = not k and h not in self.recent
            if new:
                self.recent.add(h)
            keep.append(new)
        if len(self.recent) > 65536:
            self._fold()
        return torch.tensor(keep, dtype=torch.bool)

    def _known(self, hashes: torch.Tensor) -> torch.Tensor:
        if not len(self.sorted) or not len(hashes):
            return torch.zeros(len(hashes), dtype=torch.bool)
        at = torch.searchsorted(self.sorted, hashes).clamp_max(len(self.sorted) - 1)
        return self.sorted[at] == hashes

    def _fold(self) -> None:
        recent = torch.tensor(sorted(self.recent), dtype=torch.int64)
        self.sorted = torch.cat([self.sorted, recent]).sort().values
        self.recent = set()

    def __len__(self) -> int:
        return len(self.sorted) + len(self.recent)

    def tensor(self) -> torch.Tensor:
        self._fold()
        return self.sorted
