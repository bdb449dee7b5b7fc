"""session_reservations

A place in a key's TCI_MAX_SESSIONS_PER_KEY, held while its session starts (before the
session has an id): every gateway on the database counts these with the key's live
sessions, so that the quota holds across the cluster, not per gateway."""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "session_reservations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_session_reservations_key_id", "session_reservations", ["key_id"])


def downgrade() -> None:
    op.drop_index("ix_session_reservations_key_id", "session_reservations")
    op.drop_table("session_reservations")
