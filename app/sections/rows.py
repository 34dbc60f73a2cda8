"""One statement for the whole neuron card: each section names scalar subqueries that aggregate its rows into
JSON inside the database (`json_rows`), and `fetch` runs them all as the columns of a single SELECT.

Why: a fresh neuron page used to cost ~18 statements and as many ORM result sets; on Postgres each is a round
trip. Aggregating in SQL (SQLite's json_group_array, Postgres's json_agg) makes it one round trip and one
small result row. Row order is not guaranteed by either aggregate, so sections sort in Python. The statement is
built once per dialect and set of sections (`statement`) and takes the unit as bound parameters (`model`,
`layer`, `index`: its URL), so it is compiled once too. The neuron page runs the compiled SQL on the driver's
cursor (`cursor_row`, `PageSQL`); a Session (the edit forms) runs it as a lambda statement (`page_lambda`),
whose cache key is the lambda's code and the sections' names: a plain SELECT's key is recomputed from its ~600
elements at every execution, 0.04-0.05 ms a page of ~0.13 ms in SQLAlchemy (timed in one process).

The unit itself is found inside the statement: the CTE `page_unit` joins model, layer and unit by name and
index, and UNIT_ID, MODEL_ID, LAYER (what the sections' subqueries compare with) are scalar subqueries of it,
each evaluated once. The SELECT reads FROM `page_unit` (no row: no such unit), outer-joined with the one-row
tables that sections name in `joins` (the unit's statistics, its heatmaps), whose columns are then plain
columns: on Postgres one join where each column was an init plan of its own (and one more to find the unit).
`app.sections.CONTEXT` adds the unit's ids, names and statistics as columns, so the neuron page is a single
statement, and one statement reads one snapshot of the store on either backend
without a transaction around it (on Postgres it runs in autocommit: no BEGIN and ROLLBACK round trips).
"""
from collections.abc import Mapping
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
    lambda_stmt,
    literal_column,
    select,
    type_coerce,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql.lambdas import StatementLambdaElement

from store.schema import Layer, Model, Unit

PAGE_UNIT = (
    select(Model.id.label("model_id"), Model.name.label("model_name"), Layer.id.label("layer_id"),
           Layer.name.label("layer_name"), Layer.n_units.label("n_units"), Unit.id.label("unit_id"),
           Unit.index.label("unit_index"))
    .join(Layer, Layer.model_id == Model.id).join(Unit, Unit.layer_id == Layer.id)
    .where(Model.name == bindparam("model", type_=String), Layer.name == bindparam("layer", type_=String),
           Unit.index == bindparam("index", type_=Integer), Unit.index < Layer.n_units)
    .cte("page_unit")
)
UNIT_ID = select(PAGE_UNIT.c.unit_id).scalar_subquery()
MODEL_ID = select(PAGE_UNIT.c.model_id).scalar_subquery()
LAYER = select(PAGE_UNIT.c.layer_name).scalar_subquery()


def _value(column, dialect: str):
    """A column as json_object/json_build_object should take it: JSON-typed columns embedded, not quoted."""
    if dialect == "sqlite" and isinstance(column.type, JSON):
        return func.json(column)
    return column


def json_rows(stmt: Select, dialect: str) -> ColumnElement:
    """A scalar subquery whose value is the list of `stmt`'s rows, each a dict by column label."""
    sub = stmt.subquery()
    if dialect == "postgresql":  # json_agg of the row itself: keys are its column names, made in C
        agg = func.coalesce(func.json_agg(sub.table_valued()), literal_column("'[]'::json"))
    else:
        pairs = [arg for c in sub.c for arg in (literal_column(f"'{c.key}'"), _value(c, dialect))]
        agg = func.json_group_array(func.json_object(*pairs))
    return type_coerce(select(agg).select_from(sub).scalar_subquery(), JSON)


def statement(dialect: str, sections: tuple) -> tuple[Select, dict[str, tuple[str, ...]]]:
    """The one SELECT of these sections' columns from the page's unit and their joins, and each section's
    column names."""
    columns = {sec.name: sec.columns(dialect) for sec in sections}
    labeled = [col.label(f"{sec}__{name}") for sec, cols in columns.items() for name, col in cols.items()]
    source = PAGE_UNIT
    for table, on in dict(join for sec in sections for join in sec.joins).items():  # each table once
        source = source.outerjoin(table, on)
    return select(*labeled).select_from(source), {sec: tuple(cols) for sec, cols in columns.items()}


@lru_cache(maxsize=64)
def page_lambda(dialect: str, sections: tuple) -> tuple[StatementLambdaElement, dict[str, tuple[str, ...]]]:
    """`statement` as a lambda statement, built once per dialect and set of sections and cached under their
    names."""
    stmt, names = statement(dialect, sections)
    return lambda_stmt(lambda: stmt, track_closure_variables=False,
                       track_on=[f"{dialect}:{','.join(sec.name for sec in sections)}"]), names


