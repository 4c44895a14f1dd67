"""Writers racing on one registry, done for real: processes publishing for one user at
the same moment, activation racing publish, a fresh database opened by several
processes at once, a write lock held by another connection, an interrupt after the
commit. Each ran against the previous registry and broke it (lost or deleted committed
blobs, several active rows, "table users already exists", raw "database is locked")."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from adaptkit.registry import Registry, RegistryBusyError
from adaptkit.registry import database as registry_database
from registry_support import invariant_violations, publish_bytes

TRIALS = 15
_fork = multiprocessing.get_context("fork")


def _publisher(url: str, root: str, tag: int, barrier, trials: int, results) -> None:
    registry = Registry(url, Path(root))
    numbers = []
    for trial in range(trials):
        barrier.wait(timeout=60)
        info = publish_bytes(registry, "alice", f"{tag}:{trial}".encode() * 100)
        numbers.append(info.number)
    results.put((tag, numbers))


def _run(processes: list) -> None:
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
        assert process.exitcode == 0, f"{process.name} exited with {process.exitcode}"


def test_two_processes_publishing_for_one_user_never_lose_a_version(
    db_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "adapters"
    Registry(db_url, root)  # the schema exists before the race starts
    barrier, results = _fork.Barrier(2), _fork.Queue()
    arguments = [(db_url, str(root), tag, barrier, TRIALS, results) for tag in (1, 2)]
    _run([_fork.Process(target=_publisher, args=args) for args in arguments])
    numbers = sorted(n for _ in range(2) for n in results.get(timeout=10)[1])
    # Every publish succeeded with its own number, and every committed row has its blob.
    assert numbers == list(range(1, 2 * TRIALS + 1))
    registry = Registry(db_url, root)
    assert invariant_violations(registry) == []
    versions = registry.versions("alice")
    assert len({v.blob_path for v in versions}) == 2 * TRIALS
    assert registry.active_version("alice").number == 2 * TRIALS
    assert registry.blob_problem(registry.active_version("alice")) is None


def _activator(url: str, root: str, rounds: int) -> None:
    registry = Registry(url, Path(root))
    for index in range(rounds):
        registry.activate("alice", 1 + index % 2)


def _publishes(url: str, root: str, count: int) -> None:
    registry = Registry(url, Path(root))
    for index in range(count):
        publish_bytes(registry, "alice", f"racing {index}".encode())


def test_activate_racing_publish_leaves_exactly_one_active_version(
    db_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "adapters"
    registry = Registry(db_url, root)
    publish_bytes(registry, "alice", b"one")
    publish_bytes(registry, "alice", b"two")
    _run(
        [
            _fork.Process(target=_activator, args=(db_url, str(root), 40)),
            _fork.Process(target=_publishes, args=(db_url, str(root), 20)),
        ]
    )
    assert invariant_violations(registry) == []
    statuses = [v.status for v in registry.versions("alice")]
    assert statuses.count("active") == 1 and len(statuses) == 22


def _opener(url: str, root: str, barrier) -> None:
    barrier.wait(timeout=60)
    Registry(url, Path(root)).ensure_user("bob")


def test_a_fresh_database_opened_by_several_processes_at_once(db_url: str, tmp_path: Path) -> None:
    barrier = _fork.Barrier(4)
    root = str(tmp_path / "adapters")
    _run([_fork.Process(target=_opener, args=(db_url, root, barrier)) for _ in range(4)])
    assert [u.id for u in Registry(db_url, Path(root)).users()] == ["bob"]


def test_an_interrupt_after_the_commit_keeps_the_committed_blob(
    db_url: str, tmp_path: Path, monkeypatch
) -> None:
    registry = Registry(db_url, tmp_path / "adapters")
    publish_bytes(registry, "alice", b"first")
    real = registry._by_id
    calls = []

    def interrupted(row_id: int):
        calls.append(row_id)
        raise KeyboardInterrupt  # Ctrl-C while reading back the committed version

    monkeypatch.setattr(registry, "_by_id", interrupted)
    with pytest.raises(KeyboardInterrupt):
        publish_bytes(registry, "alice", b"second")
    monkeypatch.setattr(registry, "_by_id", real)
    assert calls and registry.active_version("alice").number == 2
    assert registry.blob_problem(registry.active_version("alice")) is None
    assert invariant_violations(registry) == []


def _hold_write_lock(path: str, seconds: float, held: threading.Event) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    held.set()
    time.sleep(seconds)
    connection.execute("COMMIT")
    connection.close()


def test_sqlite_lock_is_waited_for_then_a_clear_retryable_error(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(registry_database, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(registry_database, "WRITE_ATTEMPTS", 3)
    path = tmp_path / "registry.db"
    registry = Registry(f"sqlite:///{path}", tmp_path / "adapters")
    publish_bytes(registry, "alice", b"first")

    # A writer that lets go within the retries: the publish waits and succeeds.
    held = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(str(path), 0.4, held))
    holder.start()
    held.wait()
    assert publish_bytes(registry, "alice", b"second").number == 2
    holder.join()

    # One that does not: a clear, retryable error; no row and no blob left behind.
    held.clear()
    holder = threading.Thread(target=_hold_write_lock, args=(str(path), 6.0, held))
    holder.start()
    held.wait()
    with pytest.raises(RegistryBusyError, match="stayed locked .* nothing was written, try"):
        publish_bytes(registry, "alice", b"third")
    holder.join()
    assert [v.number for v in registry.versions("alice")] == [1, 2]
    assert len(list((registry.blobs.root / "alice" / "sha256").iterdir())) == 2
