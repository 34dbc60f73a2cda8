"""The worker's side of the store: open it (migrated), register models and layers, record runs."""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from sqlalchemy import JSON, insert, select
from sqlalchemy.orm import Session, sessionmaker

from store.cache import Cache
from store.migrate import upgrade
from store.paths import code_version
from store.schema import Layer, Model, Run, Unit, make_engine, make_sessionmaker, now
from store.settings import Settings

# (run id, stage) of the pipeline stage running now (worker.pipeline.runner): a stage's own run bookkeeping joins
# that row instead of opening another, so one stage run is one `runs` row carrying the build fingerprint
ACTIVE_RUN: ContextVar[tuple[int, str] | None] = ContextVar("active_run", default=None)


@contextmanager
def joined_run(run_id: int, stage: str) -> Iterator[None]:
    token = ACTIVE_RUN.set((run_id, stage))
    try:
        yield
    finally:
        ACTIVE_RUN.reset(token)


def active_run(stage: str) -> int | None:
    """The pipeline's run row for `stage`, if one is open in this context."""
    active = ACTIVE_RUN.get()
    return active[0] if active and active[1] == stage else None


@dataclass
class Store:
    sessions: sessionmaker
    cache: Cache
    settings: Settings


def open_store(settings: Settings | None = None) -> Store:
    settings = settings or Settings()
    upgrade(settings.db_url, cache_root=settings.cache_root)
    return Store(make_sessionmaker(make_engine(settings.db_url)), Cache(settings.cache_root), settings)


def register_model(session: Session, name: str, arch: str, weights: str | None, image_size: int,
                   layers: list, description: str = "", load: dict | None = None) -> Model:
    """Create or update a model and its layers, with one unit row per neuron.

    `load`: how the model was built (`LoadedModel.record()`), kept so the server's probes rebuild the same one."""
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        model = Model(name=name, arch=arch, weights=weights, image_size=image_size, description=description)
        session.add(model)
        session.flush()
    model.arch, model.weights, model.image_size = arch, weights, image_size
    if load is not None:
        model.load = load
    model.description = description or model.description
    existing = {la.name: la for la in model.layers}
    for pos, spec in enumerate(layers):
        layer = existing.get(spec.name)
        if layer is None:
            layer = Layer(model_id=model.id, name=spec.name, module=spec.module, n_units=spec.n_units)
            session.add(layer)
            session.flush()
        layer.module, layer.n_units, layer.kind = spec.module, spec.n_units, spec.kind
        layer.position, layer.is_default = pos, spec.is_default
        have = set(session.scalars(select(Unit.index).where(Unit.layer_id == layer.id)))
        session.add_all(Unit(layer_id=layer.id, index=i) for i in range(spec.n_units) if i not in have)
    session.flush()
    session.refresh(model)
    return model


def start_run(session: Session, stage: str, model: Model | None, settings: dict, layer: str | None = None) -> Run:
    joined = active_run(stage)
    if joined is not None:  # the pipeline's row: take the stage's settings, keep the build record
        run = session.get(Run, joined)
        run.settings = {**settings, "build": (run.settings or {}).get("build")}
        run.layer = run.layer or layer
        return run
    run = Run(stage=stage, model_id=model.id if model else None, layer=layer,
              weights=model.weights if model else None, settings=settings, code_version=code_version())
    session.add(run)
    session.flush()
    return run


def finish_run(session: Session, run: Run, report: dict, status: str = "done") -> None:
    if run.id == active_run(run.stage):  # the pipeline marks its row done once the stage's write returns
        run.report = report
        return
    run.report, run.status, run.finished_at = report, status, now()


@contextmanager
def recorded_run(store: Store, stage: str, model_name: str, settings: dict,
                 layer: str | None = None) -> Iterator[dict]:
    """A `runs` row for a stage that computes first and writes at the end: started now, marked failed if
    the body raises. The body fills the yielded report dict; the row is committed done when it returns."""
    with store.sessions.begin() as session:
        run_id = start_run(session, stage, model_named(session, model_name), settings, layer=layer).id
    report: dict = {"run_id": run_id}
    if run_id == active_run(stage):  # the pipeline records the outcome
        yield report
        return
    try:
        yield report
    except BaseException:
        with store.sessions.begin() as session:
            finish_run(session, session.get(Run, run_id), {"error": "interrupted or failed"}, status="failed")
        raise
    with store.sessions.begin() as session:
        finish_run(session, session.get(Run, run_id), report)



def bulk_insert(session: Session, model, rows: list[dict]) -> None:
    """Insert many rows of one ORM table in the session's transaction: Postgres COPY (psycopg), else one
    Core executemany (the ORM's unit of work costs ~1 s per 10,000 rows). Every row has the same keys;
    columns left out get their server default or NULL (client-side defaults are not applied)."""
    if not rows:
        return
    table = model.__table__
    if session.get_bind().dialect.name != "postgresql":
        session.execute(insert(table), rows)
        return
    conn = session.connection()
    conn.info["store_wrote"] = True  # store.schema.track_writes sees statements, not COPY data
    columns = list(rows[0])
    as_json = [isinstance(table.c[c].type, JSON) for c in columns]
    names = ", ".join(table.c[c].name for c in columns)
    with conn.connection.dbapi_connection.cursor() as cursor, \
            cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([json.dumps(row[c]) if j else row[c] for c, j in zip(columns, as_json, strict=True)])


def model_named(session: Session, name: str) -> Model:
    """The registered model `name`; a LookupError naming the models there are (one line for the CLI)."""
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        have = ", ".join(session.scalars(select(Model.name).order_by(Model.name))) or "none yet"
        raise LookupError(f"No model {name!r} in the store. Models there: {have}.")
    return model