def fetch(db: Session | Connection, sections: tuple, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run the sections' subqueries as one SELECT with the unit's `params` (model, layer, index); the values by
    section. `db`: a Session (ORM execution, autoflush: the edit forms) or a Connection (the neuron page, run
    on its driver cursor by `cursor_row`)."""
    stmt, names = page_lambda(dialect_of(db), sections)
    if not any(names.values()):
        values = None
    elif isinstance(db, Connection):
        values = cursor_row(db, sections, params)
    else:
        row = db.execute(stmt, params).one_or_none()
        values = row._mapping if row is not None else None
    values = values or {}  # no row: the URL names no unit
    return {sec: {name: values.get(f"{sec}__{name}") for name in cols} for sec, cols in names.items()}


class PageSQL:
    """The page statement compiled once for a dialect: its SQL, its own bound values (limits, artifact names),
    its column keys, and the result processors SQLAlchemy would apply (JSON text on SQLite; none on Postgres,
    whose driver decodes), found from the first result's column types."""

    def __init__(self, dialect: Dialect, sections: tuple):
        stmt, _ = statement(dialect.name, sections)
        # psycopg: $1 placeholders for its RawCursor, which sends the SQL as it is; its ordinary cursor rewrites
        # %(name)s on every execution, uncached for a statement over 4 KB (this one is ~7 KB): ~0.03 ms a page
        self.raw_cursor = getattr(dialect.loaded_dbapi, "RawCursor", None) if dialect.driver == "psycopg" else None
        compiled = stmt.compile(dialect=type(dialect)(paramstyle="numeric_dollar") if self.raw_cursor else dialect)
        self.dialect, self.sql, self.fixed = dialect, str(compiled), dict(compiled.params)
        self.order = compiled.positiontup if compiled.positional else None  # pysqlite: qmark; psycopg: $n
        self.types = [dialect.type_descriptor(c.type) for c in stmt.selected_columns]
        self.keys = tuple(c.key for c in stmt.selected_columns)
        self.processors: list | None = None

    def parameters(self, params: dict[str, Any]):
        values = {**self.fixed, **params}
        return [values[name] for name in self.order] if self.order is not None else values

    def row(self, values: tuple, cursor) -> dict[str, Any]:
        if self.processors is None:  # the description once: psycopg builds its column objects on each access
            self.processors = [t.result_processor(self.dialect, d[1])
                               for t, d in zip(self.types, cursor.description, strict=True)]
        return {k: p(v) if p else v for k, p, v in zip(self.keys, self.processors, values, strict=True)}


@lru_cache(maxsize=64)
def page_sql(dialect: Dialect, sections: tuple) -> PageSQL:
    return PageSQL(dialect, sections)


def cursor_row(conn: Connection, sections: tuple, params: dict[str, Any]) -> Mapping[str, Any] | None:
    """The page statement's row by column key (None: no such unit), run on the connection's DBAPI cursor.
    SQLAlchemy's execution of the compiled, cached statement (its execution context, the result's metadata of
    37 columns, row objects) cost ~0.15 ms more a page than the driver's own on Postgres, ~0.03 ms on SQLite
    (docs/store.md). The engine's before/after_cursor_execute events still fire (statement counters,
    tracing). On any driver error the statement runs again through SQLAlchemy, which handles it its way: a
    lost connection drops the pool's connections and raises a DBAPIError with `connection_invalidated`, on
    which the page retries."""
    page = page_sql(conn.dialect, sections)
    parameters = page.parameters(params)
    try:
        dbapi_conn = conn.connection.dbapi_connection
        cursor = page.raw_cursor(dbapi_conn) if page.raw_cursor else dbapi_conn.cursor()
        try:
            conn.dispatch.before_cursor_execute(conn, cursor, page.sql, parameters, None, False)
            cursor.execute(page.sql, parameters)
            values = cursor.fetchone()
            conn.dispatch.after_cursor_execute(conn, cursor, page.sql, parameters, None, False)
            return page.row(values, cursor) if values is not None else None
        finally:
            cursor.close()
    except conn.dialect.loaded_dbapi.Error:
        row = conn.execute(page_lambda(conn.dialect.name, sections)[0], params).one_or_none()
        return row._mapping if row is not None else None


def when(value: str | datetime | None) -> datetime | None:
    """A timestamp read through JSON (SQLite's text or Postgres's ISO form) as a datetime again."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def dialect_of(db: Session | Connection) -> str:
    return db.dialect.name if isinstance(db, Connection) else db.get_bind().dialect.name
