"""blobs goes: its one user, the examples stage's `--shard` states, is retired (partial states live in files
under the data folder, worker/compute/partials.py). Rows still there are the states of shard runs that never
finished; they cannot be resumed by the range path, so they are dropped with the table. Downgrade creates
the table again, empty.

Revision ID: 0008_drop_blobs
Revises: 5e1f0c2a9b47 (0007_unit_heatmaps.py)
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_drop_blobs"
down_revision = "5e1f0c2a9b47"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("blobs")


def downgrade() -> None:
    op.create_table("blobs",
                    sa.Column("key", sa.String(length=256), nullable=False),
                    sa.Column("data", sa.LargeBinary(), nullable=False),
                    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint("key"))
