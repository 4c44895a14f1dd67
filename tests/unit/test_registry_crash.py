"""SIGKILL at every step of publish, activate, rollback, erase and feedback recording.

A forked writer runs one operation with a profiler that counts its steps (every call
into the registry's code and every file-system call it makes: mkdir, rename, fsync,
unlink, ...) and SIGKILLs itself at step k; k runs from 1 until the operation
completes untouched. After each kill the invariant checker must find the old state or
the new one (never a row without its blob, a blob whose hash differs from its row, two
active versions, or a lost acknowledged feedback event), and ``fsck --repair`` must
leave a clean store."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import adaptkit.registry
from adaptkit.feedback import FeedbackEvent, FeedbackLog
from adaptkit.registry import Registry, fsck
from registry_support import invariant_violations, publish_bytes

REGISTRY_CODE = str(Path(adaptkit.registry.__file__).parent)
FILE_CALLS = {
    os.mkdir,
    os.rename,
    os.replace,
    os.fsync,
    os.unlink,
    os.rmdir,
    os.open,
    os.close,
    os.write,
    os.scandir,
}
MAX_STEPS = 2000


def _kill_at(step: int) -> Callable:
    seen = 0

    def profile(frame, event, arg):
        nonlocal seen
        if event in ("call", "return"):
            relevant = frame.f_code.co_filename.startswith(REGISTRY_CODE)
        else:
            relevant = event == "c_call" and arg in FILE_CALLS
        if relevant:
            seen += 1
            if seen == step:
                os.kill(os.getpid(), signal.SIGKILL)

    return profile


def _run_killed(url: str, root: Path, operation: Callable[[Registry], None], step: int) -> int:
    """Fork a writer that runs ``operation`` and dies at ``step``; its exit status."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the writer
        code = 0
        try:
            registry = Registry(url, root)
            sys.setprofile(_kill_at(step))
            operation(registry)
            sys.setprofile(None)
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def _snapshot(registry: Registry) -> dict:
    log = FeedbackLog(registry)
    state = {}
    for user in registry.users():
        state[user.id] = {
            "active": user.active_version,
            "versions": [(v.number, v.status, v.blob_sha256) for v in registry.versions(user.id)],
            "events": len(log.events(user.id)),
        }
    state["audit"] = len(registry.audit())
    return state


@dataclass
class Operation:
    name: str
    prepare: Callable[[Registry], None]  # bring the registry to where the op applies
    run: Callable[[Registry], None]
    # (before, after, acknowledged) -> problems when after is neither old nor new
    check: Callable[[dict, dict, bool], list[str]]


def _ensure_bob(registry: Registry) -> None:
    if "bob" in [u.id for u in registry.users()]:
        return
    publish_bytes(registry, "bob", os.urandom(64))
    publish_bytes(registry, "bob", os.urandom(64))
    log = FeedbackLog(registry)
    request = log.record_completion("bob", "Lunch?", "Soup.")
    log.record(FeedbackEvent(user_id="bob", kind="up", request_id=request.id))


def _publish_check(before: dict, after: dict, _ack: bool) -> list[str]:
    old, new = before["alice"], after["alice"]
    if new == old:
        return []
    grew = new["versions"][: len(old["versions"])]
    if len(new["versions"]) != len(old["versions"]) + 1 or [v[:1] + v[2:] for v in grew] != [
        v[:1] + v[2:] for v in old["versions"]
    ]:
        return [f"publish: neither old nor new: {old} -> {new}"]
    if new["active"] != new["versions"][-1][0]:
        return [f"publish: the new version is not the active one: {new}"]
    return []


def _activate_check(before: dict, after: dict, _ack: bool) -> list[str]:
    old, new = before["alice"]["active"], after["alice"]["active"]
    numbers = [v[0] for v in after["alice"]["versions"]]
    if numbers != [v[0] for v in before["alice"]["versions"]]:
        return ["activate changed the versions"]
    return [] if new in (old, _other(before)) else [f"activate: active {old} -> {new}"]


