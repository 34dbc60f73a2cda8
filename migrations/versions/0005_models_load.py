"""models.load: the settings the worker built a model with (QuickGELU, preprocessing, image size, config dirs)

Revision ID: 0005_models_load
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005_models_load"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        # JSONB on Postgres: plain json has no equality operator, and pages SELECT DISTINCT models
        batch.add_column(sa.Column("load", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False,
                                   server_default=sa.text("'{}'")))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("load")
