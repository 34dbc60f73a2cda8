"""Where one fresh neuron page's time goes: SQL statements counted and a cProfile of N renders of the view
itself (in this thread, no HTTP, no page cache), on a synthetic store.

    .venv/bin/python bench/profile_page.py [--backend postgres] [--renders 200] [--top 25] [--json] [--http]

--http profiles whole requests instead (routing, middleware, gzip, ETag…) through httpx's ASGI transport, with
FastAPI's thread pool replaced by direct calls so the one profiled thread sees everything; it also profiles
the static file the load bench compares with.
"""
import cProfile
import pstats
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.load and the test fixtures (tests/synthetic.py)

import typer
from sqlalchemy import event
from starlette.requests import Request

from app import urls
from app.main import create_app
from app.views import browse
from app.views.browse import render_neuron
from bench.load import MODEL, temp_store
from store.migrate import upgrade
from store.writes import open_store
from tests.synthetic import populate


def fake_request(app, path: str, json: bool) -> Request:
    accept = b"application/json" if json else b"text/html"
    return Request({"type": "http", "app": app, "method": "GET", "path": path, "raw_path": path.encode(),
                    "query_string": b"", "headers": [(b"host", b"bench"), (b"accept", accept)],
                    "scheme": "http", "server": ("bench", 80), "root_path": "", "state": {}})


def render(app, unit: int, json: bool) -> None:
    render_neuron(fake_request(app, f"/models/{MODEL}/layer4/{unit}", json), MODEL, "layer4", str(unit))


async def inline(func, *args, **kwargs):
    return func(*args, **kwargs)


def http_profile(app, paths: list[str], top: int) -> None:
    import asyncio

    import fastapi.routing
    import httpx

    fastapi.routing.run_in_threadpool = inline  # sync endpoints and dependencies run in this thread
    browse.to_thread = SimpleNamespace(run_sync=lambda func, limiter=None: inline(func))  # the neuron page too

    async def get_all(urls_: list[str]) -> float:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://bench") as client:
            start = time.perf_counter()
            for url in urls_:
                assert (await client.get(url)).status_code == 200
            return time.perf_counter() - start

    for name, urls_ in (("neuron", paths), ("static", [urls.static("style.css")] * len(paths))):
        asyncio.run(get_all(urls_[:5]))
        profile = cProfile.Profile()
        profile.enable()
        seconds = asyncio.run(get_all(urls_))
        profile.disable()
        print(f"{name}: {seconds / len(urls_) * 1000:.2f} ms a request under the profiler")
        pstats.Stats(profile).sort_stats("tottime").print_stats(top)


def main(backend: str = "sqlite", renders: int = 200, top: int = 25, json: bool = False, http: bool = False):
    """Populate a synthetic store, render random neuron pages afresh, print statements per page and the profile."""
    with temp_store(backend, page_cache_mb=0) as settings:
        upgrade(settings.db_url)
        populate(open_store(settings), MODEL, {"layer4": 64})
        app = create_app(settings)
        statements = []
        event.listen(app.state.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        rng = random.Random(0)
        units = [rng.randrange(64) for _ in range(renders)]
        if http:
            http_profile(app, [f"/models/{MODEL}/layer4/{u}" + (".json" if json else "") for u in units], top)
            return
        render(app, 0, json)
        statements.clear()
        cpu = time.process_time()
        for unit in units:
            render(app, unit, json)
        cpu = time.process_time() - cpu
        n_statements = len(statements)
        profile = cProfile.Profile()
        profile.enable()
        for unit in units:
            render(app, unit, json)
        profile.disable()
        print(f"{backend}: {cpu / renders * 1000:.2f} ms CPU a page (this process, without the profiler), "
              f"{n_statements / renders:.1f} SQL statements a page")
        pstats.Stats(profile).sort_stats("cumulative").print_stats(top)
        app.state.engine.dispose()


if __name__ == "__main__":
    typer.run(main)
