"""Corpora: folders, tar shards and manifests listed in a fixed order; bad files skipped with a reason;
batches are the same with or without loader workers."""
import io
import json
import struct
import tarfile
import zlib
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from worker.compute.corpus import (
    CorpusBatches,
    CorpusError,
    Entry,
    SeenHashes,
    Skip,
    content_hash,
    decode,
    entries_at,
    iter_entries,
    open_entry,
    read_bytes,
    survey,
)


def image_bytes(seed: int, fmt: str = "PNG", size=(24, 20), mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], len(mode))) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels.squeeze(), mode).save(buf, fmt)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size in a few bytes (a decompression bomb's first line)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_folder_is_listed_recursively_in_a_fixed_order_with_sidecar_captions(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b" / "cat.png").write_bytes(image_bytes(1))
    (tmp_path / "b" / "cat.txt").write_text("a small cat\nfr=un petit chat\n")
    (tmp_path / "a.jpg").write_bytes(image_bytes(2, "JPEG"))
    (tmp_path / ".hidden.png").write_bytes(image_bytes(3))
    (tmp_path / ".git" / "x.png").write_bytes(image_bytes(4))
    (tmp_path / "notes.md").write_text("not an image")
    entries = list(iter_entries(tmp_path))
    assert [(e.source, e.caption) for e in entries] == [("a.jpg", ""), ("notes.md", ""), ("b/cat.png", "a small cat")]
    assert survey(tmp_path) == (3, survey(tmp_path)[1])
    assert entries_at(tmp_path, [2, 0]) == {0: entries[0], 2: entries[2]}


def test_tar_shards_group_members_by_key_and_read_by_offset(tmp_path):
    images = {"000.jpg": image_bytes(5, "JPEG"), "001.png": image_bytes(6)}
    write_tar(tmp_path / "shard-000.tar", {
        "000.jpg": images["000.jpg"], "000.txt": b"a red square\n",
        "001.png": images["001.png"], "001.json": json.dumps({"caption": "a dog"}).encode(),
        "002.cls": b"7",
    })
    folder = tmp_path / "corpus"
    folder.mkdir()
    (tmp_path / "shard-000.tar").rename(folder / "shard-000.tar")
    entries = list(iter_entries(folder))
    assert [(e.source, e.caption) for e in entries] == [
        ("shard-000.tar:000.jpg", "a red square"), ("shard-000.tar:001.png", "a dog"), ("shard-000.tar:002.cls", "")]
    for entry, name in zip(entries, images, strict=False):
        assert read_bytes(entry) == images[name]
        sha, img = open_entry(entry)
        assert sha == content_hash(images[name])[0] and img.size == (24, 20)
    with pytest.raises(Skip, match="not-image"):
        open_entry(entries[2])
    assert [e.source for e in iter_entries(folder / "shard-000.tar")][0] == "shard-000.tar:000.jpg"


def test_manifests_give_paths_and_captions_and_count_bad_lines(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.png").write_bytes(image_bytes(7))
    (tmp_path / "m.csv").write_text("Path,Caption\nimg/x.png,an x\nimg/missing.png,\n")
    entries = list(iter_entries(tmp_path / "m.csv"))
    assert [(e.source, e.caption) for e in entries] == [("img/x.png", "an x"), ("img/missing.png", "")]
    assert open_entry(entries[0])[1].size == (24, 20)
    with pytest.raises(Skip, match="missing"):
        open_entry(entries[1])
    lines = ['{"path": "img/x.png", "caption": "x"}', "", "not json", "[1, 2]", '{"caption": "no path"}']
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    entries = list(iter_entries(tmp_path / "m.jsonl"))
    assert [e.error for e in entries] == ["", "bad-manifest-line", "bad-manifest-line", "bad-manifest-line"]
    (tmp_path / "bad.csv").write_text("name,caption\nx,y\n")
    with pytest.raises(CorpusError, match="path column"):
        list(iter_entries(tmp_path / "bad.csv"))
    with pytest.raises(CorpusError, match="does not exist"):
        list(iter_entries(tmp_path / "nope"))


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"just some text, not a picture", "not-image"),
    (image_bytes(8, "PNG", (64, 64))[:400], "truncated"),
    (image_bytes(9, "JPEG", (64, 64))[:300], "truncated"),
    (png_header_only(100_000, 100_000), "too-large"),  # 10 gigapixels claimed in ~60 bytes
    (image_bytes(10, "PNG", (64, 64))[:60] + bytes(140) + image_bytes(10, "PNG", (64, 64))[200:], "corrupt"),
])
def test_bad_files_are_skipped_with_a_reason(tmp_path, data, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(data)
    with pytest.raises(Skip) as skip:
        open_entry(Entry("bad.png", str(path)))
    assert skip.value.reason == reason


def test_size_limits_and_transparency(tmp_path):
    with pytest.raises(Skip, match="too-large"):
        decode(image_bytes(11, size=(100, 100)), max_pixels=5000)
    path = tmp_path / "big.png"
    path.write_bytes(image_bytes(12))
    with pytest.raises(Skip, match="too-large"):
        read_bytes(Entry("big.png", str(path)), max_bytes=100)
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    buf = io.BytesIO()
    clear.save(buf, "PNG")
    assert decode(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)  # flattened on white, not black


def test_seen_hashes_drop_repeats_within_and_across_batches():
    seen = SeenHashes()
    assert seen.first_seen(torch.tensor([5, 3, 5])).tolist() == [True, True, False]
    seen._fold()
    assert seen.first_seen(torch.tensor([3, 9])).tolist() == [False, True]
    again = SeenHashes(seen.tensor())
    assert again.first_seen(torch.tensor([9, 5, 3, 10])).tolist() == [False, False, False, True]
    assert len(again) == 4


def corpus_with_bad_files(root):
    for i in range(11):
        (root / f"{i:02d}.png").write_bytes(image_bytes(20 + i))
    (root / "03.png").write_bytes(b"garbage")
    (root / "07.png").write_bytes(b"")
    (root / "dup.png").write_bytes(image_bytes(20))


def collect(dataset, workers):
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    return [(b.number, b.entries.tolist(), b.hashes.tolist(), b.pixels, b.skipped) for b in loader]


def test_batches_are_numbered_and_identical_with_or_without_workers(tmp_path):
    corpus_with_bad_files(tmp_path)
    transform = lambda img: torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.float32))  # noqa: E731
    alone = collect(CorpusBatches(tmp_path, transform, 4), 0)
    pooled = collect(CorpusBatches(tmp_path, transform, 4), 2)
    assert [b[0] for b in alone] == [0, 1, 2]
    for a, b in zip(alone, pooled, strict=True):
        assert a[:3] == b[:3] and torch.equal(a[3], b[3]) and a[4] == b[4]
    assert sum((b[4] for b in alone), Counter()) == Counter({"not-image": 1, "empty": 1})
    assert sum(len(b[1]) for b in alone) == 10  # 12 files - 2 bad (the duplicate is dropped later, by hash)
    resumed = collect(CorpusBatches(tmp_path, transform, 4, start=1), 0)
    assert [b[0] for b in resumed] == [1, 2] and resumed[0][1] == alone[1][1]


def test_big_jpegs_decode_at_a_reduced_scale_that_still_covers_the_model_input():
    big = image_bytes(13, "JPEG", size=(1000, 700))
    assert decode(big).size == (1000, 700)
    small = decode(big, draft=224)
    assert min(small.size) >= 224 and small.size[0] < 1000
    assert decode(image_bytes(14, "PNG", size=(600, 600)), draft=64).size == (600, 600)  # JPEG only
