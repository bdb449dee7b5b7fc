"""pause_snapshots

Paused sessions (since when, the lifetime left, the bytes kept) and snapshots."""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("seconds_left", sa.Float, nullable=True))
        batch.add_column(sa.Column("state_bytes", sa.BigInteger, nullable=True))
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_snapshots_key_id", "snapshots", ["key_id"])


def downgrade() -> None:
    op.drop_index("ix_snapshots_key_id", "snapshots")
    op.drop_table("snapshots")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("state_bytes")
        batch.drop_column("seconds_left")
        batch.drop_column("paused_at")