def _other(state: dict) -> int:
    return 1 if state["alice"]["active"] != 1 else 2


def _rollback_check(before: dict, after: dict, _ack: bool) -> list[str]:
    old, new = before["alice"], after["alice"]
    if new == old:
        return []
    statuses = {number: status for number, status, _ in new["versions"]}
    if new["active"] == 1 and statuses[old["active"]] == "rolled-back":
        return []
    return [f"rollback: half done: {old} -> {new}"]


def _erase_check(before: dict, after: dict, _ack: bool) -> list[str]:
    if after == before:
        return []
    if "bob" not in after and after["audit"] == before["audit"] + 1:
        return [] if after["alice"] == before["alice"] else ["erase touched alice"]
    return [f"erase: half done: {before.get('bob')} -> {after.get('bob')}"]


def _record_check(before: dict, after: dict, acknowledged: bool) -> list[str]:
    old, new = before["alice"]["events"], after["alice"]["events"]
    if new not in (old, old + 1):
        return [f"record: {old} -> {new} events"]
    if acknowledged and new != old + 1:
        return ["record: an acknowledged event was lost"]
    return []


def _operations(ack_file: Path) -> list[Operation]:
    def record(registry: Registry) -> None:
        stored = FeedbackLog(registry).record(
            FeedbackEvent(user_id="alice", kind="note", text="I cycle to work.")
        )
        ack_file.write_text(str(stored.id))  # the app's acknowledgement

    def rollback_ready(registry: Registry) -> None:
        active = registry.active_version("alice")
        if active.number == 1:
            registry.activate("alice", registry.versions("alice")[-1].number)

    return [
        Operation(
            "publish",
            lambda r: None,
            lambda r: publish_bytes(r, "alice", os.urandom(256)),
            _publish_check,
        ),
        Operation(
            "activate",
            lambda r: None,
            lambda r: r.activate("alice", _other(_snapshot(r))),
            _activate_check,
        ),
        Operation(
            "rollback",
            rollback_ready,
            lambda r: r.rollback(
                "alice", r.active_version("alice").number, to=1, reason="gate failed"
            ),
            _rollback_check,
        ),
        Operation("erase", _ensure_bob, lambda r: r.erase("bob", actor="test"), _erase_check),
        Operation("record", lambda r: None, record, _record_check),
    ]


def test_sigkill_at_every_step_leaves_old_or_new_state(db_url: str, tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    registry = Registry(db_url, root)
    for _ in range(2):
        publish_bytes(registry, "alice", os.urandom(64))
    log = FeedbackLog(registry)
    request = log.record_completion("alice", "Commute?", "Bus.")
    log.record(FeedbackEvent(user_id="alice", kind="up", request_id=request.id))
    ack_file = tmp_path / "ack"
    summary = {"kills": 0, "completed": 0, "states_checked": 0, "violations": []}
    for operation in _operations(ack_file):
        for step in range(1, MAX_STEPS):
            operation.prepare(registry)
            ack_file.unlink(missing_ok=True)
            before = _snapshot(registry)
            status = _run_killed(db_url, root, operation.run, step)
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            assert killed or os.WEXITSTATUS(status) == 0, (operation.name, step, status)
            after = _snapshot(registry)
            problems = operation.check(before, after, ack_file.exists())
            problems += invariant_violations(registry)
            fsck(registry, repair=True, grace_seconds=0, staging_seconds=0)
            report = fsck(registry)
            if not report.clean:
                problems.append(f"fsck --repair left: {report.lines()}")
            summary["states_checked"] += 1
            summary["violations"] += [f"{operation.name} step {step}: {p}" for p in problems]
            if not killed:
                summary["completed"] += 1
                break
            summary["kills"] += 1
        else:
            pytest.fail(f"{operation.name} did not complete within {MAX_STEPS} steps")
    print("fault injection:", json.dumps({**summary, "violations": len(summary["violations"])}))
    assert summary["violations"] == []
    assert summary["kills"] > 100
