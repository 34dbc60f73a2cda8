"""The `microscope` command: database, server, demo and (lazily, with torch) the worker."""
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from app.settings import Settings

cli = typer.Typer(help="CLIP Microscope: precompute neuron pages with the worker, browse them with the server.",
                  no_args_is_help=True)
db_cli = typer.Typer(help="Create and migrate the store.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")


@db_cli.command("upgrade")
def db_upgrade(revision: str = "head"):
    """Create or migrate the store's schema (SQLite file or DATABASE_URL)."""
    from app.migrate import upgrade

    settings = Settings()
    upgrade(settings.db_url, revision, cache_root=settings.cache_root)
    typer.echo(f"store at {settings.db_url} is at {revision}")


@db_cli.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="target revision, e.g. base")):
    """Migrate the store's schema down (drops data of removed tables)."""
    from app.migrate import downgrade

    downgrade(Settings().db_url, revision)


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, with TCP_NODELAY set where connections inherit it (Linux): uvicorn's worker
    processes do not set it on the connections they accept, so with --workers > 1 each response waited
    for the client's delayed ACK (about 44 ms per request on loopback)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@cli.command()
def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = typer.Option(1, min=1),
          reload: bool = False,
          keep_alive: Annotated[int, typer.Option(help="seconds an idle keep-alive connection stays open")] = 75):
    """Serve the store over HTTP (several worker processes with --workers)."""
    import uvicorn

    from app.migrate import upgrade

    upgrade(Settings().db_url)
    sock = listening_socket(host, port)
    typer.echo(f"serving on http://{host}:{port}")
    uvicorn.run("app.asgi:app", fd=sock.fileno(), workers=workers, reload=reload,
                log_level="warning", proxy_headers=True,
                # longer than proxies' and clients' idle timeouts, so the server is not the side that closes a
                # connection just as a request arrives on it (the client then sees a reset, not a response)
                timeout_keep_alive=keep_alive)


@cli.command("export")
def export_cmd(model: str = typer.Argument(..., help="model name, as in its URL"),
               layer: Annotated[list[str] | None, typer.Option(help="a layer to export (repeatable; default all)")]
               = None,
               fmt: Annotated[str, typer.Option("--format", help="parquet | jsonl")] = "parquet",
               out: Annotated[Path | None, typer.Option(help="output folder (default export/MODEL)")] = None,
               progress: bool = True):
    """Write every unit's statistics, examples, words, places, labels and families as tables (docs/export.md)."""
    from app.export import ExportError, export

    with store_session() as session:
        try:
            counts = export(session, model, out or Path("export") / model, fmt, layer, progress)
        except ExportError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    typer.echo(", ".join(f"{table} {n}" for table, n in counts.items()) + f" rows in {out or Path('export') / model}")


@contextmanager
def store_session():
    """A read-only session of the store (one snapshot, as the pages read), closed after."""
    from app.db import make_engine, make_sessionmaker
    from app.deps import read_snapshot

    settings = Settings()
    engine = make_engine(settings.db_url)
    try:
        with make_sessionmaker(engine)() as session:
            read_snapshot(session)
            yield session
    finally:
        engine.dispose()


demo_cli = typer.Typer(help="The embedded demo model: build the demo store and serve it, or train, evaluate, "
                              "build its corpus.", invoke_without_command=True)
cli.add_typer(demo_cli, name="demo")


@demo_cli.callback()
def demo(ctx: typer.Context, host: str = "127.0.0.1", port: int = 8000,
         serve_after: bool = typer.Option(True, "--serve/--no-serve"), workers: int = 1):
    """Build the demo store on the embedded default model (reusing what exists), then serve it."""
    if ctx.invoked_subcommand is not None:
        return
    demo_build()
    if serve_after:
        serve(host=host, port=port, workers=workers, reload=False)


@demo_cli.command("build")
def demo_build():
    """Build (or bring up to date) the demo store without serving it."""
    from worker.demo.build import build_demo

    build_demo(Settings(), echo=typer.echo)


def _add_worker() -> None:
    from worker.cli import worker_cli

    cli.add_typer(worker_cli, name="worker")
    from worker.demo.cli import add_commands

    add_commands(demo_cli)  # demo train / evaluate / corpus


def main() -> None:
    _add_worker()
    cli()
