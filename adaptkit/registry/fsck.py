"""``fsck``: compare the registry's rows with its blob store, and repair what is safe.

It reports rows whose blob is missing or no longer matches its recorded digests
(never repaired: only a person knows which version to activate instead), blobs no
row refers to (orphans: left by a crash between writing a blob and committing its
row, or between an erasure's commit and its blob removal) and staging directories
of writers that died. ``repair`` removes only orphans and stale staging directories,
and only those older than ``grace_seconds``: a publish writes its blob a moment
before it commits the row, and a younger unreferenced blob may be one in flight.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from adaptkit.errors import BlobIntegrityError
from adaptkit.registry.blobs import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    ORPHAN_GRACE_SECONDS,
    STALE_STAGING_SECONDS,
    sha256_file,
)
from adaptkit.registry.registry import Registry
from adaptkit.registry.schema import AdapterVersionRow


@dataclass
class FsckReport:
    rows_checked: int = 0
    missing: list[str] = field(default_factory=list)  # "alice v3: adapter_config.json"
    mismatched: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)  # rows without a config digest
    orphans: list[Path] = field(default_factory=list)
    stale_staging: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Nothing wrong is left (what ``repair`` removed does not count)."""
        leftover = [p for p in self.orphans + self.stale_staging if p not in self.removed]
        return not (self.missing or self.mismatched or self.unrecorded or leftover)

    def lines(self) -> list[str]:
        out = [f"rows checked: {self.rows_checked}"]
        for title, items in (
            ("missing blob files (activate another version)", self.missing),
            ("blob files that differ from their row (activate another version)", self.mismatched),
            ("rows without a config digest", self.unrecorded),
            ("orphan blobs (no row refers to them)", self.orphans),
            ("stale staging directories", self.stale_staging),
            ("removed", self.removed),
        ):
            out.append(f"{title}: {len(items)}")
            out += [f"  {item}" for item in items]
        return out


def fsck(
    registry: Registry,
    *,
    repair: bool = False,
    grace_seconds: float = ORPHAN_GRACE_SECONDS,
    staging_seconds: float = STALE_STAGING_SECONDS,
) -> FsckReport:
    report = FsckReport()
    root = registry.blobs.root
    with registry.session() as session:
        rows = session.execute(
            select(
                AdapterVersionRow.user_id,
                AdapterVersionRow.number,
                AdapterVersionRow.blob_path,
                AdapterVersionRow.blob_sha256,
                AdapterVersionRow.config_sha256,
            )
        ).all()
    referenced = set()
    for user_id, number, blob_path, weights_sha256, config_sha256 in rows:
        report.rows_checked += 1
        referenced.add(blob_path)
        where = f"{user_id} v{number}"
        if config_sha256 is None:
            report.unrecorded.append(where)
        try:
            registry.blobs.ensure_local(blob_path, weights_sha256, config_sha256)
        except BlobIntegrityError as error:
            report.mismatched.append(f"{where}: {error}")
            continue
        for name, expected in ((ADAPTER_WEIGHTS, weights_sha256), (ADAPTER_CONFIG, config_sha256)):
            path = root / blob_path / name
            if not path.is_file():
                report.missing.append(f"{where}: {path}")
            elif expected is not None and sha256_file(path) != expected:
                report.mismatched.append(f"{where}: {path}")
    now = time.time()
    for blob in registry.blobs.blob_dirs():
        if registry.blobs.relative(blob) not in referenced:
            report.orphans.append(blob)
    remote = registry.blobs.remote
    remote_orphans = set() if remote is None else remote.relatives() - referenced
    report.orphans += [
        root / relative
        for relative in sorted(remote_orphans)
        if root / relative not in report.orphans
    ]
    report.stale_staging = registry.blobs.stale_staging(staging_seconds)
    if repair:
        for path in report.orphans:
            if not path.exists():  # only in the object store
                key = remote.key(registry.blobs.relative(path), ADAPTER_CONFIG)
                written = remote.fs.modified(key).timestamp()
            else:
                written = path.stat().st_mtime
            if now - written >= grace_seconds:
                registry.blobs.remove(path)
                report.removed.append(path)
        for path in report.stale_staging:
            registry.blobs.remove(path)
            report.removed.append(path)
        registry.blobs.remove_empty()
    return report
