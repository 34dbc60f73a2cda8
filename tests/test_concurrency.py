"""Readers and the worker on one store at once: the real server serves neuron pages while a writer process
rewrites neurons, each in one transaction, on SQLite (WAL) and Postgres. No request fails, nothing says
"database is locked", and no page shows parts of two writes (bench/load.py's reader checks every neuron
JSON twin with tests.synthetic.neuron_generation)."""
import asyncio
import importlib.util
import random
from pathlib import Path

from app.liveserver import LiveServer
from tests.synthetic import populate

spec = importlib.util.spec_from_file_location("bench_load", Path(__file__).resolve().parents[1] / "bench" / "load.py")
load = importlib.util.module_from_spec(spec)
spec.loader.exec_module(load)

LAYERS = {"layer4": 12}


def test_readers_see_whole_neurons_while_the_worker_writes(settings, store):
    populate(store, load.MODEL, LAYERS, filled=6)  # half the units get their first write during the test
    rng = random.Random(1)
    workers = 2 if settings.db_url.startswith("sqlite") else 1  # several processes on one file: where locks bite
    with LiveServer(settings, workers=workers) as server:
        writer = load.Writer(settings.db_url)  # returns after the writer's first commit
        json_twins = asyncio.run(load.drive(server.url, load.neuron_paths(LAYERS, 200, rng, json=True), 8, "json"))
        pages = asyncio.run(load.drive(server.url, load.mixed_paths(LAYERS, 60, rng, settings.page_size, False),
                                       8, "mixed"))
        report = writer.stop()
        problems = load.log_problems(server.log())
    assert report["commits"] > 20 and report["errors"] == {}, report
    for result in (json_twins, pages):
        assert result.errors == {} and result.torn == [], (result.errors, result.torn[:3])
    assert len(json_twins.generations) > 1, "the readers should have seen the writer's rewrites"
    assert problems == {"database is locked": 0, "Traceback": 0}, problems
