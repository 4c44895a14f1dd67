"""Alembic environment: adaptkit runs migrations on a connection it already holds (in a
transaction, under the registry's migration lock), never from an alembic.ini."""

from alembic import context

from adaptkit.registry.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
