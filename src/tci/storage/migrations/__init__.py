"""The store's schema as Alembic migrations, run by tci.storage.schema when a store opens.

A new revision: `alembic -x url=sqlite:///tmp/x.db ...` is not needed; write the file in
versions/ by hand (script.py.mako is the template) with the next number as its revision and
the previous head as down_revision, then run the store's tests (both databases)."""
