"""Load driver: the real server (`microscope serve`, uvicorn) on loopback over a populated synthetic store.

Phases, all against the same server in one run:
  mixed @C    neuron pages, JSON twins, layer grids and search (when /search exists) at C clients
  neuron @C   neuron pages only, and static @C: one static file from the same server (the ceiling)
  neuron @4 / static @4   latency at low concurrency
With --writer a separate process rewrites neurons (one transaction each) during the whole run, and every
neuron JSON twin read is checked to show one whole write (tests.synthetic.neuron_generation).
The client is bench.lean_client (~0.1 ms CPU a request, so on a small machine the figures are the server's);
--client httpx runs httpx.AsyncClient instead (~1.1 ms a request). CPU per request is the server's processes
plus, on Postgres, the store's backends (their part shown as "db").

    .venv/bin/python bench/load.py                          # 10,000 requests per phase, SQLite
    .venv/bin/python bench/load.py --backend postgres --writer
    .venv/bin/python bench/load.py --requests 1000 --low-requests 300   # quick
    .venv/bin/python bench/load.py --page-cache-mb 0 --phases neuron,static,low --compare main   # before/after
    .venv/bin/python bench/load.py --page-cache-mb 0 --phases neuron,static,low --rounds 6   # ratios on a noisy machine
"""
import asyncio
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import typer
from sqlalchemy import create_engine, text

from app import urls
from app.liveserver import LiveServer
from store.migrate import upgrade
from store.settings import Settings
from store.writes import open_store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test fixtures (tests/synthetic.py)
from bench.lean_client import LeanConnection
from tests.synthetic import TornNeuron, keep_writing, neuron_generation, populate

PG_ADMIN_URL = os.environ.get("MICROSCOPE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MODEL = "synth"


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    torn: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)  # the first few errors in full
    generations: set[int] = field(default_factory=set)
    seconds: float = 0.0
    cpu: float = 0.0  # CPU seconds the server processes (and Postgres) spent on this phase
    client_cpu: float = 0.0  # CPU seconds the load client (this process) spent on it
    db_cpu: float = 0.0  # the Postgres backends' part of `cpu`

    @property
    def cpu_ms(self) -> float:
        """CPU per request: unlike req/s, it hardly moves when other programs share the cores."""
        return 1000 * self.cpu / len(self.latencies) if self.latencies else float("nan")

    def error(self, what: str, detail: str = "") -> None:
        self.errors[what] = self.errors.get(what, 0) + 1
        if len(self.samples) < 5:
            self.samples.append(f"{what} {detail}".strip())

    def add(self, other: "Result") -> None:
        """Fold in another round of the same phase."""
        self.latencies += other.latencies
        for what, n in other.errors.items():
            self.errors[what] = self.errors.get(what, 0) + n
        self.torn += other.torn
        self.samples = (self.samples + other.samples)[:5]
        self.generations |= other.generations
        self.seconds += other.seconds
        self.cpu += other.cpu
        self.client_cpu += other.client_cpu
        self.db_cpu += other.db_cpu

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values()) + len(self.torn)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1] * 1000

    def line(self) -> str:
        return (f"{self.name:<14} {len(self.latencies):>7} req {self.rps:>8.0f} req/s  p50 {self.pct(50):>7.1f} ms"
                f"  p99 {self.pct(99):>7.1f} ms  cpu {self.cpu_ms:>5.2f} ms/req{self.db_part}  client cpu"
                f" {self.client_cpu_ms:>5.2f} ms/req  errors {self.n_errors}")

    @property
    def db_part(self) -> str:
        return f" (db {1000 * self.db_cpu / len(self.latencies):.2f})" if self.db_cpu and self.latencies else ""

    @property
    def client_cpu_ms(self) -> float:
        return 1000 * self.client_cpu / len(self.latencies) if self.latencies else float("nan")


async def fetch(client: "httpx.AsyncClient | LeanConnection", url: str, result: Result) -> None:
    start = time.perf_counter()
    try:
        response = await client.get(url)
    except (httpx.HTTPError, ConnectionError) as e:
        result.error(type(e).__name__, f"{url} after {time.perf_counter() - start:.2f}s: {e!r}")
        return
    result.latencies.append(time.perf_counter() - start)
    if response.status_code != 200:
        result.error(f"HTTP {response.status_code} {url}")
    elif url.endswith(".json") and "/models/" in url and url.count("/") == 4:
        try:
            gen = neuron_generation(response.json())
        except TornNeuron as e:
            result.torn.append(str(e))
        else:
            if gen is not None:
                result.generations.add(gen)


