"""Where one fresh neuron page's time goes: SQL statements counted and a cProfile of N renders of the view
itself (in this thread, no HTTP, no page cache), on a synthetic store.

    .venv/bin/python bench/profile_page.py [--backend postgres] [--renders 200] [--top 25] [--json]
"""
import cProfile
import pstats
import random
import time

import typer
from sqlalchemy import event
from starlette.requests import Request

from app.deps import read_snapshot
from app.main import create_app
from app.migrate import upgrade
from app.views.browse import neuron_page
from bench.load import MODEL, temp_store
from worker.store import open_store
from worker.synthetic import populate


def fake_request(app, path: str, json: bool) -> Request:
    accept = b"application/json" if json else b"text/html"
    return Request({"type": "http", "app": app, "method": "GET", "path": path, "raw_path": path.encode(),
                    "query_string": b"", "headers": [(b"host", b"bench"), (b"accept", accept)],
                    "scheme": "http", "server": ("bench", 80), "root_path": "", "state": {}})


def render(app, unit: int, json: bool) -> None:
    with app.state.sessions() as session:
        read_snapshot(session)
        request = fake_request(app, f"/models/{MODEL}/layer4/{unit}", json)
        neuron_page(request, session, app.state.settings, MODEL, "layer4", str(unit))


def main(backend: str = "sqlite", renders: int = 200, top: int = 25, json: bool = False):
    """Populate a synthetic store, render random neuron pages afresh, print statements per page and the profile."""
    with temp_store(backend, page_cache_mb=0) as settings:
        upgrade(settings.db_url)
        populate(open_store(settings), MODEL, {"layer4": 64})
        app = create_app(settings)
        statements = []
        event.listen(app.state.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        rng = random.Random(0)
        units = [rng.randrange(64) for _ in range(renders)]
        render(app, 0, json)
        statements.clear()
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        for unit in units:
            render(app, unit, json)
        profile.disable()
        seconds = time.perf_counter() - start
        print(f"{backend}: {seconds / renders * 1000:.2f} ms a page under the profiler, "
              f"{len(statements) / renders:.1f} SQL statements a page")
        pstats.Stats(profile).sort_stats("cumulative").print_stats(top)
        app.state.engine.dispose()


if __name__ == "__main__":
    typer.run(main)
