"""Postgres connections the pool hands out: pinged only after sitting idle (store.schema.ping_when_idle), and
pages that survive the database dropping connections (a restart, an idle timeout), on the real Postgres."""
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from app.main import create_app
from store.migrate import upgrade
from store.schema import make_engine
from store.writes import open_store
from tests.conftest import PG_ADMIN_URL, make_settings
from tests.synthetic import populate

pytestmark = pytest.mark.postgres


@pytest.fixture
def own_db():
    """A database of its own, since the tests kill every connection to it."""
    name = f"microscope_conn_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def count_pings(engine) -> list[int]:
    pings = []
    ping = engine.dialect.do_ping
    engine.dialect.do_ping = lambda conn: (pings.append(1), ping(conn))[1]
    return pings


def terminate_backends(database: str) -> int:
    """Kill every Postgres backend serving `database`, as a restart would; how many there were."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database}).scalar()
    admin.dispose()
    time.sleep(0.2)  # the backends exit asynchronously
    return killed


def test_a_connection_in_steady_use_is_not_pinged_an_idle_one_is(own_db):
    engine = make_engine(own_db, ping_after_idle_s=0.5)
    pings = count_pings(engine)
    for _ in range(20):
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    assert pings == []  # pool_pre_ping would have pinged 20 times: a round trip a page
    time.sleep(0.7)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert len(pings) == 1
    engine.dispose()


def test_an_idle_connection_the_database_dropped_is_replaced_before_use(own_db):
    engine = make_engine(own_db, ping_after_idle_s=0.3)
    with engine.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    assert terminate_backends(own_db.rsplit("/", 1)[1]) >= 1
    time.sleep(0.4)
    with engine.connect() as conn:  # no error: the ping failed, so the pool connected afresh
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != first
    engine.dispose()


@pytest.fixture
def pg_app(tmp_path, own_db):
    upgrade(own_db)
    settings = make_settings(tmp_path, own_db, page_cache_mb=0)
    populate(open_store(settings), "synth", {"layer4": 4})
    app = create_app(settings)
    with TestClient(app) as client:
        yield client
    app.state.engine.dispose()


def test_pages_survive_the_database_dropping_busy_connections(pg_app, own_db):
    """Connections in recent use are not pinged: the neuron page retries once on a fresh connection, and
    other pages answer 503 naming what happened (the pool has then dropped all its old connections)."""
    assert pg_app.get("/models/synth/layer4/1").status_code == 200
    assert pg_app.get("/models/synth").status_code == 200
    terminate_backends(own_db.rsplit("/", 1)[1])
    page = pg_app.get("/models/synth/layer4/2")
    assert page.status_code == 200 and "unit 2" in page.text
    assert pg_app.get("/models/synth/layer4/3.json").status_code == 200
    terminate_backends(own_db.rsplit("/", 1)[1])
    lost = pg_app.get("/models/synth", headers={"accept": "application/json"})
    assert lost.status_code == 503 and lost.headers["retry-after"] == "1"
    assert "connection to the database was lost" in lost.json()["error"]
    assert pg_app.get("/models/synth").status_code == 200


def test_a_neuron_page_after_a_restart_finds_no_dead_connection_left_in_the_pool(pg_app, own_db):
    """The pool holds several connections when the database drops them all. The first neuron page that meets a
    dead one has the whole pool's old connections dropped (SQLAlchemy's handling of a lost connection, which
    the page's driver-cursor statement hands its errors to), so its one retry and every page after it get a
    fresh connection: none answers 500."""
    engine = pg_app.app.state.engine
    held = [engine.connect() for _ in range(4)]
    for conn in held:
        conn.execute(text("SELECT 1"))
    for conn in held:
        conn.close()
    assert terminate_backends(own_db.rsplit("/", 1)[1]) >= 4
    for unit in (0, 1, 2, 3, 0, 1):
        page = pg_app.get(f"/models/synth/layer4/{unit}")
        assert page.status_code == 200 and f"unit {unit}" in page.text
