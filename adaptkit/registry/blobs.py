"""The adapter blob store: content-addressed, write-once directories in PEFT format.

A version's blob is ``root/USER/sha256/<content id>/`` holding ``adapter_config.json``
and ``adapter_model.safetensors``; the content id is the sha256 of both files' digests,
so the same path always means the same bytes. A blob is written once (staged, fsynced,
renamed into place) and never overwritten: two publishers can never replace or delete
each other's committed blob. Both files are checked against the digests recorded
with the version *before* either is parsed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from adaptkit.errors import BlobIntegrityError, InputError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
STAGING = ".staging"
CONTENT_DIR = "sha256"
# A staging directory older than this belongs to a writer that died (a publish stages,
# fsyncs and renames in well under a minute): fsck may remove it.
STALE_STAGING_SECONDS = 3600.0
# An unreferenced blob younger than this may belong to a publish that has not committed
# its row yet: fsck --repair and erasure leave it alone.
ORPHAN_GRACE_SECONDS = 600.0


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_id(weights_sha256: str, config_sha256: str) -> str:
    """The name of the blob holding exactly these weights and this config."""
    return hashlib.sha256(f"{weights_sha256}:{config_sha256}".encode()).hexdigest()


def check_digest(digest: str | None, expected_sha256: str, weights: Path, label: str) -> None:
    """The one integrity check of a stored file: its sha256 (``digest``; None when the
    file is missing) against the digest recorded with the version."""
    if digest is None:
        raise BlobIntegrityError(
            f"{label}: {weights} is missing; activate another version (`adaptkit activate "
            "USER N`) and run `adaptkit fsck`"
        )
    if digest != expected_sha256:
        raise BlobIntegrityError(
            f"{label}: {weights} does not match its recorded sha256 (the blob changed or is "
            "corrupt); activate another version (`adaptkit activate USER N`) and run "
            "`adaptkit fsck`"
        )


def read_verified(path: Path, expected_sha256: str, label: str) -> bytes:
    """The bytes of ``path``, read once and checked against ``expected_sha256``."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        check_digest(None, expected_sha256, path, label)
    check_digest(hashlib.sha256(blob).hexdigest(), expected_sha256, path, label)
    return blob


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class StoredBlob:
    """Where ``put`` left a staged adapter, its digests, and whether this call made it."""

    path: Path
    weights_sha256: str
    config_sha256: str
    created: bool


class RemoteBlobs:
    """A shared object store (an fsspec URL such as ``s3://bucket/prefix``) holding every
    blob under the same relative paths as a local store. Credentials and endpoint come
    from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...).

    Objects are content-addressed: writing a key again writes the same bytes, so a
    racing upload can never change a committed blob."""

    def __init__(self, url: str) -> None:
        import fsspec

        try:
            self.fs, prefix = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as error:
            raise InputError(
                f"--blobs / ADAPTKIT_BLOBS {url!r}: cannot use this object store ({error}); "
                "for s3:// install s3fs (`pip install 'adaptkit[s3]'`)"
            ) from error
        self.url = url
        self.prefix = prefix.rstrip("/")

    def key(self, relative: str, name: str = "") -> str:
        return "/".join(part for part in (self.prefix, relative, name) if part)

    def upload(self, local: Path, relative: str) -> None:
        # Weights first, config last: a blob whose config is there is complete.
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            self.fs.put_file(str(local / name), self.key(relative, name))

    def download(self, relative: str, target: Path) -> None:
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            self.fs.get_file(self.key(relative, name), str(target / name))

    def remove(self, relative: str) -> None:
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.key(relative, name))

    def relatives(self) -> set[str]:
        """Every blob in the store, as relative paths (for fsck)."""
        found = set()
        for path in self.fs.find(self.prefix):
            folder, _, name = path.rpartition("/")
            if name == ADAPTER_CONFIG:
                found.add(folder[len(self.prefix) :].lstrip("/"))
        return found


