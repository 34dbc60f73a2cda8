"""models.load: the settings the worker built a model with (QuickGELU, preprocessing, image size, config dirs)

Revision ID: 0005_models_load
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_models_load"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("load", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("load")
