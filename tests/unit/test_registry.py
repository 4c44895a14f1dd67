"""The SQL registry: versions, lineage, one active version, blob-before-row, clear errors
(on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adaptkit.errors import InvalidUserIdError, UnknownUserError, UnknownVersionError
from adaptkit.registry import (
    ACTIVE,
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CANDIDATE,
    RETIRED,
    Registry,
    sha256_file,
)


@pytest.fixture
def registry(db_url: str, tmp_path: Path) -> Registry:
    return Registry(db_url, tmp_path / "adapters")


def stage(registry: Registry, user: str, value: float) -> Path:
    staged = Path(tempfile.mkdtemp(prefix=f"{user}-", dir=registry.blobs.root))
    save_file({"w": torch.full((4,), value)}, str(staged / ADAPTER_WEIGHTS))
    (staged / ADAPTER_CONFIG).write_text(json.dumps({"r": 8}))
    return staged


def publish(registry: Registry, user: str, value: float, **kwargs):
    return registry.publish(
        user,
        stage(registry, user, value),
        method="sft",
        base_model="tiny",
        data_digest="d" * 64,
        metrics={"loss_last": value},
        config={},
        **kwargs,
    )


def test_publish_records_blob_hash_lineage_and_active_version(registry: Registry) -> None:
    first = publish(registry, "alice", 1.0)
    second = publish(registry, "alice", 2.0)
    assert (first.number, second.number) == (1, 2)
    assert second.parent_number == 1 and first.parent_number is None
    assert sha256_file(second.blob_path / ADAPTER_WEIGHTS) == second.blob_sha256
    # Content-addressed: the path names the bytes, and lives under the user's folder.
    assert second.blob_path.parent == registry.blobs.root / "alice" / "sha256"
    assert second.blob_path != first.blob_path
    assert registry.active_version("alice").number == 2
    statuses = [v.status for v in registry.versions("alice")]
    assert statuses == [RETIRED, ACTIVE]
    assert [(u.id, u.active_version, u.version_count) for u in registry.users()] == [
        ("alice", 2, 2)
    ]
    # The registry survives a reopen: it is a real database.
    again = Registry(registry.engine.url.render_as_string(hide_password=False), registry.blobs.root)
    assert again.active_version("alice").blob_sha256 == second.blob_sha256


def test_activate_rolls_back_and_candidates_do_not_serve(registry: Registry) -> None:
    publish(registry, "alice", 1.0)
    candidate = publish(registry, "alice", 2.0, activate=False, status_reason="gate pending")
    assert candidate.status == CANDIDATE and candidate.status_reason == "gate pending"
    assert registry.active_version("alice").number == 1
    registry.activate("alice", 2)
    assert registry.active_version("alice").number == 2
    registry.activate("alice", 1)
    assert registry.active_version("alice").number == 1
    third = publish(registry, "alice", 3.0, parent=2)
    assert third.parent_number == 2


def test_users_are_isolated(registry: Registry) -> None:
    publish(registry, "alice", 1.0)
    bob = publish(registry, "bob", 5.0)
    assert (
        bob.number == 1 and registry.active_version("alice").blob_path.parent.parent.name == "alice"
    )


def test_unknown_user_version_and_bad_ids_are_clear_errors(registry: Registry) -> None:
    publish(registry, "alice", 1.0)
    with pytest.raises(UnknownUserError, match="unknown user 'carol'.*Known users: alice"):
        registry.versions("carol")
    with pytest.raises(UnknownVersionError, match="no version 9; versions: 1"):
        registry.activate("alice", 9)
    with pytest.raises(InvalidUserIdError):
        registry.active_version("../alice")
    assert registry.active_version("alice").number == 1


def test_failed_commit_leaves_no_row_and_no_blob(registry: Registry, monkeypatch) -> None:
    publish(registry, "alice", 1.0)

    def explode(*_args, **_kwargs):
        raise RuntimeError("disk full while committing")

    monkeypatch.setattr(registry, "_make_active", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        publish(registry, "alice", 2.0)
    assert [v.number for v in registry.versions("alice")] == [1]
    assert sorted(p.name for p in (registry.blobs.root / "alice" / "sha256").iterdir()) == [
        registry.version("alice", 1).blob_path.name
    ]
    assert registry.active_version("alice").number == 1


def test_staged_blob_must_be_complete(registry: Registry) -> None:
    staged = Path(tempfile.mkdtemp(prefix="alice-", dir=registry.blobs.root))
    (staged / ADAPTER_CONFIG).write_text("{}")
    with pytest.raises(FileNotFoundError, match=ADAPTER_WEIGHTS):
        registry.publish(
            staged=staged,
            user_id="alice",
            method="sft",
            base_model="tiny",
            data_digest="",
            metrics={},
            config={},
        )
    assert registry.users() == []
