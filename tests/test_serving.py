"""Production serving: ETags and 304s on pages and JSON twins, Cache-Control rules, gzip, several server
processes (`microscope serve --workers 2`) sharing the connections out, and pooled Postgres connections."""
import gzip
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from app.liveserver import LiveServer
from app.main import create_app
from store.schema import Image
from tests.synthetic import populate, write_unit


@pytest.fixture
def material(store):
    return populate(store, "synth", {"layer4": 8})


@pytest.fixture
def site(material, client):
    return client


@pytest.mark.parametrize("url", ["/", "/models/synth", "/models/synth/layer4", "/models/synth/layer4/3",
                                 "/models/synth/layer4/3.json", "/index.json"])
def test_pages_and_twins_answer_304_when_unchanged(site, url):
    first = site.get(url)
    etag = first.headers["etag"]
    assert first.status_code == 200 and etag.startswith('W/"')
    assert first.headers["cache-control"] == "public, no-cache"  # kept, but revalidated: the worker may write
    assert "accept" in first.headers["vary"].lower()  # a page and its JSON twin share a URL
    again = site.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert site.get(url, headers={"If-None-Match": 'W/"other"'}).status_code == 200


def test_a_worker_write_changes_the_etag(site, store, material):
    before = site.get("/models/synth/layer4/3.json")
    uid, key = next(u for u in material.units if u[1].unit == 3)
    with store.sessions.begin() as s:
        write_unit(s, material, uid, key, gen=7)
    after = site.get("/models/synth/layer4/3.json", headers={"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200 and after.headers["etag"] != before.headers["etag"]
    assert after.json()["sections"]["stats"]["n"] == 7


def test_errors_and_writes_are_not_cached_as_pages(site):
    missing = site.get("/models/nope")
    assert missing.status_code == 404 and "etag" not in missing.headers
    write = site.post("/models/synth/layer4/3/labels", data={"text": "x"})
    assert write.status_code in (401, 403) and write.headers["cache-control"] == "no-store"


def test_static_and_cache_headers(site, store):
    html = site.get("/").text
    css = next(part.split('"')[0] for part in html.split('href="') if part.startswith("/static/style.css"))
    versioned = site.get(css)
    assert "?v=" in css and versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert site.get("/static/style.css").headers["cache-control"] == "public, no-cache"
    etag = versioned.headers["etag"]
    assert site.get(css, headers={"If-None-Match": etag}).status_code == 304
    with store.sessions() as s:
        image = s.query(Image).first()
    content_addressed = site.get(f"/cache/{image.path}")
    assert content_addressed.status_code == 200
    assert content_addressed.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert site.get(f"/cache/{image.path}", headers={"If-None-Match": content_addressed.headers["etag"]}
                    ).status_code == 304
    render = site.get("/cache/units/synth/layer4/3/plain.png")  # rewritten in place when featurevis reruns
    assert render.status_code == 200 and render.headers["cache-control"] == "public, no-cache"


def test_gzip_for_pages_not_for_images(site, store):
    page = site.get("/models/synth/layer4/3", headers={"Accept-Encoding": "gzip"})
    assert page.headers["content-encoding"] == "gzip" and "<h1>" in page.text  # the client decodes it
    plain = site.get("/models/synth/layer4/3", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    png = site.get("/cache/units/synth/layer4/3/plain.png", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in png.headers



@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("level, xfl", [(None, 4), (9, 2)])
def test_pages_are_gzipped_at_the_configured_level(settings, material, level, xfl):
    """gzip_level (default 1, nginx's) reaches the compressor: the gzip header's XFL byte is 4 for zlib's
    fastest level and 2 for its best (RFC 1952)."""
    app = create_app(settings if level is None else settings.model_copy(update={"gzip_level": level}))
    with TestClient(app) as client, client.stream(
            "GET", "/models/synth/layer4/3", headers={"Accept-Encoding": "gzip"}) as page:
        raw = b"".join(page.iter_raw())
    assert raw[:2] == b"\x1f\x8b" and raw[8] == xfl
    assert b"<h1>" in gzip.decompress(raw)
    app.state.engine.dispose()

def children_of(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # several processes on one SQLite file
def test_serve_with_several_worker_processes(settings, store):
    populate(store, "synth", {"layer4": 8})
    with LiveServer(settings, workers=2) as server:
        assert len(children_of(server.proc.pid)) >= 2  # uvicorn's supervisor and its worker processes
        with httpx.Client(base_url=server.url) as c:
            assert all(c.get(f"/models/synth/layer4/{i % 8}").status_code == 200 for i in range(20))
        assert "Traceback" not in server.log()


def fd_targets(pid: int) -> list[str]:
    """What process `pid`'s open file descriptors point at; one it closes while being listed is left out."""
    targets = []
    for link in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.append(link.readlink().name)
        except FileNotFoundError:  # closed since the listing (a static file read, a database file)
            continue
    return targets


def established_connections(pid: int, port: int) -> int:
    """Connections to the server's `port` that process `pid` holds open (from /proc, Linux)."""
    inodes = {t.removeprefix("socket:[").removesuffix("]") for t in fd_targets(pid) if t.startswith("socket:")}
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            count += local_port == port and state == "01" and inode in inodes
    return count


@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT balancing is Linux's")
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_worker_processes_share_connections_that_arrive_at_once(settings, store):
    """On one shared socket the worker that woke first accepted every pending connection (30 of 32 before); each
    worker now listens on its own socket of a SO_REUSEPORT group, and the kernel spreads them."""
    populate(store, "synth", {"layer4": 8})
    with LiveServer(settings, workers=2) as server:
        workers = [pid for pid in children_of(server.proc.pid)  # not multiprocessing's resource tracker
                   if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2
        conns = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(32)]
        try:
            request = b"GET /static/style.css HTTP/1.1\r\nHost: x\r\n\r\n"
            with ThreadPoolExecutor(8) as pool:  # every connection answered: accepted and kept alive
                assert all(pool.map(lambda c: c.sendall(request) or c.recv(65536).startswith(b"HTTP/1.1 200"),
                                    conns))
            held = sorted(established_connections(pid, server.port) for pid in workers)
        finally:
            for c in conns:
                c.close()
        assert sum(held) == 32 and held[0] >= 6, held  # 32 coin flips: fewer than 6 on one side, p ≈ 1e-4
        assert "Traceback" not in server.log()


@pytest.mark.parametrize("workers", ["1", "2"])  # a shared socket, and one per worker
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_serve_on_a_port_in_use_says_so_in_one_line(settings, monkeypatch, workers):
    from typer.testing import CliRunner

    from worker.cli.root import cli

    monkeypatch.setenv("MICROSCOPE_DATABASE_URL", settings.db_url)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--port", str(port), "--workers", workers])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_postgres_connections_are_pooled(settings, store, pg_url):
    populate(store, "synth", {"layer4": 8})
    store.sessions.kw["bind"].dispose()  # only the app's pool stays connected
    app = create_app(settings)
    database = pg_url.rsplit("/", 1)[1]
    admin = create_engine(pg_url.rsplit("/", 1)[0] + "/test", isolation_level="AUTOCOMMIT")

    def connections() -> int:
        with admin.connect() as conn:
            return conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"), {"d": database})

    before = connections()  # engines of earlier tests on this session-wide database may still be connected
    with TestClient(app) as client:
        for i in range(30):
            assert client.get(f"/models/synth/layer4/{i % 8}").status_code == 200
        assert app.state.engine.pool.size() == 10
        opened = connections() - before
        assert opened <= 3  # sequential requests reuse a pooled connection instead of opening 30
        assert app.state.engine.pool.checkedin() >= 1
    app.state.engine.dispose()
    admin.dispose()
