"""Put corpus images into the store: the picture (bounded size) and its thumbnail in the content-addressed
cache, and one `images` row per distinct content hash. Any stage that shows corpus images uses this."""
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from store.schema import Image
from store.writes import Store
from worker.compute.corpus import Entry, Skip, entries_at, open_entry

MAX_SIDE = 1024  # pages show thumbnails; the stored picture need not be the original's full size


def store_images(store: Store, corpus: str | Path, positions: Iterable[int], threads: int = 2,
                 chunk: int = 64) -> dict[int, int]:
    """{stream position: images.id} for the given corpus entries; entries unreadable now are left out.
    Decoding and encoding run in `threads` threads, `chunk` images at a time (bounded memory)."""
    return store_entries(store, sorted(entries_at(corpus, positions).items()), threads, chunk)


def store_entries(store: Store, entries: list[tuple[int, Entry]], threads: int = 2,
                  chunk: int = 64) -> dict[int, int]:
    """`store_images` for entries already at hand (a distributed write knows its entries from the
    listing ranges, so it does not list the corpus again)."""
    out: dict[int, int] = {}
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for start in range(0, len(entries), chunk):
            out.update(_store_chunk(store, pool, entries[start:start + chunk]))
    return out


def _store_chunk(store: Store, pool: ThreadPoolExecutor, entries: list[tuple[int, Entry]]) -> dict[int, int]:
    opened = [item for item in pool.map(_open, entries) if item[1] is not None]
    lookup = dict(entries)
    by_sha: dict[str, tuple[Entry, PILImage.Image]] = {}
    for position, sha, img in opened:
        by_sha.setdefault(sha, (lookup[position], img))
    ids = _existing(store, list(by_sha))
    missing = [sha for sha in by_sha if sha not in ids]
    ids.update(_insert(store, list(pool.map(lambda sha: _cache_row(store, sha, *by_sha[sha]), missing))))
    return {position: ids[sha] for position, sha, _ in opened}


def _open(item: tuple[int, Entry]) -> tuple[int, str | None, PILImage.Image | None]:
    position, entry = item
    try:
        sha, img = open_entry(entry)
    except Skip:
        return position, None, None
    return position, sha, img


def _existing(store: Store, shas: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    with store.sessions() as session:
        for start in range(0, len(shas), 500):
            chunk = shas[start:start + 500]
            out.update(session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_(chunk))).all())
    return out


def _cache_row(store: Store, sha: str, entry: Entry, img: PILImage.Image) -> dict:
    stored = img.copy()
    stored.thumbnail((MAX_SIDE, MAX_SIDE))
    return {"sha256": sha, "source": entry.source[:512], "caption": entry.caption, "width": img.width,
            "height": img.height, "path": store.cache.put_image(stored), "thumb": store.cache.put_thumb(img)}


def _insert(store: Store, rows: list[dict]) -> dict[str, int]:
    """Insert new image rows; one written meanwhile by another process is looked up instead."""
    out: dict[str, int] = {}
    try:
        with store.sessions.begin() as session:
            for row in rows:
                image = Image(**row)
                session.add(image)
                session.flush()
                out[row["sha256"]] = image.id
        return out
    except IntegrityError:
        out.clear()
    for row in rows:  # a concurrent writer won a race: one row at a time
        try:
            with store.sessions.begin() as session:
                image = Image(**row)
                session.add(image)
                session.flush()
                out[row["sha256"]] = image.id
        except IntegrityError:
            out.update(_existing(store, [row["sha256"]]))
    return out
