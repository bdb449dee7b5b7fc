"""sessions.cpu_seconds

The CPU seconds a session used while a client had it (from its cgroup; NULL without cgroups
or while it is live)."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("cpu_seconds", sa.Float))


def downgrade() -> None:
    op.drop_column("sessions", "cpu_seconds")
