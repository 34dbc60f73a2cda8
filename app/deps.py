"""FastAPI dependencies shared by the views."""
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from store.cache import Cache
from store.settings import Settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        if request.method in ("GET", "HEAD"):
            read_snapshot(session)
        yield session


def read_snapshot(session: Session) -> None:
    """Make all of this session's reads see one snapshot of the store, so a page never shows part of a
    neuron from before a worker's commit and part from after it (reads only: SQLite takes no write lock)."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        session.connection().exec_driver_sql("BEGIN")  # pysqlite itself would run each SELECT in its own snapshot
    elif dialect == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


# async: FastAPI runs a plain `def` dependency in its thread pool, a hop that costs more than these lookups
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_cache(request: Request) -> Cache:
    return request.app.state.cache


# scope="function": the session, and its pooled connection, is closed when the view returns, not after the
# response has been sent. Sending needs the event loop, and a neuron page on the loop that waits for a connection
# (the pool exhausted under load) would wait for views whose connections only the loop could free: the server
# stalled until the pool's 30 s timeout, then failed those requests (tests/test_fresh_pages.py).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CacheDep = Annotated[Cache, Depends(get_cache)]
