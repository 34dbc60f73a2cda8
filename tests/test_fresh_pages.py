"""A neuron page rendered afresh (no page cache) reads the store in at most four statements, and its JSON twin
carries the full data behind every picture; checked on a neuron with every section filled, on both backends."""
import asyncio
import re
import threading

import pytest
from fastapi.testclient import TestClient
from neuron_fill import N_CITIES, N_COUNTRIES, rich_store
from sqlalchemy import event, select

from app.main import create_app
from app.sections import CONTEXT, all_sections
from app.sections.rows import cursor_row, page_lambda
from app.views import browse
from store.schema import Family, PlaceScore, Unit
from store.settings import Settings

MAX_STATEMENTS = 4


@pytest.fixture
def fresh(store, tmp_path, db_url):
    """A rich store and a client of an app without page cache, counting every SQL statement it sends."""
    rich_store(store)
    app = create_app(Settings(data_dir=tmp_path / "data", database_url=db_url, cache_dir=tmp_path / "cache",
                              page_cache_mb=0))
    statements: list[str] = []
    event.listen(app.state.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with TestClient(app) as client:
        client.statements = statements
        yield client
    app.state.engine.dispose()


def on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("threads", [0, 2, 50])
def test_page_threads_says_where_a_neuron_page_is_rendered(store, tmp_path, db_url, threads):
    """0 (the default): on the event loop, no thread handoff. N: in the thread pool, at most N pages at once and
    never more than the connection pool keeps (SQLite's 5, Postgres's 10), so no overflow connections."""
    rich_store(store)
    app = create_app(Settings(data_dir=tmp_path / "data", database_url=db_url, cache_dir=tmp_path / "cache",
                              page_cache_mb=0, page_threads=threads))
    where: list[bool] = []
    event.listen(app.state.engine, "before_cursor_execute", lambda *args: where.append(on_event_loop()))
    with TestClient(app) as client:
        for suffix in ("", ".json"):
            where.clear()
            r = client.get("/models/synth/layer4/0" + suffix)
            assert r.status_code == 200 and "maps and places 0" in r.text
            assert where == [threads == 0]
    limiter = getattr(app.state, "page_limiter", None)
    if threads == 0:
        assert limiter is None
    else:
        assert limiter.total_tokens == min(threads, app.state.engine.pool.size())
    app.state.engine.dispose()


def test_a_neuron_page_waits_for_a_connection_in_a_thread_not_on_the_event_loop(store, tmp_path, db_url):
    """With every pooled connection checked out (views in the thread pool under load), the page on the event
    loop would block the loop until one came back; it goes to a thread instead, and is served once one does."""
    rich_store(store)
    app = create_app(Settings(data_dir=tmp_path / "data", database_url=db_url, cache_dir=tmp_path / "cache",
                              page_cache_mb=0))
    where: list[bool] = []
    event.listen(app.state.engine, "before_cursor_execute", lambda *args: where.append(on_event_loop()))
    with TestClient(app) as client:
        assert client.get("/models/synth/layer4/0").status_code == 200 and where == [True]
        pool = app.state.engine.pool
        held = [app.state.engine.connect() for _ in range(pool.size() + pool._max_overflow)]
        assert not browse.pool_has_room(pool)
        threading.Timer(0.3, lambda: [c.close() for c in held]).start()
        where.clear()
        r = client.get("/models/synth/layer4/1")
        assert r.status_code == 200 and "unit 1" in r.text
        assert where == [False]
    app.state.engine.dispose()

def test_a_views_session_goes_back_to_the_pool_before_its_response_is_sent(store, tmp_path, db_url):
    """app.deps.SessionDep closes its session when the view returns (scope="function"): sending a response
    needs the event loop, so a connection held until then could only be freed by the loop."""
    rich_store(store)
    app = create_app(Settings(data_dir=tmp_path / "data", database_url=db_url, cache_dir=tmp_path / "cache",
                              page_cache_mb=0))
    held_at_start: list[int] = []

    async def watching(scope, receive, send):
        async def sending(message):
            if message["type"] == "http.response.start":
                held_at_start.append(app.state.engine.pool.checkedout())
            await send(message)
        await app(scope, receive, sending)

    with TestClient(watching) as client:
        for url in ("/models/synth", "/models/synth/layer4", "/models/synth/layer4/0/labels.json"):
            assert client.get(url).status_code == 200, url
    assert held_at_start == [0, 0, 0]
    app.state.engine.dispose()

@pytest.mark.parametrize("suffix", ["", ".json"])
def test_a_fresh_neuron_page_takes_at_most_four_statements(fresh, suffix):
    fresh.get("/models/synth/layer4/1" + suffix)  # the first request of a process also checks the schema
    for unit in (0, 3):
        fresh.statements.clear()
        r = fresh.get(f"/models/synth/layer4/{unit}{suffix}")
        assert r.status_code == 200
        assert len(fresh.statements) <= MAX_STATEMENTS, fresh.statements
    sections = fresh.get("/models/synth/layer4/0.json").json()["sections"]
    unfilled = {"modality"}  # cached-file profiles (worker modality): tests/test_modality.py covers them
    assert all(sections[name] is not None for name in set(sections) - unfilled), sections


@pytest.mark.parametrize("suffix", ["", ".json"])
def test_a_fresh_neuron_page_is_one_statement_so_it_reads_one_snapshot(fresh, suffix):
    """The page runs without a transaction around it (Postgres: autocommit), so its consistency rests on its
    being a single SELECT: a second statement could see a worker's commit the first did not."""
    fresh.get("/models/synth/layer4/1" + suffix)
    fresh.statements.clear()
    assert fresh.get("/models/synth/layer4/2" + suffix).status_code == 200
    assert len(fresh.statements) == 1 and fresh.statements[0].lstrip().upper().startswith("WITH"), fresh.statements


def test_every_section_of_a_rich_neuron_shows_what_the_store_holds(fresh, store):
    with store.sessions() as db:
        seed = list(db.scalars(select(Family.name).where(Family.name != "Geography").order_by(Family.position)))
    page = fresh.get("/models/synth/layer4/0.json").json()
    s = page["sections"]
    labels = s["labels"]
    assert page["title"] == "synth layer4 unit 0 — maps and places 0"
    assert (labels["human"]["text"], labels["human"]["version"], labels["auto"]["text"]) == (
        "maps and places 0", 2, "auto guess 0")
    assert [(f["name"], f["source"]) for f in labels["families"]] == [
        ("Geography", "human"), *((f, "auto") for f in sorted(["Emotion", "Region"], key=seed.index))]
    assert [h["version"] for h in labels["history"] if h["source"] == "human"] == [2, 1]
    assert [e["action"] for e in labels["events"]] == ["family-add"]
    assert labels["edit"]["families_available"] == [*seed, "Geography"]
    assert [(st["name"], st["progress"]) for st in s["studies"]["studies"]] == [("faces?", {"ann": 2, "cy": 1})]
    assert s["studies"]["samples"] == 12
    assert s["places"]["region"]["fraction"] == 0.6 and s["places"]["data"]["grid"] == [[0, 1.5], [2.5, 0]]
    assert [e["rank"] for e in s["examples"]["top"]] == [0, 1, 2, 3] and len(s["examples"]["bottom"]) == 4
    assert [w["score"] for w in s["words"]["top"]] == sorted(w["score"] for w in s["words"]["top"])
    assert s["featurevis"]["plain"]["objective"] == 1.0
    assert s["stats"]["histogram"] == {"edges": [-1, 0, 1], "counts": [1, 1]}
    bare = fresh.get("/models/synth/layer3/1.json").json()["sections"]
    assert bare["labels"]["human"] is None and bare["places"] is None and bare["studies"] is None


def test_the_json_twin_carries_every_place_score_and_the_page_shows_the_top_ten(fresh, store):
    places = fresh.get("/models/synth/layer4/0.json").json()["sections"]["places"]
    with store.sessions() as s:
        rows = s.scalars(select(PlaceScore).join(Unit, Unit.id == PlaceScore.unit_id)
                         .where(Unit.index == 0, Unit.layer.has(name="layer4"))).all()
    countries = sorted(((p.name, p.score) for p in rows if p.kind == "country"), key=lambda t: -t[1])
    assert [c["name"] for c in places["data"]["countries"]] == [name for name, _ in countries]
    assert [c["score"] for c in places["data"]["countries"]] == pytest.approx([v for _, v in countries], rel=1e-14)
    assert len(places["data"]["countries"]) == N_COUNTRIES and len(places["data"]["cities"]) == N_CITIES
    assert {(c["name"], c["lat"], c["lon"]) for c in places["data"]["cities"]} == {
        (p.name, p.lat, p.lon) for p in rows if p.kind == "city"}
    assert [c["name"] for c in places["countries"]] == [name for name, _ in countries[:10]]
    html = fresh.get("/models/synth/layer4/0").text
    assert set(re.findall(r"Country \d{3}", html)) == {name for name, _ in countries[:10]}


def test_the_page_statement_on_the_driver_cursor_reads_what_sqlalchemy_reads(fresh):
    """The neuron page runs its statement on the DBAPI cursor (app.sections.rows.cursor_row) and applies the
    result processors SQLAlchemy would: the same values, JSON decoded on SQLite too, for units with every
    section filled, a bare one, one past the layer's end and an unknown layer."""
    engine = fresh.app.state.engine
    sections = (CONTEXT, *all_sections())
    stmt, _ = page_lambda(engine.dialect.name, sections)
    keys = [("layer4", 0), ("layer4", 3), ("layer3", 1), ("layer3", 99), ("nope", 0)]
    with browse.one_statement(engine) as conn:
        for layer, index in keys:
            params = {"model": "synth", "layer": layer, "index": index}
            want = conn.execute(stmt, params).one_or_none()
            got = cursor_row(conn, sections, params)
            assert (got is None) == (want is None), (layer, index)
            if want is not None:
                assert got == dict(want._mapping), (layer, index)
    with browse.one_statement(engine) as conn:
        row = cursor_row(conn, sections, {"model": "synth", "layer": "layer4", "index": 0})
    assert isinstance(row["examples__rows"], list) and len(row["examples__rows"]) == 8
    assert isinstance(row["unit__stats_histogram"], dict) and isinstance(row["examples__heat_maps"], bytes)
