"""Alembic's entry point. tci runs it programmatically (tci.storage.schema): the connection
to migrate comes in config.attributes, inside the caller's transaction."""

from alembic import context

from tci.storage.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
