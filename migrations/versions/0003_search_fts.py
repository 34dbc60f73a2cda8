"""search: full-text indexes over unit_text (SQLite FTS5 kept in sync by triggers; Postgres GIN over tsvector)

Revision ID: 0003
Revises: 0002
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# SQLite: an external-content FTS5 table over unit_text (no second copy of the text), kept in step by
# triggers. Rows replaced with INSERT OR REPLACE skip the delete trigger (SQLite fires it only with
# recursive_triggers on), so writers use INSERT … ON CONFLICT DO UPDATE or plain UPDATE.
SQLITE_UP = [
    "CREATE VIRTUAL TABLE unit_text_fts USING fts5(document, content='unit_text', content_rowid='unit_id', "
    "tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER unit_text_fts_ai AFTER INSERT ON unit_text BEGIN "
    "INSERT INTO unit_text_fts(rowid, document) VALUES (new.unit_id, new.document); END",
    "CREATE TRIGGER unit_text_fts_ad AFTER DELETE ON unit_text BEGIN "
    "INSERT INTO unit_text_fts(unit_text_fts, rowid, document) VALUES ('delete', old.unit_id, old.document); END",
    "CREATE TRIGGER unit_text_fts_au AFTER UPDATE ON unit_text BEGIN "
    "INSERT INTO unit_text_fts(unit_text_fts, rowid, document) VALUES ('delete', old.unit_id, old.document); "
    "INSERT INTO unit_text_fts(rowid, document) VALUES (new.unit_id, new.document); END",
    "INSERT INTO unit_text_fts(unit_text_fts) VALUES ('rebuild')",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS unit_text_fts_au",
    "DROP TRIGGER IF EXISTS unit_text_fts_ad",
    "DROP TRIGGER IF EXISTS unit_text_fts_ai",
    "DROP TABLE IF EXISTS unit_text_fts",
]
# Postgres: an expression index; app/search.py queries the same expression so the planner uses it.
PG_UP = ["CREATE INDEX ix_unit_text_tsv ON unit_text USING gin (to_tsvector('english', document))"]
PG_DOWN = ["DROP INDEX IF EXISTS ix_unit_text_tsv"]


def _run(statements: list[str]) -> None:
    for sql in statements:
        op.execute(sql)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        _run(SQLITE_UP)
    elif dialect == "postgresql":
        _run(PG_UP)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        _run(SQLITE_DOWN)
    elif dialect == "postgresql":
        _run(PG_DOWN)
