"""The registry: every adapter version of every user, with lineage and one active version.

Publishing writes the blob fully (fsynced, renamed into place) *before* the row
is committed; if the commit fails the blob is removed again, so a row never
points at a missing or partial blob.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from adaptkit.errors import BlobIntegrityError, UnknownUserError, UnknownVersionError
from adaptkit.registry.blobs import ADAPTER_WEIGHTS, BlobStore, read_verified
from adaptkit.registry.schema import AdapterVersionRow, Base, UserRow
from adaptkit.user_ids import validate_user_id

ACTIVE, CANDIDATE, RETIRED = "active", "candidate", "retired"
ROLLED_BACK = "rolled-back"  # was active, then failed a later check


@dataclass(frozen=True)
class VersionInfo:
    id: int
    user_id: str
    number: int
    parent_number: int | None
    created_at: datetime
    method: str
    base_model: str
    data_digest: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    blob_sha256: str
    blob_path: Path
    status: str
    status_reason: str


@dataclass(frozen=True)
class UserInfo:
    id: str
    created_at: datetime
    active_version: int | None
    version_count: int


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def make_engine(url: str) -> Engine:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Registry:
    """Every user's adapter versions: SQL rows (the truth) and their immutable blobs.

    Other rooms that keep rows in the same database (the feedback log) use
    ``session`` / ``transaction``; new adapters are saved into ``staging`` and
    handed to ``publish``; a version's weights are read, verified, with
    ``read_weights``.
    """

    def __init__(self, url: str, blob_root: Path) -> None:
        self.engine = make_engine(url)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.blobs = BlobStore(blob_root)

    # -- the database, for rows that live beside the versions ---------------------------

    def session(self) -> Session:
        """A read session (a context manager; nothing is committed)."""
        return self._sessions()

    def transaction(self) -> AbstractContextManager[Session]:
        """A session whose block is one transaction: committed on exit, rolled back on error."""
        return self._sessions.begin()

    # -- blobs ---------------------------------------------------------------------------

    def staging(self, user_id: str) -> AbstractContextManager[Path]:
        """A fresh directory to save a new adapter of ``user_id`` into before ``publish``;
        removed when the block ends (``publish`` moves the adapter out of it)."""
        validate_user_id(user_id)
        return self.blobs.staging(user_id)

    def read_weights(self, version: VersionInfo) -> bytes:
        """The version's ``adapter_model.safetensors``, checked against its sha256.

        Raises ``BlobIntegrityError`` (naming the user, version and file) when the blob
        is missing or changed."""
        return read_verified(
            version.blob_path / ADAPTER_WEIGHTS,
            version.blob_sha256,
            f"user {version.user_id!r} v{version.number}",
        )

    def blob_problem(self, version: VersionInfo) -> str | None:
        """Why the version's blob cannot be served (missing, changed), or None."""
        try:
            self.read_weights(version)
        except BlobIntegrityError as error:
            return str(error)
        return None

    # -- reading ---------------------------------------------------------------------

    def _info(self, session: Session, row: AdapterVersionRow) -> VersionInfo:
        parent = session.get(AdapterVersionRow, row.parent_id) if row.parent_id else None
        return VersionInfo(
            id=row.id,
            user_id=row.user_id,
            number=row.number,
            parent_number=parent.number if parent else None,
            created_at=row.created_at,
            method=row.method,
            base_model=row.base_model,
            data_digest=row.data_digest,
            metrics=dict(row.metrics or {}),
            config=dict(row.config or {}),
            blob_sha256=row.blob_sha256,
            blob_path=self.blobs.root / row.blob_path,
            status=row.status,
            status_reason=row.status_reason,
        )

    def _user(self, session: Session, user_id: str) -> UserRow:
        validate_user_id(user_id)
        row = session.get(UserRow, user_id)
        if row is None:
            known = session.scalars(select(UserRow.id).order_by(UserRow.id).limit(10)).all()
            hint = f" Known users: {', '.join(known)}." if known else " The registry has no users."
            raise UnknownUserError(
                f"unknown user {user_id!r}.{hint} Train one with "
                f"`adaptkit train --user {user_id} --log FILE`."
            )
        return row

    def users(self) -> list[UserInfo]:
        with self._sessions() as session:
            counts = dict(
                session.execute(
                    select(AdapterVersionRow.user_id, func.count()).group_by(
                        AdapterVersionRow.user_id
                    )
                ).all()
            )
            result = []
            for row in session.scalars(select(UserRow).order_by(UserRow.id)):
                active = session.get(AdapterVersionRow, row.active_version_id)
                result.append(
                    UserInfo(
                        row.id,
                        row.created_at,
                        active.number if active else None,
                        counts.get(row.id, 0),
                    )
                )
            return result

    def versions(self, user_id: str) -> list[VersionInfo]:
        with self._sessions() as session:
            self._user(session, user_id)
            rows = session.scalars(
                select(AdapterVersionRow)
                .where(AdapterVersionRow.user_id == user_id)
                .order_by(AdapterVersionRow.number)
            )
            return [self._info(session, row) for row in rows]

    def active_version(self, user_id: str) -> VersionInfo | None:
        """The serving version, None if the user exists but has none; unknown user raises."""
        with self._sessions() as session:
            user = self._user(session, user_id)
            if user.active_version_id is None:
                return None
            return self._info(session, session.get(AdapterVersionRow, user.active_version_id))

    def version(self, user_id: str, number: int) -> VersionInfo:
        with self._sessions() as session:
            self._user(session, user_id)
            row = self._version_row(session, user_id, number)
            return self._info(session, row)

    def _version_row(self, session: Session, user_id: str, number: int) -> AdapterVersionRow:
        row = session.scalar(
            select(AdapterVersionRow).where(
                AdapterVersionRow.user_id == user_id, AdapterVersionRow.number == number
            )
        )
        if row is None:
            numbers = session.scalars(
                select(AdapterVersionRow.number).where(AdapterVersionRow.user_id == user_id)
            ).all()
            raise UnknownVersionError(
                f"user {user_id!r} has no version {number}; versions: "
                f"{', '.join(map(str, sorted(numbers))) or 'none'} "
                f"(see `adaptkit versions {user_id}`)"
            )
        return row

    # -- writing ---------------------------------------------------------------------

    def ensure_user(self, user_id: str) -> None:
        validate_user_id(user_id)
        with self._sessions.begin() as session:
            if session.get(UserRow, user_id) is None:
                session.add(UserRow(id=user_id))

    def publish(
        self,
        user_id: str,
        staged: Path,
        *,
        method: str,
        base_model: str,
        data_digest: str,
        metrics: dict[str, Any],
        config: dict[str, Any],
        parent: int | None = None,
        activate: bool = True,
        status_reason: str = "",
        in_transaction: Callable[[Session, AdapterVersionRow], None] | None = None,
    ) -> VersionInfo:
        """Store the staged adapter as the user's next version (and make it active).

        A new user's row is created in the same transaction as its first version,
        so a failed publish leaves nothing behind. ``in_transaction(session, row)``
        runs inside that commit: the online trainer marks the feedback events it
        trained on as consumed there, so a crash leaves both or neither.
        """
        validate_user_id(user_id)
        with self._sessions() as session:
            last = session.scalar(
                select(func.max(AdapterVersionRow.number)).where(
                    AdapterVersionRow.user_id == user_id
                )
            )
            number = (last or 0) + 1
            if parent is None:
                user = session.get(UserRow, user_id)
                parent_row_id = user.active_version_id if user else None
            else:
                self._user(session, user_id)
                parent_row_id = self._version_row(session, user_id, parent).id
        path, sha256 = self.blobs.put(user_id, number, staged)
        try:
            with self._sessions.begin() as session:
                if session.get(UserRow, user_id) is None:
                    session.add(UserRow(id=user_id))
                    session.flush()
                row = AdapterVersionRow(
                    user_id=user_id,
                    number=number,
                    parent_id=parent_row_id,
                    method=method,
                    base_model=base_model,
                    data_digest=data_digest,
                    metrics=metrics,
                    config=config,
                    blob_sha256=sha256,
                    blob_path=str(path.relative_to(self.blobs.root)),
                    status=ACTIVE if activate else CANDIDATE,
                    status_reason=status_reason,
                )
                session.add(row)
                session.flush()
                if activate:
                    self._make_active(session, user_id, row)
                if in_transaction is not None:
                    in_transaction(session, row)
            with self._sessions() as session:
                return self._info(session, session.get(AdapterVersionRow, row.id))
        except BaseException:
            # The row was not committed: the blob must not outlive it.
            self.blobs.remove(path)
            raise

    def _make_active(self, session: Session, user_id: str, row: AdapterVersionRow) -> None:
        user = session.get(UserRow, user_id)
        if user.active_version_id is not None and user.active_version_id != row.id:
            previous = session.get(AdapterVersionRow, user.active_version_id)
            previous.status = RETIRED
        row.status = ACTIVE
        user.active_version_id = row.id

    def activate(self, user_id: str, number: int) -> VersionInfo:
        """Make an existing version the serving one (rollback is activating an older one)."""
        with self._sessions.begin() as session:
            self._user(session, user_id)
            row = self._version_row(session, user_id, number)
            self._make_active(session, user_id, row)
        return self.version(user_id, number)

    def rollback(self, user_id: str, number: int, *, to: int, reason: str) -> VersionInfo:
        """In one transaction: mark ``number`` rolled back with ``reason`` and activate ``to``."""
        with self._sessions.begin() as session:
            self._user(session, user_id)
            bad = self._version_row(session, user_id, number)
            good = self._version_row(session, user_id, to)
            self._make_active(session, user_id, good)
            bad.status = ROLLED_BACK
            bad.status_reason = reason
        return self.version(user_id, to)

    def set_status_reason(self, user_id: str, number: int, reason: str) -> VersionInfo:
        """Record why a version is where it is (e.g. the gate's verdict), status unchanged."""
        with self._sessions.begin() as session:
            self._user(session, user_id)
            self._version_row(session, user_id, number).status_reason = reason
        return self.version(user_id, number)
