"""Versioned storage of every user's adapters (SQL rows + immutable blobs)."""

from adaptkit.registry import feedback  # noqa: F401  (registers the feedback tables)
from adaptkit.registry.blobs import BlobStore, sha256_file
from adaptkit.registry.registry import ACTIVE, CANDIDATE, RETIRED, Registry, UserInfo, VersionInfo

__all__ = [
    "ACTIVE",
    "CANDIDATE",
    "RETIRED",
    "BlobStore",
    "Registry",
    "UserInfo",
    "VersionInfo",
    "sha256_file",
]
