"""`microscope export`: every unit's data as plain tables (Parquet or JSON Lines, one file per table).

Reads the store only (no torch), in chunks of units so a store of any size streams through bounded memory,
with Core queries (exact floats, no ORM objects). The tables and their columns are described once, in TABLES:
docs/export.md lists the same schema, and the Parquet files carry each column's meaning as field metadata.
Neurons are named by their key (model, layer, unit), as everywhere else; images by the store's image id.
"""
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.orm import Session
from tqdm import tqdm

from app import urls
from app.db import (
    DatasetExample,
    Family,
    Image,
    Label,
    Layer,
    Model,
    PlaceScore,
    Unit,
    UnitFamily,
    UnitHeatmaps,
    UnitStats,
    Word,
    WordScore,
)
from app.heatmaps import Heatmaps, unpack
from app.keys import UnitKey

CHUNK = 256  # units read per round of queries
FORMATS = ("parquet", "jsonl")
KEY = [("model", pa.string(), "model name (URL slug)"), ("layer", pa.string(), "layer name"),
       ("unit", pa.int32(), "unit index in its layer")]


@dataclass(frozen=True)
class Table:
    name: str
    meaning: str
    columns: list[tuple[str, pa.DataType, str]]  # (column, type, meaning)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(n, t, metadata={"meaning": m}) for n, t, m in self.columns],
                         metadata={"meaning": self.meaning})


TABLES = [
    Table("units", "one row per unit: activation statistics over the corpus (no row when not computed)", KEY + [
        ("n", pa.int64(), "activations seen"), ("mean", pa.float64(), "mean activation"),
        ("std", pa.float64(), "standard deviation (the unit of the pages' σ)"),
        ("min", pa.float64(), "lowest activation"), ("max", pa.float64(), "highest activation"),
        ("quantiles", pa.map_(pa.string(), pa.float64()), "quantile level (\"0.5\") → activation"),
        ("histogram_edges", pa.list_(pa.float64()), "histogram bin edges (one more than counts)"),
        ("histogram_counts", pa.list_(pa.int64()), "activations per histogram bin"),
    ]),
    Table("examples", "top and most negative dataset examples of each unit, with the spatial activation map", KEY + [
        ("sign", pa.string(), "top or bottom"), ("rank", pa.int32(), "0 = strongest"),
        ("activation", pa.float64(), "the example's activation"),
        ("image_id", pa.int64(), "images.image_id"),
        ("heatmap", pa.list_(pa.list_(pa.float64())), "activation over the image's positions, rows × columns"),
        ("heatmap_image", pa.string(), "URL path of the overlay picture the server draws from the map"),
    ]),
    Table("images", "the dataset images the exported examples refer to", [
        ("image_id", pa.int64(), "the store's image id"), ("sha256", pa.string(), "SHA-256 of the image's bytes"),
        ("source", pa.string(), "where it came from (path, manifest entry, package)"),
        ("caption", pa.string(), "caption, if any"), ("width", pa.int32(), "pixels"),
        ("height", pa.int32(), "pixels"), ("path", pa.string(), "cache path of the image (under /cache/)"),
    ]),
    Table("words", "rendered-word scores: each unit's top and most negative words", KEY + [
        ("sign", pa.string(), "top or bottom"), ("rank", pa.int32(), "0 = strongest"),
        ("word", pa.string(), "the word"), ("score", pa.float64(), "activation for the rendered word"),
    ]),
    Table("places", "country and city scores: activation for each rendered place name", KEY + [
        ("kind", pa.string(), "country or city"), ("name", pa.string(), "place name"),
        ("code", pa.string(), "ISO code (country; a city's country)"), ("lat", pa.float64(), "latitude (cities)"),
        ("lon", pa.float64(), "longitude (cities)"), ("score", pa.float64(), "activation for the rendered name"),
    ]),
    Table("labels", "every version of every label (human and automatic); the newest per source is current", KEY + [
        ("source", pa.string(), "human or auto"), ("version", pa.int32(), "1, 2, … per unit and source"),
        ("text", pa.string(), "the label"), ("author", pa.string(), "who wrote it"),
        ("created_at", pa.timestamp("us", tz="UTC"), "when"),
        ("current", pa.bool_(), "the newest version of its source"),
    ]),
    Table("families", "family memberships (human ones and the worker's suggestions, never merged)", KEY + [
        ("family", pa.string(), "family name"), ("source", pa.string(), "human or auto"),
        ("author", pa.string(), "who added it"), ("score", pa.float64(), "the suggestion's score (auto)"),
    ]),
]
BY_NAME = {t.name: t for t in TABLES}


