"""Versioned schema of the registry's database (Alembic revisions shipped in the package).

Opening a registry never changes an existing schema: a fresh, empty database is
created at the newest revision (under a lock, so processes opening it at once do
not race); one at an older revision, or written by the first release (tables and no
version stamp), is refused with the command that upgrades it.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from adaptkit.errors import AdaptkitError

FIRST_RELEASE = "0001"  # the schema the first release made with create_all
_LOCK_KEY = 0x61646B74  # PostgreSQL advisory lock id for migrations ("adkt")


class SchemaVersionError(AdaptkitError):
    """The database's schema is not the one this adaptkit reads; says what to run."""

    exit_code = 2


def alembic_config(connection: Connection, blob_root: Path | None) -> Config:
    config = Config()
    config.set_main_option("script_location", "adaptkit.registry:migrations")
    config.attributes["connection"] = connection
    config.attributes["blob_root"] = blob_root
    return config


def head() -> str:
    return ScriptDirectory.from_config(alembic_config(None, None)).get_current_head()


def _revision(connection: Connection) -> str | None:
    """The stamped revision; FIRST_RELEASE for an unstamped first-release schema;
    None for an empty database."""
    revision = MigrationContext.configure(connection).get_current_revision()
    if revision is None and inspect(connection).has_table("users"):
        return FIRST_RELEASE
    return revision


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return _revision(connection)


def _lock(connection: Connection) -> None:
    # SQLite: the write engine's BEGIN IMMEDIATE already holds the database's write lock.
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def upgrade(write_engine: Engine, blob_root: Path | None) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; (revision before, revision after)."""
    with write_engine.begin() as connection:
        _lock(connection)
        before = _revision(connection)
        config = alembic_config(connection, blob_root)
        if (
            before == FIRST_RELEASE
            and MigrationContext.configure(connection).get_current_revision() is None
        ):
            command.stamp(config, FIRST_RELEASE)
        command.upgrade(config, "head")
        return before, _revision(connection)


def open_schema(engine: Engine, write_engine: Engine, *, upgrade_hint: str) -> None:
    """Create the schema of an empty database; refuse one that is not at the newest
    revision, naming ``upgrade_hint`` (the command that upgrades it)."""
    newest = head()
    found = current(engine)
    if found is None:
        with write_engine.begin() as connection:
            _lock(connection)
            # Another process may have created it while this one waited for the lock.
            if _revision(connection) is None:
                command.upgrade(alembic_config(connection, None), "head")
        found = current(engine)
    if found == newest:
        return
    scripts = ScriptDirectory.from_config(alembic_config(None, None))
    known = {script.revision for script in scripts.walk_revisions()}
    if found not in known:
        raise SchemaVersionError(
            f"the registry's schema is at revision {found!r}, which this adaptkit does not "
            f"know (its newest is {newest!r}): it was written by a newer adaptkit; upgrade "
            "adaptkit"
        )
    raise SchemaVersionError(
        f"the registry's schema is older (revision {found}, this adaptkit reads {newest}): "
        f"run `{upgrade_hint}` (back up the database first); nothing was changed"
    )
