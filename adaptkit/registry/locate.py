"""Where a home's registry lives (database URL, blob store) and opening or upgrading it."""

from __future__ import annotations

import os
from pathlib import Path

from adaptkit.home import Home
from adaptkit.registry.database import make_engine, safe_url, write_engine
from adaptkit.registry.migrate import current, head, upgrade
from adaptkit.registry.registry import Registry


def upgrade_command(home: Home, url: str) -> str:
    """The command that upgrades this registry, as a person would type it."""
    command = f"adaptkit db upgrade --home {home.root}"
    return command if url == home.registry_url else f"{command} --db {safe_url(url)}"


def open_registry(
    home: Home, *, db: str | None = None, blobs: str | os.PathLike[str] | None = None
) -> Registry:
    """The registry of ``home`` (``db`` / ``blobs`` override where it lives)."""
    url = home.database_url(db)
    return Registry(url, home.blob_root(blobs), upgrade_hint=upgrade_command(home, url))


def upgrade_registry(
    home: Home, *, db: str | None = None, blobs: str | os.PathLike[str] | None = None
) -> tuple[str | None, str]:
    """Migrate the registry's schema to the newest revision: (before, after)."""
    engine = make_engine(home.database_url(db))
    try:
        return upgrade(write_engine(engine), Path(home.blob_root(blobs)))
    finally:
        engine.dispose()


def registry_revision(home: Home, *, db: str | None = None) -> tuple[str | None, str]:
    """(the database's schema revision, the newest this adaptkit knows)."""
    engine = make_engine(home.database_url(db))
    try:
        return current(engine), head()
    finally:
        engine.dispose()
