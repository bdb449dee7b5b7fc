"""Sessions record the CPU seconds used while a client had them (from the session's cgroup;
NULL without cgroups or while live)."""

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