class ExportError(ValueError):
    """Input the export cannot use (a missing model or layer, an unknown format): one line for the user."""


def example_heatmap(heat: Heatmaps | None, key: dict, sign: str, rank: int) -> dict:
    """One dataset example's map from its unit's `unit_heatmaps` row (app/heatmaps.py), and its overlay URL."""
    i = heat.row(sign, rank) if heat else None
    if i is None:
        return {"heatmap": None, "heatmap_image": None}
    return {"heatmap": heat.values(i).astype(float).tolist(),
            "heatmap_image": urls.example_heatmap(UnitKey(key["model"], key["layer"], key["unit"]), sign, rank)}


def unit_heatmaps(session: Session, keys: dict[int, tuple]) -> dict[int, Heatmaps]:
    rows = session.scalars(select(UnitHeatmaps).where(UnitHeatmaps.unit_id.in_(keys)))
    return {r.unit_id: unpack(r) for r in rows}


def layers_of(session: Session, model: str, layers: list[str] | None) -> list[Layer]:
    m = session.scalar(select(Model).where(Model.name == model))
    if m is None:
        have = ", ".join(session.scalars(select(Model.name).order_by(Model.name))) or "none yet"
        raise ExportError(f"No model {model!r}. Models in this store: {have}.")
    wanted = layers or [la.name for la in m.layers]
    missing = [n for n in wanted if n not in {la.name for la in m.layers}]
    if missing:
        raise ExportError(f"Model {model} has no layer {missing[0]!r}. Its layers: "
                          f"{', '.join(la.name for la in m.layers) or 'none yet'}.")
    return [la for la in m.layers if la.name in wanted]


def unit_chunks(session: Session, layer: Layer) -> Iterator[dict[int, tuple]]:
    """{unit id: (model, layer, unit)} for CHUNK units at a time, in unit order."""
    rows = session.execute(select(Unit.id, Unit.index).where(Unit.layer_id == layer.id).order_by(Unit.index)).all()
    for start in range(0, len(rows), CHUNK):
        yield {uid: (layer.model.name, layer.name, index) for uid, index in rows[start:start + CHUNK]}


def key_of(keys: dict[int, tuple], uid: int) -> dict:
    model, layer, unit = keys[uid]
    return {"model": model, "layer": layer, "unit": unit}


def units_rows(session: Session, keys: dict[int, tuple]) -> list[dict]:
    out = []
    for s in session.scalars(select(UnitStats).where(UnitStats.unit_id.in_(keys)).order_by(UnitStats.unit_id)):
        hist = s.histogram or {}
        out.append({**key_of(keys, s.unit_id), "n": s.n, "mean": s.mean, "std": s.std, "min": s.min, "max": s.max,
                    "quantiles": {str(k): float(v) for k, v in (s.quantiles or {}).items()},
                    "histogram_edges": [float(e) for e in hist.get("edges", [])],
                    "histogram_counts": [int(c) for c in hist.get("counts", [])]})
    return out


def example_rows(session: Session, keys: dict[int, tuple]) -> list[dict]:
    e = DatasetExample
    rows = session.execute(select(e.unit_id, e.sign, e.rank, e.activation, e.image_id)
                           .where(e.unit_id.in_(keys)).order_by(e.unit_id, e.sign.desc(), e.rank))
    heat = unit_heatmaps(session, keys)
    return [{**(key := key_of(keys, r.unit_id)), "sign": r.sign, "rank": r.rank, "activation": r.activation,
             "image_id": r.image_id, **example_heatmap(heat.get(r.unit_id), key, r.sign, r.rank)} for r in rows]


def image_rows(session: Session, image_ids: set[int]) -> list[dict]:
    ids = sorted(image_ids)
    out = []
    for start in range(0, len(ids), 1000):
        rows = session.execute(select(Image.id, Image.sha256, Image.source, Image.caption, Image.width, Image.height,
                                      Image.path).where(Image.id.in_(ids[start:start + 1000])).order_by(Image.id))
        out += [{"image_id": r.id, **{k: getattr(r, k) for k in ("sha256", "source", "caption", "width", "height",
                                                                  "path")}} for r in rows]
    return out