async def drive(base: str, paths: list[str], clients: int, name: str, pool: list | None = None) -> Result:
    """Fetch every path once with `clients` independent clients (one keep-alive connection each), each
    sending its next request when its previous one is answered. `pool`: clients already connected (kept
    between rounds, so no round pays for connecting), else `clients` new ones."""
    if pool is None:
        async with open_clients(base, clients) as pool:
            return await drive(base, paths, clients, name, pool)
    result = Result(name)
    queue = iter(paths)

    async def one_client(client):
        for path in queue:
            await fetch(client, path, result)

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one_client(client) for client in pool))
    result.seconds, result.client_cpu = time.perf_counter() - start, time.process_time() - cpu
    return result


@asynccontextmanager
async def open_clients(base: str, n: int, warm: str | None = None, kind: str = "lean"):
    """`n` clients of one connection each (`kind`: lean, bench.lean_client; or httpx); with `warm`, each has
    fetched that path once (connected)."""
    if kind == "lean":
        pool = await asyncio.gather(*(LeanConnection.open(base) for _ in range(n)))
    else:
        pool = [httpx.AsyncClient(base_url=base, limits=httpx.Limits(max_connections=1), timeout=30)
                for _ in range(n)]
    try:
        if warm:
            await asyncio.gather(*(client.get(warm) for client in pool))
        yield pool
    finally:
        await asyncio.gather(*(client.aclose() for client in pool))


def proc_stats() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command, CPU seconds) of every process, from /proc (Linux)."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            comm, rest = raw[raw.index("(") + 1:raw.rindex(")")], raw[raw.rindex(")") + 2:].split()
            out[int(entry.name)] = (int(rest[1]), comm, (int(rest[11]) + int(rest[12])) / tick)
    return out


def serves_database(pid: int, database: str) -> bool:
    """A Postgres backend names its database in its title ("postgres: user db 127.0.0.1(port) idle")."""
    try:
        return f" {database} " in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def server_cpu(root: int, database: str | None) -> tuple[float, float]:
    """CPU seconds so far of the server process `root` with its descendants plus the Postgres backends of
    `database` (not those of other programs sharing the Postgres server), and the backends' part."""
    stats, tree, total, db = proc_stats(), {root}, 0.0, 0.0
    for _ in range(4):  # serve -> uvicorn workers (and their helpers)
        tree |= {pid for pid, (ppid, _, _) in stats.items() if ppid in tree}
    for pid, (_, comm, cpu) in stats.items():
        if pid in tree:
            total += cpu
        elif database and comm == "postgres" and serves_database(pid, database):
            total, db = total + cpu, db + cpu
    return total, db


