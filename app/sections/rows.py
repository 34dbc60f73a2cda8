"""One statement for the whole neuron card: each section names scalar subqueries that aggregate its rows into
JSON inside the database (`json_rows`), and `fetch` runs them all as the columns of a single SELECT.

Why: a fresh neuron page used to cost ~18 statements and as many ORM result sets; on Postgres each is a round
trip. Aggregating in SQL (SQLite's json_group_array, Postgres's json_agg) makes it one round trip and one
small result row, read in the page's snapshot like before. Row order is not guaranteed by either aggregate,
so sections sort in Python. The statement is built once per dialect and set of sections (`statement`) and
takes the unit as bound parameters (UNIT_ID, MODEL_ID, LAYER), so SQLAlchemy compiles it once too.
"""
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Integer,
    Select,
    String,
    bindparam,
    func,
    literal_column,
    select,
    type_coerce,
)
from sqlalchemy.orm import Session

UNIT_ID = bindparam("unit_id", type_=Integer)
MODEL_ID = bindparam("model_id", type_=Integer)
LAYER = bindparam("layer", type_=String)


def _value(column, dialect: str):
    """A column as json_object/json_build_object should take it: JSON-typed columns embedded, not quoted."""
    if dialect == "sqlite" and isinstance(column.type, JSON):
        return func.json(column)
    return column


def json_rows(stmt: Select, dialect: str) -> ColumnElement:
    """A scalar subquery whose value is the list of `stmt`'s rows, each a dict by column label."""
    sub = stmt.subquery()
    pairs = [arg for c in sub.c for arg in (literal_column(f"'{c.key}'"), _value(c, dialect))]
    if dialect == "postgresql":
        agg = func.coalesce(func.json_agg(func.json_build_object(*pairs)), literal_column("'[]'::json"))
    else:
        agg = func.json_group_array(func.json_object(*pairs))
    return type_coerce(select(agg).select_from(sub).scalar_subquery(), JSON)


@lru_cache(maxsize=64)
def statement(dialect: str, sections: tuple) -> tuple[Select, dict[str, tuple[str, ...]]]:
    """The one SELECT of these sections' columns, and each section's column names."""
    columns = {sec.name: sec.columns(dialect) for sec in sections}
    labeled = [col.label(f"{sec}__{name}") for sec, cols in columns.items() for name, col in cols.items()]
    return select(*labeled), {sec: tuple(cols) for sec, cols in columns.items()}


def fetch(session: Session, sections: tuple, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run the sections' subqueries as one SELECT with the unit's `params`; the values by section."""
    stmt, names = statement(dialect_of(session), sections)
    row = session.connection().execute(stmt, params).one()._mapping if any(names.values()) else {}  # Core
    return {sec: {name: row[f"{sec}__{name}"] for name in cols} for sec, cols in names.items()}


def when(value: str | datetime | None) -> datetime | None:
    """A timestamp read through JSON (SQLite's text or Postgres's ISO form) as a datetime again."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def dialect_of(session: Session) -> str:
    return session.get_bind().dialect.name