class BlobStore:
    """Write-once blobs under ``root``; staging directories inside it (same filesystem,
    so the final rename is atomic). With ``remote``, every blob is also in a shared
    object store and ``root`` is this machine's verified copy of what it used."""

    def __init__(self, root: Path, remote: RemoteBlobs | None = None) -> None:
        self.root = root
        self.remote = remote

    @contextmanager
    def staging(self, user_id: str) -> Iterator[Path]:
        """A fresh directory (inside the store) to save a new adapter into, removed on
        exit: ``put`` moves what should outlive it."""
        staging = self.root / STAGING
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

    def ensure(self) -> BlobStore:
        """Create the root (and its staging folder); a clear error when it cannot be."""
        try:
            (self.root / STAGING).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(
                f"blob store {self.root}: cannot create it ({error.strerror}); pass --blobs "
                "(or ADAPTKIT_BLOBS, --home) naming a writable directory"
            ) from error
        if not os.access(self.root, os.W_OK):
            raise InputError(
                f"blob store {self.root} is not writable; fix its permissions or pass "
                "--blobs (or ADAPTKIT_BLOBS, --home) naming a writable directory"
            )
        return self

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def put(self, user_id: str, staged: Path) -> StoredBlob:
        """Make ``staged`` durable under its content id; never touch an existing blob.

        The directory is complete and fsynced before this returns, so a row committed
        afterwards never points at a half-written blob. When the same content is
        already stored (verified here), ``staged`` is left alone and that blob is used.
        """
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            if not (staged / name).is_file():
                raise FileNotFoundError(f"staged adapter {staged} lacks {name}")
        weights_sha256 = sha256_file(staged / ADAPTER_WEIGHTS)
        config_sha256 = sha256_file(staged / ADAPTER_CONFIG)
        target = self.root / user_id / CONTENT_DIR / content_id(weights_sha256, config_sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        _fsync_tree(staged)
        try:
            # rename(2) onto an existing non-empty directory fails: write-once for free.
            os.rename(staged, target)
        except OSError:
            if not target.is_dir():
                raise
            label = f"stored blob of user {user_id!r}"
            read_verified(target / ADAPTER_WEIGHTS, weights_sha256, label)
            read_verified(target / ADAPTER_CONFIG, config_sha256, label)
            created = False
        else:
            _fsync_dir(target.parent)
            created = True
        if self.remote is not None:
            self.remote.upload(target, self.relative(target))
        return StoredBlob(target, weights_sha256, config_sha256, created=created)

    def ensure_local(self, relative: str, weights_sha256: str, config_sha256: str | None) -> None:
        """With a remote store: make sure this machine has the blob, downloaded and
        verified against the row's digests before it is moved into place."""
        target = self.root / relative
        if self.remote is None or (target / ADAPTER_CONFIG).is_file():
            return
        with self.staging("download") as staged:
            try:
                self.remote.download(relative, staged)
            except FileNotFoundError:
                return  # reading it reports the missing blob, with the version's name
            label = f"blob {self.remote.key(relative)}"
            read_verified(staged / ADAPTER_WEIGHTS, weights_sha256, label)
            if config_sha256 is not None:
                read_verified(staged / ADAPTER_CONFIG, config_sha256, label)
            target.parent.mkdir(parents=True, exist_ok=True)
            _fsync_tree(staged)
            with contextlib.suppress(OSError):  # another process put it there first
                os.rename(staged, target)

    def remove(self, path: Path) -> None:
        """Remove a blob directory (and its remote copy): rename it aside first, so a
        reader sees it whole or not at all, then delete it."""
        if self.remote is not None and path.parent.name == CONTENT_DIR:
            self.remote.remove(self.relative(path))
        if not path.exists():
            return
        doomed = self.root / STAGING / f"removing-{os.getpid()}-{time.monotonic_ns()}"
        doomed.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def blob_dirs(self, user_id: str | None = None) -> Iterator[Path]:
        """Every blob directory in the store, or of one user (content-addressed ones and
        the previous release's ``USER/vN``)."""
        if not self.root.is_dir():
            return
        users = [self.root / user_id] if user_id is not None else sorted(self.root.iterdir())
        for user_dir in users:
            if user_dir.name == STAGING or not user_dir.is_dir():
                continue
            for child in sorted(user_dir.iterdir()):
                if child.name == CONTENT_DIR and child.is_dir():
                    yield from sorted(p for p in child.iterdir() if p.is_dir())
                elif child.is_dir():
                    yield child

    def remove_empty(self, user_id: str | None = None) -> None:
        """Drop user folders left empty (after an erasure or a repair)."""
        users = [self.root / user_id] if user_id is not None else list(self.root.iterdir())
        for user_dir in users:
            if user_dir.name == STAGING or not user_dir.is_dir():
                continue
            for child in [*user_dir.iterdir(), user_dir]:
                with contextlib.suppress(OSError):
                    child.rmdir()  # only succeeds when empty

    def stale_staging(self, older_than: float = STALE_STAGING_SECONDS) -> list[Path]:
        """Staging directories no live writer can still be using (by age)."""
        staging = self.root / STAGING
        if not staging.is_dir():
            return []
        cutoff = time.time() - older_than
        return sorted(p for p in staging.iterdir() if p.stat().st_mtime < cutoff)
