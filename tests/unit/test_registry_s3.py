"""Blobs in an object store shared by machines (S3 through fsspec, against moto's local
S3 server): published on one machine, verified and served on another; a changed object
is refused; erasure and fsck reach the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from adaptkit.cli.main import main
from adaptkit.errors import BlobIntegrityError
from adaptkit.registry import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Registry, fsck
from registry_support import publish_bytes, stage_bytes


@pytest.fixture(scope="module")
def s3_endpoint() -> str:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, request) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    name = f"adaptkit-{abs(hash(request.node.nodeid)) % 10**8}"
    s3fs.S3FileSystem().mkdir(name)
    return f"s3://{name}/blobs"


def machine(db_url: str, tmp_path: Path, name: str, bucket: str) -> Registry:
    """A registry as one machine sees it: the shared database and object store, and a
    local folder of its own."""
    return Registry(db_url, tmp_path / name / "adapters", remote_blobs=bucket)


def test_published_on_one_machine_served_verified_on_another(
    db_url: str, tmp_path: Path, bucket: str
) -> None:
    trainer = machine(db_url, tmp_path, "trainer", bucket)
    published = publish_bytes(trainer, "alice", b"weights from the trainer")
    relative = trainer.blobs.relative(published.blob_path)
    remote = trainer.blobs.remote
    assert sorted(remote.fs.ls(remote.key(relative))) == sorted(
        [remote.key(relative, ADAPTER_CONFIG), remote.key(relative, ADAPTER_WEIGHTS)]
    )
    server = machine(db_url, tmp_path, "server", bucket)
    assert not (server.blobs.root / relative).exists()
    served = server.active_version("alice")  # fetched and verified on first use
    assert served.blob_path == server.blobs.root / relative
    assert server.read_weights(served) == b"weights from the trainer"

    # Someone changes the object: a machine without a copy refuses it.
    remote.fs.pipe(remote.key(relative, ADAPTER_CONFIG), json.dumps({"r": 64}).encode())
    fresh = machine(db_url, tmp_path, "fresh", bucket)
    with pytest.raises(BlobIntegrityError, match="does not match its recorded sha256"):
        fresh.active_version("alice")
    assert not (fresh.blobs.root / relative).exists()  # nothing unverified was kept
    report = fsck(fresh)
    assert len(report.mismatched) == 1 and not report.clean


def test_erase_and_fsck_reach_the_object_store(db_url: str, tmp_path: Path, bucket: str) -> None:
    registry = machine(db_url, tmp_path, "one", bucket)
    publish_bytes(registry, "alice", b"a1")
    publish_bytes(registry, "bob", b"b1")
    remote = registry.blobs.remote
    registry.erase("alice", actor="test")
    assert [p for p in remote.relatives() if p.startswith("alice/")] == []
    assert len(remote.relatives()) == 1  # bob's

    # An upload whose row never came (a publisher on another machine that crashed).
    stored = registry.blobs.put("carol", stage_bytes(registry, "carol", b"uncommitted"))
    orphan = registry.blobs.relative(stored.path)
    elsewhere = machine(db_url, tmp_path, "two", bucket)
    report = fsck(elsewhere)
    assert report.orphans == [elsewhere.blobs.root / orphan] and report.missing == []
    assert fsck(elsewhere, repair=True).removed == []  # young: may be a publish in flight
    assert fsck(elsewhere, repair=True, grace_seconds=0).removed == [elsewhere.blobs.root / orphan]
    assert orphan not in remote.relatives()
    assert fsck(elsewhere).clean


def test_cli_takes_an_object_store_for_blobs(db_url: str, tmp_path: Path, bucket: str) -> None:
    publish_bytes(machine(db_url, tmp_path, "one", bucket), "alice", b"a1")
    runner = CliRunner(env={"ADAPTKIT_DB": db_url})
    home = tmp_path / "replica-home"
    result = runner.invoke(main, ["versions", "alice", "--home", str(home), "--blobs", bucket])
    assert result.exit_code == 0 and "v1" in result.output, result.output
    result = runner.invoke(main, ["fsck", "--home", str(home), "--blobs", bucket])
    assert result.exit_code == 0 and "clean" in result.output, result.output
