"""The adapter blob store: one immutable directory per adapter version, in PEFT format."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adaptkit.errors import BlobIntegrityError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_digest(digest: str | None, expected_sha256: str, weights: Path, label: str) -> None:
    """The one integrity check of a stored adapter: its weights' sha256 (``digest``; None
    when the file is missing) against the digest recorded with the version."""
    if digest is None:
        raise BlobIntegrityError(
            f"{label}: {weights} is missing; activate another version (`adaptkit activate USER N`)"
        )
    if digest != expected_sha256:
        raise BlobIntegrityError(
            f"{label}: {weights} does not match its recorded sha256 (the blob changed or is "
            "corrupt); activate another version (`adaptkit activate USER N`)"
        )


def read_verified(weights: Path, expected_sha256: str, label: str) -> bytes:
    """The bytes of ``weights``, read once and checked against ``expected_sha256``."""
    try:
        blob = weights.read_bytes()
    except FileNotFoundError:
        check_digest(None, expected_sha256, weights, label)
    check_digest(hashlib.sha256(blob).hexdigest(), expected_sha256, weights, label)
    return blob


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class BlobStore:
    """Moves staged adapter directories to ``root/USER/vN`` and checks them on read."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextmanager
    def staging(self, user_id: str) -> Iterator[Path]:
        """A fresh directory (inside the store) to save a new adapter into, removed on
        exit: ``put`` moves what should outlive it."""
        staging = self.root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        index = 0
        while True:
            candidate = staging / f"{user_id}-{os.getpid()}-{index}"
            try:
                candidate.mkdir()
                break
            except FileExistsError:
                index += 1
        try:
            yield candidate
        finally:
            shutil.rmtree(candidate, ignore_errors=True)

    def put(self, user_id: str, number: int, staged: Path) -> tuple[Path, str]:
        """Make ``staged`` durable as version ``number`` of ``user_id``; return (path, sha256).

        The directory is complete and fsynced before this returns, so the registry
        row committed afterwards never points at a half-written blob.
        """
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            if not (staged / name).is_file():
                raise FileNotFoundError(f"staged adapter {staged} lacks {name}")
        target = self.root / user_id / f"v{number}"
        if target.exists():
            # Left by a publish that crashed before its row was committed: no row refers to it.
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        _fsync_tree(staged)
        os.replace(staged, target)
        return target, sha256_file(target / ADAPTER_WEIGHTS)

    def remove(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
