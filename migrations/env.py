"""Alembic environment: the URL comes from the caller (app.migrate) or from Settings."""
from alembic import context

from app.db import Base, make_engine
from app.settings import Settings

config = context.config


def run() -> None:
    url = config.get_main_option("sqlalchemy.url") or Settings().db_url
    engine = make_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
