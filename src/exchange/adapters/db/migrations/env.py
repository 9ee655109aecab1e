"""Alembic environment: runs on the connection handed over by ``database.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from exchange.adapters.db.tables import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is None:  # `alembic` command line, e.g. for `revision --autogenerate`
    engine = create_engine(str(config.get_main_option("sqlalchemy.url")))
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
