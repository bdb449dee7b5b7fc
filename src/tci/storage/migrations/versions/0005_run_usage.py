"""run_usage

One-shot runs per key, UTC hour (the hour they finished in) and verdict: how many, and their
summed wall seconds. Counted, not one row per run: runs come by the thousand."""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_usage",
        sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), primary_key=True),
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("verdict", sa.String(32), primary_key=True),
        sa.Column("runs", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
        sa.Column("wall_seconds", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("run_usage")
