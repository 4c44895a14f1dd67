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
from adaptkit.registry.database import DatabaseUrlError, RegistryBusyError
from adaptkit.registry.fsck import FsckReport, fsck
from adaptkit.registry.locate import open_registry, registry_revision, upgrade_registry
from adaptkit.registry.migrate import SchemaVersionError
from adaptkit.registry.registry import (
    ACTIVE,
    CANDIDATE,
    RETIRED,
    ROLLED_BACK,
    ErasureReport,
    GcReport,
    Registry,
    UserInfo,
    VersionInfo,
    lease_holder,
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
    "DatabaseUrlError",
    "ErasureReport",
    "FsckReport",
    "GcReport",
    "PENDING",
    "REJECTED",
    "RegistryBusyError",
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
    "SchemaVersionError",
    "VersionInfo",
    "check_digest",
    "fsck",
    "lease_holder",
    "open_registry",
    "registry_revision",
    "upgrade_registry",
    "sha256_file",
]
