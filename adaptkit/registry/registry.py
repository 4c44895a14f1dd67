"""The registry: every adapter version of every user, with lineage and one active version.

Publishing writes the blob first (content-addressed, fsynced, renamed into place, never
overwritten), then takes the next number and commits the row in one write transaction
that holds the user's lock; if that commit does not happen, a blob this call created
and no row refers to is removed again. So a committed row always has its blob, and no
publisher can replace or delete another's.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Row, bindparam, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from adaptkit.errors import BlobIntegrityError, InputError, UnknownVersionError
from adaptkit.registry.blobs import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    ORPHAN_GRACE_SECONDS,
    BlobStore,
    RemoteBlobs,
    read_verified,
)
from adaptkit.registry.database import (
    begin_write,
    check_new_user_id,
    insert_ignore,
    lock_user,
    make_engine,
    run_write,
    unknown_user,
    write_engine,
)
from adaptkit.registry.migrate import open_schema
from adaptkit.registry.schema import (
    AdapterVersionRow,
    AuditRow,
    FeedbackEventRow,
    LeaseRow,
    RequestRow,
    ServedCompletionRow,
    UserRow,
    utc_now,
)
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
    blob_sha256: str  # of the weights
    blob_path: Path
    status: str
    status_reason: str
    config_sha256: str | None = None  # of adapter_config.json
    pinned: bool = False


@dataclass(frozen=True)
class UserInfo:
    id: str
    created_at: datetime
    active_version: int | None
    version_count: int


@dataclass(frozen=True)
class ErasureReport:
    """What ``Registry.erase`` removed (counts only: the audit row holds the same)."""

    user_id: str
    actor: str
    at: datetime
    versions: int
    feedback_events: int
    requests: int
    blob_dirs: int
    audit_id: int


_versions = AdapterVersionRow.__table__
_parents = _versions.alias("parent")
# The serving version of :user_id with its parent's number; one row per known user
# (all NULL but ``known`` when the user has no active version).
_ACTIVE_QUERY = (
    select(
        UserRow.__table__.c.id.label("known"),
        *[column for column in _versions.c if column.name != "parent_id"],
        _parents.c.number.label("parent_number"),
    )
    .select_from(UserRow.__table__)
    .outerjoin(_versions, _versions.c.id == UserRow.__table__.c.active_version_id)
    .outerjoin(_parents, _parents.c.id == _versions.c.parent_id)
    .where(UserRow.__table__.c.id == bindparam("user_id"))
)


@dataclass(frozen=True)
class GcReport:
    keep: int
    deleted: dict[str, list[int]]  # user -> version numbers deleted


class Registry:
    """Every user's adapter versions: SQL rows (the truth) and their immutable blobs.

    ``url`` is a SQLAlchemy URL (``sqlite:///PATH`` or ``postgresql+psycopg://...``).
    Other rooms that keep rows in the same database (the feedback log) use
    ``session`` / ``transaction``; new adapters are saved into ``staging`` and
    handed to ``publish``; a version's files are read, verified, with
    ``read_weights`` / ``read_config``.
    """

    def __init__(
        self,
        url: str,
        blob_root: Path,
        *,
        upgrade_hint: str | None = None,
        remote_blobs: str | None = None,
    ) -> None:
        """``remote_blobs``: an object store URL (``s3://bucket/prefix``) every machine
        shares; ``blob_root`` is then this machine's verified copy of the blobs it used."""
        self.engine = make_engine(url)
        self._write_engine = write_engine(self.engine)
        open_schema(
            self.engine,
            self._write_engine,
            upgrade_hint=upgrade_hint or f"adaptkit db upgrade --db {url}",
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(self._write_engine, expire_on_commit=False)
        remote = RemoteBlobs(remote_blobs) if remote_blobs else None
        self.blobs = BlobStore(Path(blob_root), remote).ensure()

    def close(self) -> None:
        self.engine.dispose()

    # -- the database, for rows that live beside the versions ---------------------------

    def session(self) -> Session:
        """A read session (a context manager; nothing is committed)."""
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write transaction: committed on exit, rolled back on error. It holds the
        write lock from its start (SQLite), which it waits for with a bound."""
        session = begin_write(self._writes, what="write")
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def write(self, body: Callable[[Session], Any], *, what: str) -> Any:
        """``body(session)`` in one write transaction, rerun (bounded) while the database
        is locked: for writes whose body can safely run again."""
        return run_write(self._writes, body, what=what)

    # -- blobs ---------------------------------------------------------------------------

    def staging(self, user_id: str) -> AbstractContextManager[Path]:
        """A fresh directory to save a new adapter of ``user_id`` into before ``publish``;
        removed when the block ends (``publish`` moves the adapter out of it)."""
        validate_user_id(user_id)
        return self.blobs.staging(user_id)

    def read_weights(self, version: VersionInfo) -> bytes:
        """The version's ``adapter_model.safetensors``, checked against its sha256 (and
        its config too: a version is both). Raises ``BlobIntegrityError`` (naming the
        user, version and file) when either is missing or changed."""
        self.read_config(version)
        return read_verified(
            version.blob_path / ADAPTER_WEIGHTS, version.blob_sha256, _label(version)
        )

    def read_config(self, version: VersionInfo) -> bytes:
        """The version's ``adapter_config.json`` bytes, checked against its sha256."""
        self.fetch(version)
        if version.config_sha256 is None:
            raise BlobIntegrityError(
                f"{_label(version)}: its adapter_config.json has no recorded sha256 (its "
                "blob was missing when the registry was upgraded); run `adaptkit fsck`"
            )
        return read_verified(
            version.blob_path / ADAPTER_CONFIG, version.config_sha256, _label(version)
        )

    def fetch(self, version: VersionInfo) -> VersionInfo:
        """With a shared object store: bring the version's blob to this machine (checked
        against its digests before it is moved into place); a no-op otherwise."""
        self.blobs.ensure_local(
            self.blobs.relative(version.blob_path), version.blob_sha256, version.config_sha256
        )
        return version

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
        return self._row_info(row, parent.number if parent else None)

    def _row_info(
        self, row: AdapterVersionRow | Row[Any], parent_number: int | None
    ) -> VersionInfo:
        return VersionInfo(
            id=row.id,
            user_id=row.user_id,
            number=row.number,
            parent_number=parent_number,
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
            config_sha256=row.config_sha256,
            pinned=bool(row.pinned),
        )

    def _user(self, session: Session, user_id: str) -> UserRow:
        validate_user_id(user_id)
        row = session.get(UserRow, user_id)
        if row is None:
            raise unknown_user(session, user_id)
        return row

    def _locked_user(self, session: Session, user_id: str, *, create: bool = False) -> UserRow:
        validate_user_id(user_id)
        row = lock_user(session, user_id, create=create)
        if row is None:
            raise unknown_user(session, user_id)
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
            actives = dict(
                session.execute(
                    select(UserRow.id, AdapterVersionRow.number).join(
                        AdapterVersionRow, AdapterVersionRow.id == UserRow.active_version_id
                    )
                ).all()
            )
            return [
                UserInfo(row.id, row.created_at, actives.get(row.id), counts.get(row.id, 0))
                for row in session.scalars(select(UserRow).order_by(UserRow.id))
            ]

    def versions(self, user_id: str) -> list[VersionInfo]:
        with self._sessions() as session:
            self._user(session, user_id)
            rows = session.scalars(
                select(AdapterVersionRow)
                .where(AdapterVersionRow.user_id == user_id)
                .order_by(AdapterVersionRow.number)
            ).all()
            # A parent is always a version of the same user: no query per row.
            numbers = {row.id: row.number for row in rows}
            return [self._row_info(row, numbers.get(row.parent_id)) for row in rows]

    def active_version(self, user_id: str) -> VersionInfo | None:
        """The serving version, None if the user exists but has none; unknown user raises."""
        validate_user_id(user_id)
        # One round trip through Core (no ORM session): every request pays for this.
        with self.engine.connect() as connection:
            found = connection.execute(_ACTIVE_QUERY, {"user_id": user_id}).first()
        if found is None:
            with self._sessions() as session:
                raise unknown_user(session, user_id)
        if found.id is None:
            return None
        # The Core row carries the same names as the ORM row (parent_number joined in).
        return self.fetch(self._row_info(found, found.parent_number))

    def version(self, user_id: str, number: int) -> VersionInfo:
        with self._sessions() as session:
            self._user(session, user_id)
            row = self._version_row(session, user_id, number)
            return self.fetch(self._info(session, row))

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

    def _by_id(self, row_id: int) -> VersionInfo:
        with self._sessions() as session:
            return self._info(session, session.get(AdapterVersionRow, row_id))

    # -- writing ---------------------------------------------------------------------

    def ensure_user(self, user_id: str) -> None:
        validate_user_id(user_id)
        if self.has_user(user_id):
            return
        self.write(lambda s: lock_user(s, user_id, create=True), what=f"add user {user_id!r}")

    def has_user(self, user_id: str) -> bool:
        with self._sessions() as session:
            return session.get(UserRow, user_id) is not None

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

        The number is taken and the row written in one transaction holding the user's
        lock, so concurrent publishers get distinct numbers. A new user's row is created
        in that transaction too, so a failed publish leaves nothing behind.
        ``in_transaction(session, row)`` runs inside that commit (it may run again when
        the database was locked): the online trainer marks the feedback events it
        trained on as consumed there, so a crash leaves both or neither.
        """
        validate_user_id(user_id)
        with self._sessions() as session:
            # Before any blob is written (checked again under the lock below).
            check_new_user_id(session, user_id)
        stored = self.blobs.put(user_id, staged)
        relative = self.blobs.relative(stored.path)

        def write(session: Session) -> int:
            user = self._locked_user(session, user_id, create=parent is None)
            if parent is None:
                parent_row_id = user.active_version_id
            else:
                parent_row_id = self._version_row(session, user_id, parent).id
            last = session.scalar(
                select(func.max(AdapterVersionRow.number)).where(
                    AdapterVersionRow.user_id == user_id
                )
            )
            row = AdapterVersionRow(
                user_id=user_id,
                number=(last or 0) + 1,
                parent_id=parent_row_id,
                method=method,
                base_model=base_model,
                data_digest=data_digest,
                metrics=metrics,
                config=config,
                blob_sha256=stored.weights_sha256,
                config_sha256=stored.config_sha256,
                blob_path=relative,
                status=CANDIDATE,
                status_reason=status_reason,
            )
            session.add(row)
            session.flush()
            if activate:
                self._make_active(session, user, row)
            if in_transaction is not None:
                in_transaction(session, row)
            return row.id

        try:
            row_id = self.write(write, what=f"publish a version of {user_id!r}")
        except BaseException:
            # Only what this call created, and only when no committed row refers to it
            # (the commit may have happened before an interrupt reached this line).
            if stored.created and not self._blob_referenced(relative):
                self.blobs.remove(stored.path)
            raise
        return self._by_id(row_id)

    def _blob_referenced(self, relative: str) -> bool:
        with self._sessions() as session:
            return (
                session.scalar(select(func.count()).where(AdapterVersionRow.blob_path == relative))
                > 0
            )

    def _make_active(self, session: Session, user: UserRow, row: AdapterVersionRow) -> None:
        # Every other active row of the user retires, not only the one the user row
        # names: the invariant "at most one active" holds whatever came before.
        session.execute(
            update(AdapterVersionRow)
            .where(
                AdapterVersionRow.user_id == user.id,
                AdapterVersionRow.status == ACTIVE,
                AdapterVersionRow.id != row.id,
            )
            .values(status=RETIRED)
            .execution_options(synchronize_session=False)
        )
        row.status = ACTIVE
        user.active_version_id = row.id

    def activate(self, user_id: str, number: int) -> VersionInfo:
        """Make an existing version the serving one (rollback is activating an older one)."""

        def write(session: Session) -> int:
            user = self._locked_user(session, user_id)
            row = self._version_row(session, user_id, number)
            self._make_active(session, user, row)
            return row.id

        return self._by_id(self.write(write, what=f"activate {user_id!r} v{number}"))

    def rollback(self, user_id: str, number: int, *, to: int, reason: str) -> VersionInfo:
        """In one transaction: mark ``number`` rolled back with ``reason`` and activate ``to``."""

        def write(session: Session) -> int:
            user = self._locked_user(session, user_id)
            bad = self._version_row(session, user_id, number)
            good = self._version_row(session, user_id, to)
            self._make_active(session, user, good)
            bad.status = ROLLED_BACK
            bad.status_reason = reason
            return good.id

        return self._by_id(self.write(write, what=f"roll back {user_id!r} v{number}"))

    def set_status_reason(self, user_id: str, number: int, reason: str) -> VersionInfo:
        """Record why a version is where it is (e.g. the gate's verdict), status unchanged."""

        def write(session: Session) -> int:
            self._locked_user(session, user_id)
            row = self._version_row(session, user_id, number)
            row.status_reason = reason
            return row.id

        return self._by_id(self.write(write, what=f"annotate {user_id!r} v{number}"))

    def pin(self, user_id: str, number: int, *, pinned: bool = True) -> VersionInfo:
        """Keep (or stop keeping) a version through ``gc`` whatever its age."""

        def write(session: Session) -> int:
            self._locked_user(session, user_id)
            row = self._version_row(session, user_id, number)
            row.pinned = pinned
            return row.id

        return self._by_id(self.write(write, what=f"pin {user_id!r} v{number}"))

    # -- erasure ---------------------------------------------------------------------

    def erase(self, user_id: str, *, actor: str) -> ErasureReport:
        """Remove everything stored of ``user_id`` (versions, feedback, requests, blobs)
        in one audited operation. The rows go in one transaction with the audit row;
        the blobs after it (a crash between leaves blobs no row refers to, which
        ``adaptkit fsck --repair`` removes)."""
        validate_user_id(user_id)
        if not isinstance(actor, str) or not actor.strip():
            raise ValueError("erase needs the actor (who asked for it), e.g. actor='admin:alice'")

        def write(session: Session) -> tuple[dict[str, int], int, set[str]]:
            user = self._locked_user(session, user_id)
            paths = set(
                session.scalars(
                    select(AdapterVersionRow.blob_path).where(AdapterVersionRow.user_id == user_id)
                )
            )
            user.active_version_id = None
            session.flush()
            counts = {
                "feedback_events": _delete(session, FeedbackEventRow, user_id),
                # The ids the server handed out for the user's completions point at them.
                "served_completions": session.execute(
                    delete(ServedCompletionRow).where(
                        ServedCompletionRow.request_id.in_(
                            select(RequestRow.id).where(RequestRow.user_id == user_id)
                        )
                    )
                ).rowcount,
                "requests": _delete(session, RequestRow, user_id),
            }
            session.execute(
                update(AdapterVersionRow)
                .where(AdapterVersionRow.user_id == user_id)
                .values(parent_id=None)
                .execution_options(synchronize_session=False)
            )
            counts["versions"] = _delete(session, AdapterVersionRow, user_id)
            session.execute(delete(UserRow).where(UserRow.id == user_id))
            session.execute(delete(LeaseRow).where(LeaseRow.user_id == user_id))
            audit = AuditRow(actor=actor, action="erase", user_id=user_id, counts=counts)
            session.add(audit)
            session.flush()
            return counts, audit.id, paths

        counts, audit_id, paths = self.write(write, what=f"erase {user_id!r}")
        blob_dirs = self._remove_user_blobs(user_id, paths)
        with self._sessions() as session:
            audit = session.get(AuditRow, audit_id)
            at = audit.at
        return ErasureReport(
            user_id=user_id,
            actor=actor,
            at=at,
            versions=counts["versions"],
            feedback_events=counts["feedback_events"],
            requests=counts["requests"],
            blob_dirs=blob_dirs,
            audit_id=audit_id,
        )

    def _remove_user_blobs(self, user_id: str, paths: set[str]) -> int:
        """Remove an erased user's blobs: those its rows named, and unreferenced ones old
        enough that no publish in flight can own them (as ``fsck --repair``)."""
        removed = 0
        cutoff = time.time() - ORPHAN_GRACE_SECONDS
        for blob in self.blobs.blob_dirs(user_id):
            relative = self.blobs.relative(blob)
            ours = relative in paths or blob.stat().st_mtime < cutoff
            if ours and not self._blob_referenced(relative):
                self.blobs.remove(blob)
                removed += 1
        self.blobs.remove_empty(user_id)
        return removed

    # -- leases: one trainer per user at a time, across processes and machines ---------

    def try_lease(self, user_id: str, *, holder: str, seconds: float) -> bool:
        """Take (or renew) the lease on training ``user_id`` for ``seconds``; False when
        another live holder has it. A holder that dies loses it when it expires."""
        validate_user_id(user_id)
        if not seconds > 0:
            raise ValueError(f"a lease lasts a positive number of seconds, got {seconds!r}")

        def write(session: Session) -> bool:
            now = utc_now()
            expires = now + timedelta(seconds=seconds)
            query = select(LeaseRow).where(LeaseRow.user_id == user_id)
            if session.get_bind().dialect.name == "postgresql":
                # A row another trainer is taking right now is skipped, not waited for.
                query = query.with_for_update(skip_locked=True)
            row = session.scalars(query.execution_options(populate_existing=True)).first()
            if row is None:
                # False: another trainer inserted it (or is taking it) at this moment.
                return insert_ignore(
                    session, LeaseRow, user_id=user_id, holder=holder, expires_at=expires
                )
            if row.holder != holder and _aware(row.expires_at) > now and _alive(row.holder):
                return False
            row.holder, row.expires_at = holder, expires
            return True

        return self.write(write, what=f"lease {user_id!r}")

    def release_lease(self, user_id: str, *, holder: str) -> None:
        """Give the lease back (only ``holder``'s own)."""
        self.write(
            lambda session: session.execute(
                delete(LeaseRow).where(LeaseRow.user_id == user_id, LeaseRow.holder == holder)
            ),
            what=f"release the lease on {user_id!r}",
        )

    @contextmanager
    def lease(self, user_id: str, *, holder: str, seconds: float) -> Iterator[bool]:
        """``try_lease`` for a block (yields whether it was taken), released after it."""
        taken = self.try_lease(user_id, holder=holder, seconds=seconds)
        try:
            yield taken
        finally:
            if taken:
                self.release_lease(user_id, holder=holder)

    # -- retention -------------------------------------------------------------------

    def gc(self, keep: int, *, user_id: str | None = None) -> GcReport:
        """Delete old versions: per user, keep the active version and its ancestors up to
        ``keep`` versions in all (``keep=1``: the active alone), every pinned version and
        every candidate still awaiting its gate; remove the blobs no row refers to then."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise InputError(f"--keep must be a whole number >= 1, got {keep!r}")
        users = [user_id] if user_id is not None else [u.id for u in self.users()]
        deleted: dict[str, list[int]] = {}
        for user in users:
            numbers, paths = self.write(
                lambda session, user=user: self._gc_user(session, user, keep),
                what=f"gc {user!r}",
            )
            if numbers:
                deleted[user] = numbers
            for relative in paths:
                if not self._blob_referenced(relative):
                    self.blobs.remove(self.blobs.root / relative)
        return GcReport(keep=keep, deleted=deleted)

    def _gc_user(self, session: Session, user_id: str, keep: int) -> tuple[list[int], set[str]]:
        user = self._locked_user(session, user_id)
        rows = {
            row.id: row
            for row in session.scalars(
                select(AdapterVersionRow).where(AdapterVersionRow.user_id == user_id)
            )
        }
        kept = {row_id for row_id, row in rows.items() if row.pinned or row.status == CANDIDATE}
        kept |= set(list(_chain(rows, user.active_version_id))[:keep])
        doomed = [row_id for row_id in rows if row_id not in kept]
        if not doomed:
            return [], set()
        for row in rows.values():
            if row.id in kept and row.parent_id in doomed:
                row.parent_id = None  # its lineage before this point was collected
        session.execute(
            update(FeedbackEventRow)
            .where(FeedbackEventRow.consumed_by_version_id.in_(doomed))
            .values(consumed_by_version_id=None)
            .execution_options(synchronize_session=False)
        )
        session.flush()
        session.execute(
            update(AdapterVersionRow)
            .where(AdapterVersionRow.id.in_(doomed))
            .values(parent_id=None)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            delete(AdapterVersionRow)
            .where(AdapterVersionRow.id.in_(doomed))
            .execution_options(synchronize_session=False)
        )
        return sorted(rows[i].number for i in doomed), {rows[i].blob_path for i in doomed}

    def audit(self, user_id: str | None = None) -> list[AuditRow]:
        with self._sessions() as session:
            query = select(AuditRow).order_by(AuditRow.id)
            if user_id is not None:
                query = query.where(AuditRow.user_id == user_id)
            return list(session.scalars(query))


def _chain(rows: dict[int, AdapterVersionRow], start: int | None) -> Iterator[int]:
    """The version ids from ``start`` up its parents (within ``rows``)."""
    seen: set[int] = set()
    while start is not None and start in rows and start not in seen:
        seen.add(start)
        yield start
        start = rows[start].parent_id


def lease_holder(tag: str = "") -> str:
    """A lease holder name for this process: ``host:pid:tag``. A holder on this host
    whose process is gone loses its lease at once, not only when it expires."""
    return f"{socket.gethostname()}:{os.getpid()}:{tag}"


def _alive(holder: str) -> bool:
    """False only when ``holder`` names a process on this host that no longer exists."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's: its lease runs until it expires
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another OS user
    return True


def _aware(moment: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they were written in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _delete(session: Session, table: type, user_id: str) -> int:
    result = session.execute(
        delete(table).where(table.user_id == user_id).execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)


def _label(version: VersionInfo) -> str:
    return f"user {version.user_id!r} v{version.number}"
