"""`microscope export` writes every unit's data as documented tables that pandas and DuckDB read back equal to
the store, in Parquet and JSON Lines, on both backends; a wrong model or layer is one line, nothing written."""
import subprocess
import sys

import duckdb
import pandas as pd
import pytest
from neuron_fill import N_CITIES, N_COUNTRIES, rich_store
from sqlalchemy import select
from typer.testing import CliRunner

from app.export import TABLES
from app.heatmaps import unpack
from app.liveserver import settings_env
from store.schema import (
    DatasetExample,
    Label,
    Layer,
    Model,
    PlaceScore,
    Unit,
    UnitFamily,
    UnitHeatmaps,
    UnitStats,
    WordScore,
)
from worker.cli.root import cli


@pytest.fixture
def rich(store, settings):
    rich_store(store)
    return store, settings


def run_export(settings, out, *args):
    env = settings_env(settings)
    return CliRunner().invoke(cli, ["export", "synth", "--out", str(out), "--no-progress", *args], env=env)


def keyed(session, entity, *columns):
    """(layer, unit, *columns) rows of `entity` for model synth, from the store."""
    rows = session.execute(select(Layer.name, Unit.index, *columns).join(Unit, Unit.id == entity.unit_id)
                           .join(Layer, Unit.layer_id == Layer.id).join(Model, Layer.model_id == Model.id)
                           .where(Model.name == "synth")).all()
    return sorted(tuple(r) for r in rows)


def frame_rows(df: pd.DataFrame, *columns) -> list[tuple]:
    return sorted(tuple(r) for r in df[["layer", "unit", *columns]].itertuples(index=False))


def read_both(out, table: str, fmt: str) -> list[pd.DataFrame]:
    path = str(out / f"{table}.{fmt}")
    by_pandas = pd.read_parquet(path) if fmt == "parquet" else pd.read_json(path, lines=True, precise_float=True)
    sql = f"SELECT * FROM read_parquet('{path}')" if fmt == "parquet" else f"SELECT * FROM read_json_auto('{path}')"
    return [by_pandas, duckdb.sql(sql).df()]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_export_reads_back_with_pandas_and_duckdb_equal_to_the_store(rich, tmp_path, fmt):
    store, settings = rich
    out = tmp_path / "out"
    result = run_export(settings, out, "--format", fmt)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t.name}.{fmt}" for t in TABLES)
    with store.sessions() as s:
        stats = keyed(s, UnitStats, UnitStats.n, UnitStats.std, UnitStats.max)
        examples = keyed(s, DatasetExample, DatasetExample.sign, DatasetExample.rank, DatasetExample.activation,
                         DatasetExample.image_id)
        stored = {uid: unpack(h) for uid, h in s.execute(select(UnitHeatmaps.unit_id, UnitHeatmaps))}
        heatmaps = [(la, u, sg, r, stored[uid].values(stored[uid].row(sg, r)).tolist())
                    for la, u, sg, r, uid in keyed(s, DatasetExample, DatasetExample.sign, DatasetExample.rank,
                                                   DatasetExample.unit_id)]
        words = keyed(s, WordScore, WordScore.sign, WordScore.rank, WordScore.score)
        places = keyed(s, PlaceScore, PlaceScore.kind, PlaceScore.name, PlaceScore.score, PlaceScore.lat)
        labels = keyed(s, Label, Label.source, Label.version, Label.text)
        families = keyed(s, UnitFamily, UnitFamily.source, UnitFamily.author)
    for df in read_both(out, "units", fmt):
        assert frame_rows(df, "n", "std", "max") == stats and len(stats) == 8
        hist = df.iloc[0]
        assert list(hist["histogram_edges"]) == [-1, 0, 1] and list(hist["histogram_counts"]) == [1, 1]
    for df in read_both(out, "examples", fmt):
        assert frame_rows(df, "sign", "rank", "activation", "image_id") == examples
        got = {(la, u, sg, r): [list(row) for row in h]
               for la, u, sg, r, h in frame_rows(df, "sign", "rank", "heatmap")}
        assert got == {(la, u, sg, r): h for la, u, sg, r, h in heatmaps}
    for df in read_both(out, "words", fmt):
        assert frame_rows(df, "sign", "rank", "score") == words
    for df in read_both(out, "places", fmt):
        assert len(df) == 2 * (N_COUNTRIES + N_CITIES)
        got = [(la, u, k, n, sc, None if pd.isna(lat) else lat) for la, u, k, n, sc, lat in
               frame_rows(df, "kind", "name", "score", "lat")]
        assert got == places
    for df in read_both(out, "labels", fmt):
        assert frame_rows(df, "source", "version", "text") == labels
        current = df[df["current"]]
        assert sorted(current["text"]) == ["auto guess 0", "auto guess 1", "maps and places 0", "maps and places 1"]
    for df in read_both(out, "families", fmt):
        assert frame_rows(df, "source", "author") == families
    for df in read_both(out, "images", fmt):
        assert set(df["image_id"]) == {e[5] for e in examples} and df["sha256"].str.len().eq(64).all()


def test_export_of_one_layer_and_the_documented_schema(rich, tmp_path):
    _, settings = rich
    out = tmp_path / "one"
    assert run_export(settings, out, "--layer", "layer3").exit_code == 0
    units = duckdb.sql(f"SELECT DISTINCT layer FROM read_parquet('{out}/units.parquet')").fetchall()
    assert units == [("layer3",)]
    import pyarrow.parquet as pq

    schema = pq.read_schema(out / "examples.parquet")
    assert schema.field("heatmap").metadata[b"meaning"].startswith(b"activation over")


@pytest.mark.parametrize("args,needle", [
    (["--layer", "layer9"], "Model synth has no layer 'layer9'. Its layers: layer4, layer3."),
    (["--format", "csv"], "Unknown format 'csv': use parquet or jsonl."),
])
def test_bad_export_input_is_one_line_and_writes_nothing(rich, tmp_path, args, needle):
    _, settings = rich
    result = run_export(settings, tmp_path / "bad", *args)
    assert result.exit_code == 2 and result.output.strip() == f"error: {needle}"
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_export_imports_without_torch():
    code = "import sys, app.export; assert 'torch' not in sys.modules and 'open_clip' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docs_describe_every_table_and_column():
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "export.md").read_text()
    for table in TABLES:
        section = doc.split(f"### `{table.name}`", 1)[1].split("###", 1)[0]
        for name, _, meaning in table.columns:
            assert f"| `{name}` |" in section and meaning in section, (table.name, name)
