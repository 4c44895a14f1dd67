"""fsck, erasure and retention, through the API and the CLI, on both databases."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from adaptkit.cli.main import main
from adaptkit.errors import InputError, UnknownUserError
from adaptkit.feedback import FeedbackEvent, FeedbackLog
from adaptkit.registry import ADAPTER_WEIGHTS, Registry, fsck
from registry_support import invariant_violations, publish_bytes, stage_bytes


@pytest.fixture
def registry(db_url: str, tmp_path: Path) -> Registry:
    return Registry(db_url, tmp_path / "adapters")


def _with_feedback(registry: Registry, user: str) -> None:
    log = FeedbackLog(registry)
    request = log.record_completion(user, "Weekend?", "Hike.")
    log.record(FeedbackEvent(user_id=user, kind="edit", request_id=request.id, text="Sail."))


def test_fsck_reports_and_repairs_only_what_no_row_refers_to(registry: Registry) -> None:
    first = publish_bytes(registry, "alice", b"one")
    second = publish_bytes(registry, "alice", b"two")
    assert fsck(registry).clean
    (first.blob_path / ADAPTER_WEIGHTS).write_bytes(b"tampered")
    (second.blob_path / "adapter_config.json").unlink()
    orphan = registry.blobs.put("alice", stage_bytes(registry, "alice", b"never committed")).path
    stale = stage_bytes(registry, "alice", b"a killed trainer's")
    old = time.time() - 7200
    os.utime(stale, (old, old))

    report = fsck(registry)
    assert len(report.mismatched) == 1 and "alice v1" in report.mismatched[0]
    assert len(report.missing) == 1 and "alice v2" in report.missing[0]
    assert report.orphans == [orphan] and report.stale_staging == [stale]
    assert not report.clean

    young = fsck(registry, repair=True)  # the orphan may be a publish in flight: kept
    assert orphan.exists() and not stale.exists() and young.removed == [stale]
    repaired = fsck(registry, repair=True, grace_seconds=0)
    assert repaired.removed == [orphan] and not orphan.exists()
    # Rows and their (broken) blobs are never touched: only a person picks what to serve.
    assert first.blob_path.exists() and len(registry.versions("alice")) == 2
    assert not fsck(registry).clean


def test_erase_removes_everything_of_one_user_with_an_audit_row(registry: Registry) -> None:
    for payload in (b"a1", b"a2", b"a3"):
        publish_bytes(registry, "alice", payload)
    publish_bytes(registry, "bob", b"b1")
    _with_feedback(registry, "alice")
    _with_feedback(registry, "bob")
    bob_before = registry.versions("bob")

    report = registry.erase("alice", actor="admin:dana")
    assert (report.versions, report.feedback_events, report.requests) == (3, 1, 1)
    assert report.blob_dirs == 3 and report.actor == "admin:dana"
    with pytest.raises(UnknownUserError):
        registry.versions("alice")
    assert not (registry.blobs.root / "alice").exists()
    [audit] = registry.audit("alice")
    assert (audit.actor, audit.action, audit.counts) == (
        "admin:dana",
        "erase",
        {"feedback_events": 1, "served_completions": 0, "requests": 1, "versions": 3},
    )
    # Other users are untouched.
    assert registry.versions("bob") == bob_before
    assert len(FeedbackLog(registry).events("bob")) == 1
    assert invariant_violations(registry) == [] and fsck(registry).clean
    with pytest.raises(UnknownUserError):
        registry.erase("alice", actor="admin:dana")
    with pytest.raises(ValueError, match="actor"):
        registry.erase("bob", actor=" ")


def test_gc_keeps_active_ancestors_pinned_and_candidates(registry: Registry) -> None:
    for index in range(6):
        publish_bytes(registry, "alice", f"v{index + 1}".encode())
    registry.pin("alice", 1)
    publish_bytes(registry, "alice", b"candidate", activate=False)  # v7, awaiting its gate
    registry.activate("alice", 5)  # v6 is now a retired child of v5
    report = registry.gc(3)
    assert report.deleted == {"alice": [2, 6]}
    kept = registry.versions("alice")
    assert [v.number for v in kept] == [1, 3, 4, 5, 7]
    # v3's and v7's parents (v2, v6) were collected: their lineage ends there.
    assert [v.parent_number for v in kept] == [None, None, 3, 4, None]
    assert invariant_violations(registry) == [] and fsck(registry).clean
    assert len(list((registry.blobs.root / "alice" / "sha256").iterdir())) == 5
    with pytest.raises(InputError, match="--keep must be a whole number >= 1"):
        registry.gc(0)


def test_cli_erase_gc_pin_fsck(db_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"ADAPTKIT_DB": db_url}
    registry = Registry(db_url, home / "adapters")
    for payload in (b"1", b"2", b"3"):
        publish_bytes(registry, "alice", payload)
    publish_bytes(registry, "bob", b"b")
    runner = CliRunner(env=env)
    base = ["--home", str(home)]
    assert runner.invoke(main, ["pin", "alice", "1", *base]).output == "alice v1 pinned\n"
    result = runner.invoke(main, ["gc", "--keep", "1", *base])
    assert result.exit_code == 0 and "alice: deleted v2" in result.output, result.output
    assert runner.invoke(main, ["fsck", *base]).exit_code == 0
    result = runner.invoke(main, ["erase", "bob", "--yes", "--actor", "ops", *base])
    assert result.exit_code == 0 and "erased 'bob': 1 versions, 1 blobs" in result.output
    result = runner.invoke(main, ["erase", "carol", "--yes", *base])
    assert result.exit_code == 2 and "unknown user 'carol'" in result.output
    (registry.version("alice", 3).blob_path / ADAPTER_WEIGHTS).write_bytes(b"x")
    result = runner.invoke(main, ["fsck", *base])
    assert result.exit_code == 1 and "alice v3" in result.output


def test_adaptkit_takes_db_and_blobs_or_their_environment(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adaptkit import AdaptKit

    kit = AdaptKit(tmp_path / "home", db=db_url, blobs=str(tmp_path / "shared-blobs"))
    version = publish_bytes(kit.registry, "alice", b"shared")
    assert version.blob_path.is_relative_to(tmp_path / "shared-blobs")
    assert not (tmp_path / "home" / "registry.db").exists()  # the home holds no registry
    # A second process (another replica) given the same places through the environment.
    monkeypatch.setenv("ADAPTKIT_DB", db_url)
    monkeypatch.setenv("ADAPTKIT_BLOBS", str(tmp_path / "shared-blobs"))
    replica = AdaptKit(tmp_path / "other-home")
    assert replica.registry.active_version("alice").blob_sha256 == version.blob_sha256
    assert replica.registry.blob_problem(replica.registry.active_version("alice")) is None
