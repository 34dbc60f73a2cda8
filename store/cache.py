"""The image cache on disk.

Dataset images are content-addressed (`images/ab/<sha256>.webp`); a neuron's own renders live
under its canonical key (`units/<model>/<layer>/<unit>/<name>`). Every write is atomic
(temp file + rename), so a reader never sees half a file.
"""
import hashlib
import io
import os
import tempfile
from pathlib import Path

from PIL import Image as PILImage

from store.keys import UnitKey

THUMB_SIZE = 128


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def resolve(self, rel: str) -> Path | None:
        """The file for a cache-relative path, or None if it escapes the cache or does not exist."""
        if not rel or "\x00" in rel:
            return None
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    def write(self, rel: str, data: bytes) -> str:
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"cache path {rel!r} escapes the cache")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return rel

    def put_image(self, img: PILImage.Image, fmt: str = "webp", quality: int = 90) -> str:
        """Store an image content-addressed; returns its cache path."""
        data = encode(img, fmt, quality)
        digest = hashlib.sha256(data).hexdigest()
        rel = f"images/{digest[:2]}/{digest}.{fmt}"
        if not (self.root / rel).exists():
            self.write(rel, data)
        return rel

    def put_thumb(self, img: PILImage.Image, size: int = THUMB_SIZE) -> str:
        thumb = img.copy()
        thumb.thumbnail((size, size))
        return self.put_image(thumb)

    def unit_path(self, key: UnitKey, name: str) -> str:
        return f"units/{key.path}/{name}"

    def put_unit_image(self, key: UnitKey, name: str, img: PILImage.Image, fmt: str = "png") -> str:
        return self.write(self.unit_path(key, f"{name}.{fmt}"), encode(img, fmt))


def encode(img: PILImage.Image, fmt: str = "png", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "webp":
        img.save(buf, format="WEBP", quality=quality, method=4)
    else:
        img.save(buf, format=fmt.upper())
    return buf.getvalue()
