"""Registry test support: a database per test on SQLite or PostgreSQL, staged adapters
made of plain bytes (the registry never parses them), and the invariant checker the
concurrency and crash tests run after every interleaving or kill."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select

from adaptkit.registry import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Registry, sha256_file
from adaptkit.registry.schema import AdapterVersionRow, UserRow

POSTGRES_ADMIN = os.environ.get(
    "ADAPTKIT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards; yields its URL."""
    import psycopg

    name = f"adaptkit_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = POSTGRES_ADMIN.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        raise RuntimeError(
            f"PostgreSQL at {admin} is not reachable ({error}); start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
            "(.ci/run does) or point ADAPTKIT_TEST_POSTGRES at one"
        ) from error
    base = POSTGRES_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stage_bytes(registry: Registry, user: str, payload: bytes, config: dict | None = None) -> Path:
    """A staged adapter directory inside the store (as ``Registry.staging`` makes one)."""
    staged = registry.blobs.root / ".staging" / f"test-{user}-{uuid.uuid4().hex}"
    staged.mkdir(parents=True)
    (staged / ADAPTER_WEIGHTS).write_bytes(payload)
    (staged / ADAPTER_CONFIG).write_text(json.dumps(config or {"r": 8, "lora_alpha": 16}))
    return staged


def publish_bytes(registry: Registry, user: str, payload: bytes, **kwargs):
    return registry.publish(
        user,
        stage_bytes(registry, user, payload),
        method="sft",
        base_model="tiny",
        data_digest="d" * 64,
        metrics={},
        config={},
        **kwargs,
    )


def invariant_violations(registry: Registry) -> list[str]:
    """Everything wrong with the registry's state: a row without its blob, a blob whose
    hash differs from its row, two versions with one number, more than one active
    version, a user whose active version is not marked active."""
    problems: list[str] = []
    with registry.session() as session:
        for row in session.scalars(select(AdapterVersionRow)):
            where = f"{row.user_id} v{row.number} ({row.blob_path})"
            path = registry.blobs.root / row.blob_path
            for name, expected in (
                (ADAPTER_WEIGHTS, row.blob_sha256),
                (ADAPTER_CONFIG, row.config_sha256),
            ):
                if not (path / name).is_file():
                    problems.append(f"{where}: {name} missing")
                elif sha256_file(path / name) != expected:
                    problems.append(f"{where}: {name} differs from its recorded sha256")
        duplicates = session.execute(
            select(AdapterVersionRow.user_id, AdapterVersionRow.number, func.count())
            .group_by(AdapterVersionRow.user_id, AdapterVersionRow.number)
            .having(func.count() > 1)
        ).all()
        problems += [f"{user} v{number}: {count} rows" for user, number, count in duplicates]
        for user in session.scalars(select(UserRow)):
            active = session.scalars(
                select(AdapterVersionRow.id).where(
                    AdapterVersionRow.user_id == user.id, AdapterVersionRow.status == "active"
                )
            ).all()
            if len(active) > 1:
                problems.append(f"{user.id}: {len(active)} versions marked active")
            if user.active_version_id is not None and active != [user.active_version_id]:
                problems.append(f"{user.id}: active version {user.active_version_id} vs {active}")
    return problems