async def run_groups(servers: list[LiveServer], groups: list[dict], rounds: int, warm: str,
                     client: str = "lean") -> list[dict[str, Result]]:
    """Each group's phases in `rounds` alternating rounds on every server (one connected pool of clients per
    server and client count, kept for the whole run), with each server's CPU (and its Postgres backends')
    counted per phase. Within a round the servers take turns, first one then the other, so a drift in the
    machine's speed touches before and after alike."""
    url = servers[0].settings.db_url
    database = url.rsplit("/", 1)[1] if url.startswith("postgresql") else None
    results: list[dict[str, Result]] = [{} for _ in servers]
    async with AsyncExitStack() as stack:
        pools = {}
        for group in groups:
            for i, server in enumerate(servers):
                for name, (_paths, c) in group.items():
                    if (i, c) not in pools:
                        pools[i, c] = await stack.enter_async_context(open_clients(server.url, c, warm, client))
                    results[i][name] = Result(name)
            for r in range(rounds):
                turns = list(enumerate(servers))
                for i, server in turns if r % 2 == 0 else turns[::-1]:
                    for name, (paths, c) in group.items():
                        share = paths[r * len(paths) // rounds:(r + 1) * len(paths) // rounds]
                        start, db_start = server_cpu(server.proc.pid, database)
                        result = await drive(server.url, share, c, name, pools[i, c])
                        end, db_end = server_cpu(server.proc.pid, database)
                        result.cpu, result.db_cpu = end - start, db_end - db_start
                        results[i][name].add(result)
    return results


def neuron_paths(layers: dict[str, int], n: int, rng: random.Random, json: bool = False) -> list[str]:
    names = list(layers)
    out = []
    for _ in range(n):
        layer = rng.choice(names)
        path = f"/models/{MODEL}/{layer}/{rng.randrange(layers[layer])}"
        out.append(path + ".json" if json else path)
    return out


def mixed_paths(layers: dict[str, int], n: int, rng: random.Random, page_size: int, search: bool) -> list[str]:
    """40% neuron pages, 25% JSON twins, 20% layer grids, 15% search (shares go to pages without search)."""
    kinds = ["neuron"] * 40 + ["json"] * 25 + ["grid"] * 20 + (["search"] * 15 if search else ["neuron"] * 15)
    words = ["dog", "apple", "forest", "guitar", "kite", "unit", "harbor"]
    out = []
    for _ in range(n):
        kind = rng.choice(kinds)
        if kind in ("neuron", "json"):
            out += neuron_paths(layers, 1, rng, json=kind == "json")
        elif kind == "grid":
            layer = rng.choice(list(layers))
            pages = -(-layers[layer] // page_size)
            out.append(urls.layer(MODEL, layer, rng.randrange(pages) + 1))
        else:
            out.append(urls.search(rng.choice(words)))
    return out


@contextmanager
def temp_store(backend: str, **settings):
    """Settings for a fresh store on `backend` in a temp folder (Postgres: a temp database, dropped after)."""
    with tempfile.TemporaryDirectory(prefix="microscope-load-") as tmp:
        if backend == "sqlite":
            yield Settings(data_dir=Path(tmp), database_url=f"sqlite:///{tmp}/store.db", cache_dir=Path(tmp) / "cache",
                           **settings)
            return
        name = f"microscope_load_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
            yield Settings(data_dir=Path(tmp), database_url=url, cache_dir=Path(tmp) / "cache", **settings)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            admin.dispose()


def has_search(base: str) -> bool:
    try:
        return httpx.get(base + urls.search("dog"), timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def log_problems(log: str) -> dict[str, int]:
    return {"database is locked": log.count("database is locked"), "Traceback": log.count("Traceback")}


class Writer:
    """tests.synthetic.keep_writing in its own process, from start until stop()."""

    def __init__(self, db_url: str, pause: float = 0.0, seconds: float = 3600):
        ctx = multiprocessing.get_context("spawn")
        self.results, self.stop_event, ready = ctx.Queue(), ctx.Event(), ctx.Event()
        self.proc = ctx.Process(target=keep_writing, daemon=True,
                                args=(db_url, MODEL, seconds, pause, self.results, self.stop_event, ready))
        self.proc.start()
        ready.wait(120)  # its first commit: from here on, reads overlap writes

    def stop(self) -> dict:
        self.stop_event.set()
        self.proc.join(120)
        if self.results.empty():
            return {"commits": 0, "errors": {f"writer process exited with {self.proc.exitcode}": 1}}
        return self.results.get(timeout=10)


def run_load(settings: Settings, layers: dict[str, int], requests: int, clients: int, low_requests: int,
             workers: int, writer: bool = False, writer_pause: float = 0.0,
             phases: tuple[str, ...] = ("mixed", "neuron", "static", "low"), seed: int = 0,
             sources: tuple[Path | None, ...] = (None,), populated: bool = False, rounds: int = 1,
             client: str = "lean") -> list[dict]:
    """Populate the store (unless `populated`), start a server of each checkout in `sources` (None: this one),
    all at once on the same store, run the phases on each (with a writer process when `writer`); for each
    server its results by phase, the problems found in its log, and the writer's report. With `rounds` > 1 the
    neuron and static phases (and the two at 4 clients) take turns in that many rounds, on each server in
    turn, so a drift in the machine's speed touches every phase and every server alike."""
    if not populated:
        upgrade(settings.db_url)
        populate(open_store(settings), MODEL, layers)
    rng = random.Random(seed)
    with ExitStack() as stack:
        servers = [stack.enter_context(LiveServer(settings, workers=workers, source=src)) for src in sources]
        static = urls.static("style.css")
        search = all(has_search(server.url) for server in servers)
        writing = Writer(settings.db_url, writer_pause) if writer else None
        groups = phase_groups(phases, layers, requests, clients, low_requests, rng, settings.page_size, search,
                              static)
        results = asyncio.run(run_groups(servers, groups, rounds, static, client))
        report = writing.stop() if writing else None
        outs = []
        for server, res in zip(servers, results, strict=True):
            out = {"results": res, "search": search, "log": log_problems(server.log()),
                   "log_tail": server.log().splitlines()[-40:]}
            if report is not None:
                out["writer"] = report
            outs.append(out)
    return outs


def phase_groups(phases, layers, requests, clients, low_requests, rng, page_size, search, static) -> list[dict]:
    """The phases as groups run in turns, a round of each at a time (neuron and static: side by side)."""
    plan = {
        "mixed": (mixed_paths(layers, requests, rng, page_size, search), clients),
        "neuron": (neuron_paths(layers, requests, rng), clients),
        "static": ([static] * requests, clients),
    }
    groups = []
    for phase in phases:
        if phase == "low":
            groups.append({"neuron @4": (neuron_paths(layers, low_requests, rng), 4),
                           "static @4": ([static] * low_requests, 4)})
        elif phase == "static" and groups and "neuron @" + str(clients) in groups[-1]:
            groups[-1][f"static @{clients}"] = plan[phase]
        else:
            paths, c = plan[phase]
            groups.append({f"{phase} @{c}": (paths, c)})
    return groups


@contextmanager
def checkout(revision: str):
    """A temporary git worktree of `revision` (for serving "before" beside this tree's "after")."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="microscope-before-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-q", str(path), revision], check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(path)], check=False)


def ratio(out: dict) -> float | None:
    res = out["results"]
    neuron = next((r for k, r in res.items() if k.startswith("neuron @") and k != "neuron @4"), None)
    static = next((r for k, r in res.items() if k.startswith("static @") and k != "static @4"), None)
    return neuron.rps / static.rps if neuron and static and static.rps else None


def cpu_ratio(out: dict) -> float | None:
    """Static CPU per request over neuron CPU per request at the high client count: the req/s ratio the server
    would reach on cores of its own (this machine's are shared, so wall-clock rates drift with the load)."""
    res = out["results"]
    neuron = next((r for k, r in res.items() if k.startswith("neuron @") and k != "neuron @4"), None)
    static = next((r for k, r in res.items() if k.startswith("static @") and k != "static @4"), None)
    return static.cpu_ms / neuron.cpu_ms if neuron and static and neuron.cpu_ms else None


def print_side_by_side(before: dict, after: dict, revision: str) -> None:
    """One line per phase: req/s, p50 and p99 of the older revision and of this tree."""
    print(f"\nbefore = {revision}, after = this tree (same store, served side by side, rounds in turn)")
    print(f"{'phase':<14} {'before req/s':>12} {'p50':>7} {'p99':>7} {'cpu ms':>7}   {'after req/s':>12} {'p50':>7}"
          f" {'p99':>7} {'cpu ms':>7}")
    for name, b in before["results"].items():
        a = after["results"].get(name)
        if a is None:
            continue
        print(f"{name:<14} {b.rps:>12.0f} {b.pct(50):>7.1f} {b.pct(99):>7.1f} {b.cpu_ms:>7.2f}   "
              f"{a.rps:>12.0f} {a.pct(50):>7.1f} {a.pct(99):>7.1f} {a.cpu_ms:>7.2f}")
    rb, ra = ratio(before), ratio(after)
    cb, ca = cpu_ratio(before), cpu_ratio(after)
    if rb is not None and ra is not None:
        print(f"{'neuron/static':<14} {rb:>11.2f}× {'':>15} {cb:>7.2f}×  {ra:>11.2f}× {'':>15} {ca:>7.2f}×"
              "   (req/s, and static CPU/req ÷ neuron CPU/req; target ≥ 0.5×, ≥ 0.3× with --writer)")


def failures_of(out: dict) -> int:
    failures = sum(r.n_errors for r in out["results"].values()) + sum(out["log"].values())
    return failures + sum(out.get("writer", {}).get("errors", {}).values())


def print_report(out: dict, backend: str, workers: int, page_cache_mb: int, client: str = "lean") -> int:
    print(f"backend {backend}, {workers} server process(es), page cache {page_cache_mb} MB, {client} client, "
          f"search {'on' if out['search'] else 'absent (no /search)'}")
    res = out["results"]
    for r in res.values():
        print(r.line())
        for what, n in list(r.errors.items())[:5]:
            print(f"    {n} × {what}")
        for sample in r.samples:
            print(f"    e.g. {sample}")
        for t in r.torn[:5]:
            print(f"    torn: {t}")
    neuron = res.get(next((k for k in res if k.startswith("neuron @") and k != "neuron @4"), ""))
    static = res.get(next((k for k in res if k.startswith("static @") and k != "static @4"), ""))
    if neuron and static and static.rps:
        print(f"neuron pages / static file req/s at {neuron.name.split('@')[1]} clients: {neuron.rps / static.rps:.2f}×"
              f" (target ≥ 0.5×, ≥ 0.3× with --writer)")
    if "neuron @4" in res:
        print(f"neuron page p99 at 4 clients: {res['neuron @4'].pct(99):.1f} ms (target ≤ 20 ms)")
    gens = set().union(*(r.generations for r in res.values()))
    if "writer" in out:
        w = out["writer"]
        print(f"writer: {w['commits']} neuron commits, errors {w['errors'] or 'none'}; readers saw "
              f"{len(gens)} generations, torn neurons {sum(len(r.torn) for r in res.values())}")
    print(f"server log: {out['log']}")
    if failures_of(out):
        print("server log tail:\n  " + "\n  ".join(out["log_tail"]))
    failures = failures_of(out)
    print("ZERO ERRORS" if failures == 0 else f"{failures} ERRORS")
    return failures


def main(requests: int = typer.Option(10_000, help="requests per phase at --clients"),
         clients: int = 32, low_requests: int = typer.Option(2_000, help="requests per phase at 4 clients"),
         backend: str = typer.Option("sqlite", help="sqlite | postgres"),
         workers: int = typer.Option(2, help="server processes (microscope serve --workers)"),
         units: int = typer.Option(256, help="units in each of the two layers"),
         writer: bool = typer.Option(False, help="a process rewrites neurons during the whole run"),
         writer_pause: float = typer.Option(0.0, help="seconds between the writer's commits"),
         phases: str = typer.Option("mixed,neuron,static,low", help="which phases to run, comma-separated"),
         page_cache_mb: int = typer.Option(64, help="the server's page cache (0: every page rendered afresh)"),
         compare: str = typer.Option("", help="a git revision to serve ('before') beside this tree on the same "
                                              "store, rounds taking turns; prints both side by side"),
         rounds: int = typer.Option(1, help="run neuron and static phases in this many alternating rounds"),
         client: str = typer.Option("lean", help="lean (bench.lean_client) | httpx: the load client")):
    """Run the load phases against the real server and print req/s, p50/p99, ratios and errors."""
    layers = {"layer4": units, "layer3": units // 2}
    args = (requests, clients, low_requests, workers, writer, writer_pause, tuple(phases.split(",")))
    kw = {"populated": True, "rounds": rounds, "client": client}
    with temp_store(backend, page_cache_mb=page_cache_mb) as settings:
        upgrade(settings.db_url)
        populate(open_store(settings), MODEL, layers)
        before = None
        if compare:  # both served at once, the rounds taking turns between them
            with checkout(compare) as tree:
                before, after = run_load(settings, layers, *args, sources=(tree, None), **kw)
            print(f"--- before ({compare}) ---")
            print_report(before, backend, workers, page_cache_mb, client)
            print("--- after (this tree) ---")
        else:
            [after] = run_load(settings, layers, *args, **kw)
    failures = print_report(after, backend, workers, page_cache_mb, client)
    if before is not None:
        print_side_by_side(before, after, compare)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    typer.run(main)
