"""Trainer leases across processes: one holder per user at a time, freed when it expires
if its holder was killed; and a version published by one process is served by another
process's engine from its next request."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

from adaptkit.registry import Registry, lease_holder

_fork = multiprocessing.get_context("fork")
ROUNDS = 20


def _contender(url: str, root: str, name: str, barrier, results) -> None:
    registry = Registry(url, Path(root))
    won = []
    for index in range(ROUNDS):
        barrier.wait(timeout=60)
        if registry.try_lease(f"user{index}", holder=name, seconds=60):
            won.append(index)
    results.put((name, won))


def test_processes_racing_for_leases_get_one_holder_per_user(db_url: str, tmp_path: Path) -> None:
    root = str(tmp_path / "adapters")
    Registry(db_url, Path(root))
    barrier, results = _fork.Barrier(3), _fork.Queue()
    processes = [
        _fork.Process(target=_contender, args=(db_url, root, f"trainer{i}", barrier, results))
        for i in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    won = [index for _ in processes for index in results.get(timeout=10)[1]]
    assert sorted(won) == list(range(ROUNDS))  # every user leased exactly once


def _hold_until_killed(url: str, root: str, ready) -> None:
    Registry(url, Path(root)).try_lease("alice", holder="doomed", seconds=1.5)
    ready.set()
    time.sleep(600)


def test_a_killed_holders_lease_expires(db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    registry = Registry(db_url, root)
    ready = _fork.Event()
    holder = _fork.Process(target=_hold_until_killed, args=(db_url, str(root), ready))
    holder.start()
    assert ready.wait(60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    assert not registry.try_lease("alice", holder="survivor", seconds=60)
    time.sleep(1.6)
    assert registry.try_lease("alice", holder="survivor", seconds=60)
    assert registry.try_lease("alice", holder="survivor", seconds=60)  # renewing is fine
    assert not registry.try_lease("alice", holder="doomed", seconds=60)
    registry.release_lease("alice", holder="doomed")  # not its lease: nothing happens
    assert not registry.try_lease("alice", holder="other", seconds=60)
    with registry.lease("bob", holder="other", seconds=60) as taken:
        assert taken and not registry.try_lease("bob", holder="survivor", seconds=60)
    assert registry.try_lease("bob", holder="survivor", seconds=60)


def _hold_as_this_process(url: str, root: str, ready) -> None:
    Registry(url, Path(root)).try_lease("carol", holder=lease_holder("worker"), seconds=600)
    ready.set()
    time.sleep(600)


def test_a_dead_holder_on_this_host_loses_its_lease_at_once(db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    registry = Registry(db_url, root)
    ready = _fork.Event()
    holder = _fork.Process(target=_hold_as_this_process, args=(db_url, str(root), ready))
    holder.start()
    assert ready.wait(60)
    assert not registry.try_lease("carol", holder=lease_holder("other"), seconds=60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    assert registry.try_lease("carol", holder=lease_holder("other"), seconds=60)


def test_a_version_published_elsewhere_is_served_from_the_next_request(
    db_url: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from bank_support import make_lora_dir, publish_dir

    from adaptkit.bank import Engine
    from adaptkit.base_model import load_base
    from adaptkit.home import Home
    from adaptkit.router import Request

    home = Home(tmp_path / "home").ensure()
    registry = Registry(db_url, home.adapters_dir)
    base = load_base(str(tiny_model_dir), home=home)
    first = make_lora_dir(base.model, tmp_path / "one", seed=1, rank=4)
    second = make_lora_dir(base.model, tmp_path / "two", seed=2, rank=4)
    publish_dir(registry, "alice", first, str(tiny_model_dir))
    with Engine(base, registry, shared_dir=home.root / "shared") as engine:
        before = engine.generate([Request("Hi", user="alice")], max_new_tokens=3)[0]
        assert before.plan.describe().count("alice v1") == 1
        # Another process (a trainer on another machine, say) publishes v2.
        process = _fork.Process(
            target=_publish_dir_elsewhere,
            args=(db_url, str(home.adapters_dir), str(second), str(tiny_model_dir)),
        )
        process.start()
        process.join(timeout=120)
        assert process.exitcode == 0
        after = engine.generate([Request("Hi", user="alice")], max_new_tokens=3)[0]
        assert "alice v2" in after.plan.describe()


def _publish_dir_elsewhere(url: str, root: str, adapter: str, base_model: str) -> None:
    from bank_support import publish_dir

    publish_dir(Registry(url, Path(root)), "alice", Path(adapter), base_model)