def word_rows(session: Session, keys: dict[int, tuple]) -> list[dict]:
    w = WordScore
    rows = session.execute(select(w.unit_id, w.sign, w.rank, Word.text, w.score).join(Word, w.word_id == Word.id)
                           .where(w.unit_id.in_(keys)).order_by(w.unit_id, w.sign.desc(), w.rank))
    return [{**key_of(keys, r.unit_id), "sign": r.sign, "rank": r.rank, "word": r.text, "score": r.score}
            for r in rows]


def place_rows(session: Session, keys: dict[int, tuple]) -> list[dict]:
    p = PlaceScore
    rows = session.execute(select(p.unit_id, p.kind, p.name, p.code, p.lat, p.lon, p.score)
                           .where(p.unit_id.in_(keys)).order_by(p.unit_id, p.kind, p.score.desc(), p.name))
    return [{**key_of(keys, r.unit_id), "kind": r.kind, "name": r.name, "code": r.code, "lat": r.lat, "lon": r.lon,
             "score": r.score} for r in rows]


def label_rows(session: Session, keys: dict[int, tuple]) -> list[dict]:
    rows = session.scalars(select(Label).where(Label.unit_id.in_(keys))
                           .order_by(Label.unit_id, Label.source, Label.version)).all()
    newest = {(r.unit_id, r.source): r.version for r in rows}  # ordered by version: the last one wins
    return [{**key_of(keys, r.unit_id), "source": r.source, "version": r.version, "text": r.text,
             "author": r.author, "created_at": utc(r.created_at), "current": newest[(r.unit_id, r.source)] == r.version}
            for r in rows]


def utc(when: datetime) -> datetime:
    """SQLite hands back the stored UTC time without its zone; Postgres with it."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def family_rows(session: Session, keys: dict[int, tuple]) -> list[dict]:
    uf = UnitFamily
    rows = session.execute(select(uf.unit_id, Family.name, uf.source, uf.author, uf.score)
                           .join(Family, uf.family_id == Family.id).where(uf.unit_id.in_(keys))
                           .order_by(uf.unit_id, uf.source.desc(), Family.position, Family.name))
    return [{**key_of(keys, r.unit_id), "family": r.name, "source": r.source, "author": r.author, "score": r.score}
            for r in rows]


READERS = {"units": units_rows, "examples": example_rows, "words": word_rows, "places": place_rows,
           "labels": label_rows, "families": family_rows}


class Writers:
    """One open output file per table, appended chunk by chunk (Parquet row groups or JSON lines)."""

    def __init__(self, out: Path, fmt: str):
        if fmt not in FORMATS:
            raise ExportError(f"Unknown format {fmt!r}: use {' or '.join(FORMATS)}.")
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.fmt, self.files, self.rows = out, fmt, {}, {t.name: 0 for t in TABLES}

    def path(self, table: str) -> Path:
        return self.out / f"{table}.{self.fmt}"

    def write(self, table: str, rows: list[dict]) -> None:
        t = BY_NAME[table]
        if table not in self.files:  # every table gets its file, even an empty one
            self.files[table] = (pq.ParquetWriter(self.path(table), t.schema) if self.fmt == "parquet"
                                 else self.path(table).open("w", encoding="utf-8"))
        self.rows[table] += len(rows)
        if not rows:
            return
        if self.fmt == "parquet":
            self.files[table].write_table(pa.Table.from_pylist(rows, schema=t.schema))
        else:
            self.files[table].writelines(json.dumps(r, default=_json_default, ensure_ascii=False) + "\n" for r in rows)

    def close(self) -> None:
        for table in BY_NAME:
            self.write(table, [])
        for f in self.files.values():
            f.close()


def _json_default(value):
    return value.isoformat()  # datetimes: the only non-JSON values the readers return


def export(session: Session, model: str, out: Path, fmt: str = "parquet", layers: list[str] | None = None,
           progress: bool = True) -> dict[str, int]:
    """Write the tables of `model` (all its layers, or `layers`) under `out`; returns rows written per table."""
    chosen = layers_of(session, model, layers)
    writers = Writers(out, fmt)
    image_ids: set[int] = set()
    try:
        total = sum(la.n_units for la in chosen)
        with tqdm(total=total, desc=f"export {model}", unit="unit", disable=not progress) as bar:
            for layer in chosen:
                for keys in unit_chunks(session, layer):
                    for table, read in READERS.items():
                        rows = read(session, keys)
                        writers.write(table, rows)
                        image_ids |= {r["image_id"] for r in rows} if table == "examples" else set()
                    bar.update(len(keys))
        writers.write("images", image_rows(session, image_ids))
    finally:
        writers.close()
    return writers.rows
