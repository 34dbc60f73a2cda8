"""Shared fixtures: a real SQLite file per test, a real Postgres database per session, the real app."""
import os
import uuid

import pytest
import tiny_timm  # noqa: F401,I001  registers the tiny timm towers the tiny-timm-map/tiny-eva configs name
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from app.main import create_app
from store.migrate import upgrade
from store.settings import Settings
from store.writes import open_store, register_model
from worker.compute.layers import LayerSpec

PG_ADMIN_URL = os.environ.get("MICROSCOPE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_url():
    """A fresh Postgres database for this test session, dropped afterwards."""
    name = f"microscope_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required for the store tests: {e}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def _reset_pg(url: str) -> None:
    eng = create_engine(url, isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    eng.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """The store URL on both backends: a real SQLite file, and the real local Postgres."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url = request.getfixturevalue("pg_url")
    _reset_pg(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'store.db'}"


def make_settings(tmp_path, url: str, **kw) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=url, cache_dir=tmp_path / "cache", **kw)


@pytest.fixture
def settings(tmp_path, db_url):
    upgrade(db_url)
    return make_settings(tmp_path, db_url, editor_token="test-token")


@pytest.fixture
def store(settings):
    return open_store(settings)


@pytest.fixture
def toy_model(store):
    """A registered model 'toy' with a 10-unit layer4 (no compute)."""
    with store.sessions.begin() as s:
        register_model(s, "toy", "RN50", None, 224, [LayerSpec("layer4", "visual.layer4", 10, is_default=True)])
    return store


@pytest.fixture
def client(settings):
    app = create_app(settings)
    with TestClient(app) as c:
        yield c
    app.state.engine.dispose()


CONFIG_DIR = __import__("pathlib").Path(__file__).parent / "model_configs"


def _tiny(arch: str):
    import torch

    from worker.compute.models import load_model, revive_random_resnet

    torch.manual_seed(0)
    loaded = load_model(arch, config_dirs=(CONFIG_DIR,))
    revive_random_resnet(loaded.model)
    return loaded


@pytest.fixture(scope="session")
def tiny_rn():
    """A tiny random-init open_clip ModifiedResNet CLIP (64 px, layer4 = 512 units), bn3 revived."""
    return _tiny("tiny-rn")


@pytest.fixture(scope="session")
def tiny_vit():
    """A tiny random-init open_clip ViT CLIP (32 px, 2 blocks of 256 MLP units)."""
    return _tiny("tiny-vit")


@pytest.fixture
def probe_model(store, tiny_rn, tmp_path):
    """Model 'tiny' in the store: tiny-rn saved as a real checkpoint, registered with it, and its text read-out
    stored by the worker, as `microscope worker attribution` leaves it. Returns the loaded checkpoint."""
    from worker.analyses.attribution import store_readout
    from worker.compute.layers import catalogue
    from worker.compute.models import load_model, save_checkpoint

    path = save_checkpoint(tiny_rn.model, tmp_path / "tiny-rn.pt")
    loaded = load_model("tiny-rn", str(path), config_dirs=(CONFIG_DIR,))
    with store.sessions.begin() as s:
        register_model(s, "tiny", loaded.arch, str(path), loaded.image_size, catalogue(loaded))
    store_readout(store, "tiny", loaded, [CONFIG_DIR])
    return loaded


def stage_report(store, loaded, stage: str, model: str = "tiny", **options) -> dict:
    """Run one stage through the pipeline (forced) on `loaded`'s default layer; that layer's report."""
    from worker.pipeline.contract import BuildContext
    from worker.pipeline.runner import last_done, run_pipeline

    ctx = BuildContext(store, loaded, model, None, (), {stage: options}, (), progress=False)
    (got,) = run_pipeline(ctx, only=[stage], force=[stage], echo=lambda _: None)
    assert got.status == "done", got.reason
    (report,) = last_done(ctx, stage).report["layers"].values()
    return report
