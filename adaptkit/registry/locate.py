"""Where a home's registry lives (database URL, blob store) and opening or upgrading it."""

from __future__ import annotations

import os
from pathlib import Path

from adaptkit.home import BLOBS_ENV_VAR, Home
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
    root, remote = blob_places(home, blobs)
    return Registry(url, root, upgrade_hint=upgrade_command(home, url), remote_blobs=remote)


def blob_places(home: Home, blobs: str | os.PathLike[str] | None = None) -> tuple[Path, str | None]:
    """(local blob directory, object store URL or None): an ``s3://...`` store is shared
    by every machine, and the home's adapters folder holds this machine's copies."""
    chosen = blobs if blobs is not None else os.environ.get(BLOBS_ENV_VAR)
    if chosen and "://" in str(chosen):
        return home.adapters_dir, str(chosen)
    return home.blob_root(blobs), None


def upgrade_registry(
    home: Home, *, db: str | None = None, blobs: str | os.PathLike[str] | None = None
) -> tuple[str | None, str]:
    """Migrate the registry's schema to the newest revision: (before, after)."""
    engine = make_engine(home.database_url(db))
    try:
        # The first release's blobs were always local: their config digests come from there.
        return upgrade(write_engine(engine), blob_places(home, blobs)[0])
    finally:
        engine.dispose()


def registry_revision(home: Home, *, db: str | None = None) -> tuple[str | None, str]:
    """(the database's schema revision, the newest this adaptkit knows)."""
    engine = make_engine(home.database_url(db))
    try:
        return current(engine), head()
    finally:
        engine.dispose()
