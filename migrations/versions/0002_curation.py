"""curation: family order and seed list, study bucket range, curation events

Revision ID: 0002
Revises: 0001
"""
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The families of the paper's figure 1, in its order; editors can add more.
SEED_FAMILIES = [
    ("Region", "Content associated with a geographic region, from hemispheres to single cities."),
    ("Person", "Content associated with a specific person."),
    ("Emotion", "Facial expressions, words and other content associated with an emotion or mental state."),
    ("Religion", "Symbols, iconography, buildings and texts of a religion."),
    ("Person trait", "Gender, age and facial features such as moustaches."),
    ("Art style", "Ways an image might be drawn, rendered or photographed."),
    ("Image feature", "Features an image might contain, from objects to watermarks."),
    ("Holiday", "Names, decorations and traditional trappings of a holiday."),
    ("Fictional universe", "Characters and concepts from a fictional universe."),
    ("Brand", "Brand identities: logos, products, names."),
    ("Typographic", "Spelling-level features: prefixes, suffixes, letter groups."),
    ("Abstract concept", "Abstract concepts that fit no other family."),
    ("Counting", "Duplicates of the same person or thing, distinguished by their count."),
    ("Time", "A season, a day, a month, a year or an era."),
    ("Colour", "Objects of a given colour, and the colour's name."),
    ("Polysemantic", "Several unrelated concepts at once."),
]


def upgrade() -> None:
    with op.batch_alter_table("families") as batch:
        batch.add_column(sa.Column("position", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("act_min", sa.Float(), nullable=True))
        batch.add_column(sa.Column("act_max", sa.Float(), nullable=True))
        batch.add_column(sa.Column("std", sa.Float(), nullable=True))
        batch.add_column(sa.Column("seed", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "curation_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("unit_id", sa.Integer(), nullable=True),
        sa.Column("family", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("author", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["unit_id"], ["units.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_curation_events_unit_id", "curation_events", ["unit_id"])
    seed_families()


def seed_families() -> None:
    families = sa.table(
        "families", sa.column("name", sa.String), sa.column("description", sa.Text),
        sa.column("position", sa.Integer), sa.column("created_at", sa.DateTime(timezone=True)),
    )
    have = set(op.get_bind().scalars(sa.select(families.c.name)))
    at = datetime.now(UTC)
    rows = [{"name": name, "description": text, "position": pos, "created_at": at}
            for pos, (name, text) in enumerate(SEED_FAMILIES) if name not in have]
    if rows:
        op.bulk_insert(families, rows)


def downgrade() -> None:
    # Seeded families stay: editors may have put neurons in them.
    op.drop_index("ix_curation_events_unit_id", table_name="curation_events")
    op.drop_table("curation_events")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("seed")
        batch.drop_column("std")
        batch.drop_column("act_max")
        batch.drop_column("act_min")
    with op.batch_alter_table("families") as batch:
        batch.drop_column("position")
