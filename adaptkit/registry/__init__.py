"""Versioned storage of every user's adapters (SQL rows + immutable blobs), and the
database the feedback log shares with them."""

from adaptkit.errors import BlobIntegrityError
from adaptkit.registry.blobs import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    BlobStore,
    check_digest,
    sha256_file,
)
from adaptkit.registry.registry import (
    ACTIVE,
    CANDIDATE,
    RETIRED,
    ROLLED_BACK,
    Registry,
    UserInfo,
    VersionInfo,
)
from adaptkit.registry.schema import (
    CONSUMED,
    PENDING,
    REJECTED,
    AdapterVersionRow,
    FeedbackEventRow,
    RequestRow,
    UserRow,
)

__all__ = [
    "ACTIVE",
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "CANDIDATE",
    "CONSUMED",
    "PENDING",
    "REJECTED",
    "RETIRED",
    "ROLLED_BACK",
    "AdapterVersionRow",
    "BlobIntegrityError",
    "BlobStore",
    "FeedbackEventRow",
    "Registry",
    "RequestRow",
    "UserInfo",
    "UserRow",
    "VersionInfo",
    "check_digest",
    "sha256_file",
]
