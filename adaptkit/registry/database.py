"""The registry's database: engines for SQLite and PostgreSQL, write transactions that
serialize per user, bounded retry of lock contention, and clear errors for bad URLs.

SQLite: every write transaction starts with ``BEGIN IMMEDIATE`` (it takes the write lock
before reading what it will change, so a read-then-write can never interleave with
another writer); reads stay deferred and, in WAL mode, never wait. PostgreSQL: a write
locks the user's row (``SELECT ... FOR UPDATE``), so writes of one user serialize and
writes of different users run in parallel.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, func, literal_column, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session

from adaptkit.errors import AdaptkitError, InputError, UnknownUserError
from adaptkit.registry.schema import UserRow, utc_now
from adaptkit.user_ids import case_clash

T = TypeVar("T")
_IMMEDIATE = "adaptkit_immediate"
SQLITE_BUSY_TIMEOUT_S = 5.0  # each attempt waits this long for the write lock
WRITE_ATTEMPTS = 6  # then the caller gets RegistryBusyError (retryable)
# PostgreSQL: serialization failure, deadlock, lock not available.
_RETRYABLE_PG_CODES = {"40001", "40P01", "55P03"}


class RegistryBusyError(AdaptkitError):
    """The database stayed locked by other writers through every retry; safe to retry."""

    retryable = True


class DatabaseUrlError(InputError):
    """``--db`` / ``ADAPTKIT_DB`` names a database adaptkit cannot use."""


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Transactions are begun by hand (``_sqlite_begin``): pysqlite's own implicit BEGIN
    # is deferred and cannot be made IMMEDIATE per transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # The busy timeout first: switching a fresh file to WAL takes the write lock, and
    # several processes opening one new registry at once must wait for it, not fail.
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    # SQLite answers "locked" at once, without its busy handler, when two connections
    # both hold the read lock and want to switch a fresh file: retry within the bound.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


def _sqlite_begin(connection: Any) -> None:
    immediate = connection.get_execution_options().get(_IMMEDIATE)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (sqlite:/// or postgresql+psycopg://), checked by connecting
    once: a wrong or unreachable URL is a ``DatabaseUrlError`` naming it and the fix."""
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise DatabaseUrlError(
            f"--db / ADAPTKIT_DB {url!r} is not a database URL ({error}); use "
            "sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"
        ) from error
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseUrlError(
            f"--db / ADAPTKIT_DB {safe_url(url)!r}: adaptkit supports sqlite:/// and "
            "postgresql+psycopg:// URLs"
        )
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
            event.listen(engine, "connect", _sqlite_connect)
            event.listen(engine, "begin", _sqlite_begin)
        else:
            # No pre-ping: it would double the round trips of every lookup.
            engine = create_engine(parsed)
    except (NoSuchModuleError, ImportError) as error:
        raise DatabaseUrlError(
            f"--db / ADAPTKIT_DB {safe_url(url)!r}: no driver for it ({error}); for "
            "PostgreSQL use postgresql+psycopg:// and `pip install 'psycopg[binary]'`"
        ) from error
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except DBAPIError as error:
        engine.dispose()
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise DatabaseUrlError(
            f"--db / ADAPTKIT_DB {safe_url(url)!r}: cannot open the database ({reason}). "
            "Check the host, port, user and database name (the database must exist), "
            "or that the directory of a SQLite file exists and is writable."
        ) from error
    return engine


def write_engine(engine: Engine) -> Engine:
    """The same engine, whose transactions take the write lock at BEGIN (SQLite)."""
    return engine.execution_options(**{_IMMEDIATE: True})


def is_retryable(error: BaseException) -> bool:
    """Lock contention another attempt can get past (never a constraint violation)."""
    if not isinstance(error, DBAPIError):
        return False
    orig = getattr(error, "orig", None)
    if "database is locked" in str(orig) or "database is busy" in str(orig):
        return True
    return getattr(orig, "sqlstate", None) in _RETRYABLE_PG_CODES


def _backoff(attempt: int) -> None:
    time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))


def _busy(what: str, attempts: int, last: DBAPIError) -> RegistryBusyError:
    return RegistryBusyError(
        f"{what}: the registry database stayed locked by other writers through {attempts} "
        f"attempts ({str(last.orig).strip()}); nothing was written, try again"
    )


def run_write(
    sessions: Callable[[], Session],
    body: Callable[[Session], T],
    *,
    what: str,
    attempts: int | None = None,
) -> T:
    """``body(session)`` in one write transaction, committed; rerun (bounded, with
    jittered backoff) when the database is locked; ``RegistryBusyError`` after that."""
    attempts = attempts or WRITE_ATTEMPTS
    for attempt in range(attempts):
        session = sessions()
        try:
            with session.begin():
                return body(session)
        except DBAPIError as error:
            if not is_retryable(error):
                raise
            last = error
        finally:
            session.close()
        _backoff(attempt)
    raise _busy(what, attempts, last) from last


def begin_write(
    sessions: Callable[[], Session], *, what: str, attempts: int | None = None
) -> Session:
    """A session whose write transaction has begun (on SQLite: holds the write lock),
    for a block that cannot be rerun; waiting for the lock is retried with a bound."""
    attempts = attempts or WRITE_ATTEMPTS
    for attempt in range(attempts):
        session = sessions()
        try:
            session.begin()
            session.connection()
            return session
        except DBAPIError as error:
            session.close()
            if not is_retryable(error):
                raise
            last = error
        _backoff(attempt)
    raise _busy(what, attempts, last) from last


def insert_ignore(session: Session, table: type, **values: Any) -> bool:
    """INSERT unless the key exists (no error, no wait for a committed row); True when
    this call inserted the row."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING.
    statement = insert(table).values(**values).on_conflict_do_nothing()
    return session.execute(statement.returning(literal_column("1"))).first() is not None


def check_new_user_id(session: Session, user_id: str) -> None:
    """Refuse a new user id that differs from an existing one only by case."""
    if session.get(UserRow, user_id) is not None:
        return
    # The id itself is no clash: another process may have just created it (on
    # PostgreSQL each statement sees what committed before it, so this query can find a
    # row the lookup above did not).
    clash = session.scalar(
        select(UserRow.id)
        .where(func.lower(UserRow.id) == user_id.lower(), UserRow.id != user_id)
        .limit(1)
    )
    if clash is not None:
        raise case_clash(user_id, clash)


def lock_user(session: Session, user_id: str, *, create: bool) -> UserRow | None:
    """The user's row, locked for this transaction (created first when ``create``);
    None when it does not exist and ``create`` is False."""
    if create:
        check_new_user_id(session, user_id)
        insert_ignore(session, UserRow, id=user_id, created_at=utc_now())
    query = select(UserRow).where(UserRow.id == user_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).first()


def unknown_user(session: Session, user_id: str) -> UnknownUserError:
    known = session.scalars(select(UserRow.id).order_by(UserRow.id).limit(10)).all()
    hint = f" Known users: {', '.join(known)}." if known else " The registry has no users."
    return UnknownUserError(
        f"unknown user {user_id!r}.{hint} Train one with "
        f"`adaptkit train --user {user_id} --log FILE`."
    )
