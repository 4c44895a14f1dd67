"""Bearer API keys: made once (shown once), stored as their sha256 in the registry database.

An ``app`` key reaches the users its pattern matches (a glob: ``*``, ``team-*``);
an ``admin`` key reaches every user and the admin endpoints. Keys are 32 random
bytes, so a plain sha256 (no salt, no slow hash) cannot be reversed or guessed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from adaptkit.errors import InputError
from adaptkit.registry import Registry
from adaptkit.registry.schema import ApiKeyRow, utc_now

SCOPES = ("app", "admin")
KEY_PREFIX = "ak-"


@dataclass(frozen=True)
class ApiKey:
    id: int
    prefix: str
    scope: str
    users: str
    name: str
    created_at: datetime
    revoked: bool

    def reaches(self, user: str) -> bool:
        return self.scope == "admin" or fnmatch.fnmatchcase(user, self.users)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        row.id,
        row.prefix,
        row.scope,
        row.users,
        row.name,
        row.created_at,
        row.revoked_at is not None,
    )


class ApiKeys:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def create(self, scope: str, *, users: str = "*", name: str = "") -> tuple[str, ApiKey]:
        """A new key (the only time it is seen in clear) and its stored description."""
        problems = []
        if scope not in SCOPES:
            problems.append(f"--scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if not users or len(users) > 256:
            problems.append(f"--users must be a glob of 1-256 characters, got {users!r}")
        if len(name) > 128:
            problems.append("--name must be at most 128 characters")
        if problems:
            raise InputError("; ".join(problems))
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.registry.transaction() as session:
            row = ApiKeyRow(
                digest=_digest(key), prefix=key[:10], scope=scope, users=users, name=name
            )
            session.add(row)
            session.flush()
            return key, _key(row)

    def check(self, key: str) -> ApiKey | None:
        """The key's description if it exists and is not revoked, else None."""
        with self.registry.session() as session:
            row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.digest == _digest(key)))
            if row is None or row.revoked_at is not None:
                return None
            return _key(row)

    def list(self) -> list[ApiKey]:
        with self.registry.session() as session:
            return [_key(row) for row in session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))]

    def revoke(self, key_id: int) -> ApiKey:
        with self.registry.transaction() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None:
                raise InputError(f"no API key with id {key_id}; see `adaptkit keys list`")
            row.revoked_at = row.revoked_at or utc_now()
            session.flush()
            return _key(row)
