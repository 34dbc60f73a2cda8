"""Store round-trips and migrations on a real SQLite file and the real Postgres."""
import subprocess
import sys

import numpy as np
from sqlalchemy import inspect, select

from app.heatmaps import quantize, unpack
from app.lookup import unit_by_key
from store.keys import UnitKey
from store.migrate import downgrade, upgrade
from store.schema import (
    DatasetExample,
    FeatureVis,
    Image,
    Label,
    Layer,
    Model,
    Run,
    Unit,
    UnitHeatmaps,
    UnitStats,
    Word,
    WordScore,
    make_engine,
    make_sessionmaker,
)
from store.writes import finish_run, register_model, start_run
from worker.compute.layers import LayerSpec


def test_register_model_creates_units_and_is_idempotent(store):
    spec = [LayerSpec("layer3", "visual.layer3", 4), LayerSpec("layer4", "visual.layer4", 6, is_default=True)]
    for _ in range(2):
        with store.sessions.begin() as s:
            register_model(s, "m", "RN50", "openai", 224, spec)
    with store.sessions() as s:
        model = s.scalar(select(Model).where(Model.name == "m"))
        assert [la.name for la in model.layers] == ["layer3", "layer4"]
        assert [la.is_default for la in model.layers] == [False, True]
        counts = {la.name: s.query(Unit).filter_by(layer_id=la.id).count() for la in model.layers}
        assert counts == {"layer3": 4, "layer4": 6}


def test_every_section_round_trips(toy_model):
    store = toy_model
    with store.sessions.begin() as s:
        unit = unit_by_key(s, UnitKey("toy", "layer4", 3))
        run = start_run(s, "examples", unit.layer.model, {"k": 2}, layer="layer4")
        img = Image(sha256="a" * 64, source="x.png", caption="a cat", width=8, height=8, path="images/aa/x.webp")
        s.add(img)
        s.flush()
        s.add(DatasetExample(unit_id=unit.id, sign="top", rank=0, activation=2.5, image_id=img.id, run_id=run.id))
        s.add(UnitHeatmaps(unit_id=unit.id, run_id=run.id, **quantize(np.array([[[0.0, 1.0], [0.5, 0.25]]]), 1)))
        s.add(UnitStats(unit_id=unit.id, n=10, mean=0.1, std=0.5, min=-1, max=2.5,
                        quantiles={"0.5": 0.1}, histogram={"edges": [0, 1, 2], "counts": [3, 7]}))
        w = Word(text="cat", rank=1)
        s.add(w)
        s.flush()
        s.add(WordScore(unit_id=unit.id, word_id=w.id, score=1.5, sign="top", rank=0))
        s.add(FeatureVis(unit_id=unit.id, kind="plain", image="units/toy/layer4/3/plain.png", objective=3.0,
                         steps=16, size=64, seed=0))
        s.add(Label(unit_id=unit.id, source="human", version=1, text="cat ears", author="ann"))
        finish_run(s, run, {"images": 1, "skipped": {"corrupt": 0}})
    with store.sessions() as s:
        unit = unit_by_key(s, UnitKey("toy", "layer4", 3))
        ex = s.scalar(select(DatasetExample).where(DatasetExample.unit_id == unit.id))
        heat = unpack(s.get(UnitHeatmaps, unit.id))
        assert np.allclose(heat.values(heat.row("top", 0)), [[0.0, 1.0], [0.5, 0.25]], atol=0.5 / 255)
        assert ex.image.caption == "a cat"
        stats = s.get(UnitStats, unit.id)
        assert stats.histogram["counts"] == [3, 7]
        run = s.scalar(select(Run))
        assert run.status == "done" and run.report["images"] == 1 and run.finished_at is not None
        assert run.code_version


def test_deleting_a_model_cascades(toy_model):
    store = toy_model
    with store.sessions.begin() as s:
        s.delete(s.scalar(select(Model).where(Model.name == "toy")))
    with store.sessions() as s:
        assert s.query(Layer).count() == 0 and s.query(Unit).count() == 0


def test_migrations_up_and_down(db_url):
    upgrade(db_url)
    engine = make_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    assert {"models", "layers", "units", "dataset_examples", "featurevis", "labels", "runs"} <= tables
    downgrade(db_url, "base")
    assert not ({"models", "units"} & set(inspect(engine).get_table_names()))
    upgrade(db_url)
    with make_sessionmaker(engine)() as s:
        assert s.query(Model).count() == 0
    engine.dispose()


def test_sqlite_uses_wal(sqlite_url):
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_the_store_imports_without_the_web_app():
    """The worker writes the store; it must not pull in the web framework (FastAPI, templates) to do so."""
    code = "import sys, store.writes; assert not {'fastapi', 'starlette', 'app.web'} & set(sys.modules), sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
