"""directions (curated: saved concept directions) and label_scores (worker: a label's faithfulness)

Revision ID: 0005_concepts
Revises: 0005_models_load
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_concepts"
down_revision = "0005_models_load"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "directions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("layer", sa.String(128), nullable=False),
        sa.Column("query", sa.String(500), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("model_id", "layer", "query"),
    )
    op.create_table(
        "label_scores",
        sa.Column("label_id", sa.Integer(), sa.ForeignKey("labels.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),  # none: no held-out image is the concept's
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="SET NULL"), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("label_scores")
    op.drop_table("directions")
