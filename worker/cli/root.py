"""The `microscope` command tree (the CLI's root; the web app never imports it): build, demo, serve, export,
worker, db. Every command is a plain function listed
in a `command_group` table below, in pipeline order; the worker's commands import torch only when they run."""
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from store.settings import Settings
from worker.cli.demo import corpus_cmd, evaluate_cmd, train_cmd
from worker.cli.options import command_group
from worker.cli.stages import build_cmd, stage_names, worker_cli


def db_upgrade(revision: str = "head"):
    """Create or migrate the store's schema (SQLite file or DATABASE_URL)."""
    from store.migrate import upgrade

    settings = Settings()
    upgrade(settings.db_url, revision, cache_root=settings.cache_root)
    typer.echo(f"store at {settings.db_url} is at {revision}")


def db_downgrade(revision: str = typer.Argument(..., help="target revision, e.g. base")):
    """Migrate the store's schema down (drops data of removed tables)."""
    from store.migrate import downgrade

    downgrade(Settings().db_url, revision)


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = typer.Option(1, min=1),
          reload: bool = False,
          keep_alive: Annotated[int, typer.Option(help="seconds an idle keep-alive connection stays open")] = 75):
    """Serve the store over HTTP (several worker processes with --workers)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from app.sockets import OwnSocket, check_free, listening_socket, spreads_connections
    from store.migrate import upgrade

    upgrade(Settings().db_url)
    options = dict(log_level="warning", proxy_headers=True,
                   # longer than proxies' and clients' idle timeouts, so the server is not the side that closes a
                   # connection just as a request arrives on it (the client then sees a reset, not a response)
                   timeout_keep_alive=keep_alive)
    balanced = workers > 1 and not reload and spreads_connections(port)
    try:
        if balanced:
            check_free(host, port)
        else:
            sock = listening_socket(host, port)
    except OSError as e:
        typer.echo(f"error: cannot listen on {host}:{port}: {e.strerror or e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"serving on http://{host}:{port}")
    if balanced:  # each worker on a socket of its own (app.sockets)
        config = uvicorn.Config("app.asgi:app", host=host, port=port, workers=workers, **options)
        Multiprocess(config, sockets=[OwnSocket(host, port)]).run()
        return
    uvicorn.run("app.asgi:app", fd=sock.fileno(), workers=workers, reload=reload,
                reload_includes=["*.py", "*.html"] if reload else None,  # the app never rereads a template itself
                **options)


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
    from app.deps import read_snapshot
    from store.schema import make_engine, make_sessionmaker

    settings = Settings()
    engine = make_engine(settings.db_url)
    try:
        with make_sessionmaker(engine)() as session:
            read_snapshot(session)
            yield session
    finally:
        engine.dispose()


def demo(ctx: typer.Context, host: str = "127.0.0.1", port: int = 8000,
         serve_after: bool = typer.Option(True, "--serve/--no-serve"), workers: int = 1):
    """Build the demo store on the embedded default model (reusing what exists), then serve it."""
    if ctx.invoked_subcommand is not None:
        return
    demo_build(only=[], skip=[])
    if serve_after:
        serve(host=host, port=port, workers=workers, reload=False)


def demo_build(only: list[str] = typer.Option([], help="run only these stages"),
               skip: list[str] = typer.Option([], help="leave these stages out")):
    """Build (or bring up to date) the demo store without serving it: `microscope build` on the demo model."""
    from worker.demo.build import build_demo

    build_demo(Settings(), stage_names(only), stage_names(skip), echo=typer.echo)


demo_cli = command_group("The embedded demo model: build the demo store and serve it, or train, evaluate, "
                         "build its corpus.", [("build", demo_build), ("train", train_cmd),
                                               ("evaluate", evaluate_cmd), ("corpus", corpus_cmd)],
                         callback=demo, invoke_without_command=True, no_args_is_help=False)
db_cli = command_group("Create and migrate the store.", [("upgrade", db_upgrade), ("downgrade", db_downgrade)])
cli = command_group("CLIP Microscope: precompute neuron pages with the worker, browse them with the server.", [
    ("build", build_cmd), ("demo", demo_cli), ("serve", serve), ("export", export_cmd), ("worker", worker_cli),
    ("db", db_cli)])


def main() -> None:
    cli()
