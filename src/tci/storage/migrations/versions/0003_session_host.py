"""sessions.host

The host that runs a session (a Ray host's name; NULL for the single-machine server's own),
so that a restarting gateway ends only the sessions of hosts that are gone."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("host", sa.String(255)))


def downgrade() -> None:
    op.drop_column("sessions", "host")
