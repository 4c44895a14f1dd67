"""The adapter blob store: one immutable directory per adapter version, in PEFT format."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

    def staging_dir(self, user_id: str) -> Path:
        """A fresh directory (inside the store) to save a new adapter into."""
        staging = self.root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        index = 0
        while True:
            candidate = staging / f"{user_id}-{os.getpid()}-{index}"
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                index += 1

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
