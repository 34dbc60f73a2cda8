"""Alembic environment: the URL comes from the caller (app.migrate) or from Settings."""
from alembic import context
from sqlalchemy import event

from app.db import Base, make_engine
from app.settings import Settings

config = context.config


def _foreign_keys_off(dbapi_conn, _record) -> None:
    dbapi_conn.execute("PRAGMA foreign_keys=OFF")  # outside a transaction: sqlite3 begins only before DML


def run() -> None:
    url = config.get_main_option("sqlalchemy.url") or Settings().db_url
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        # batch mode rebuilds a table (copy, DROP, rename): with foreign keys on, dropping `models` would
        # cascade-delete every layer, unit and example. Listened after make_engine's pragmas, so it wins.
        event.listen(engine, "connect", _foreign_keys_off)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
