"""SQL tables of the registry's database (SQLAlchemy 2 ORM). Plain rows: no torch in here.

Users and their adapter versions; the requests served and the feedback users gave on
them. They live in one database so an event is marked consumed in the same
transaction that records the version trained on it (``adaptkit.feedback`` holds what
the events mean; this module only how they are stored).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    # The one version that serves this user; NULL until the first publish.
    active_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", use_alter=True), nullable=True
    )


class AdapterVersionRow(Base):
    """An immutable adapter version. Rows are never updated except ``status``."""

    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("user_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per user: what people type
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    method: Mapped[str] = mapped_column(String(32))
    base_model: Mapped[str] = mapped_column(String(256))
    data_digest: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    blob_sha256: Mapped[str] = mapped_column(String(64))  # of adapter_model.safetensors
    blob_path: Mapped[str] = mapped_column(Text)  # relative to the blob store's root
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    status_reason: Mapped[str] = mapped_column(Text, default="")
    # Of adapter_config.json: the config is part of what a version is (lora_alpha and
    # use_rslora change the model). NULL only on rows whose blob was missing at upgrade.
    config_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Kept by `adaptkit gc` whatever its age.
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class AuditRow(Base):
    """One audited operation (an erasure): who, when, what and how many; no content."""

    __tablename__ = "registry_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    counts: Mapped[dict] = mapped_column(JSON, default=dict)


class LeaseRow(Base):
    """Which worker trains a user until when (expired leases are free to take)."""

    __tablename__ = "user_leases"

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# Lifecycle of an event: pending -> consumed (trained | held-out | skipped) or rejected.
PENDING, CONSUMED, REJECTED = "pending", "consumed", "rejected"


class RequestRow(Base):
    """One answered request: what the user asked and what the assistant said."""

    __tablename__ = "feedback_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    messages: Mapped[list] = mapped_column(JSON)  # [{role, content}, ...] ending with the user
    response: Mapped[str] = mapped_column(Text)
    # The adapter version that answered (None: the base model), for attribution.
    version_number: Mapped[int | None] = mapped_column(Integer, nullable=True)


class FeedbackEventRow(Base):
    """One feedback event. Written and committed before it is acknowledged."""

    __tablename__ = "feedback_events"
    # A retried POST carrying the same idempotency key finds the event the first made.
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_feedback_events_idempotency"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    request_id: Mapped[int | None] = mapped_column(
        ForeignKey("feedback_requests.id"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    kind: Mapped[str] = mapped_column(String(16))  # accept | up | down | edit | pair | note
    payload: Mapped[dict] = mapped_column(JSON, default=dict)  # text / chosen / rejected
    state: Mapped[str] = mapped_column(String(16), default=PENDING, index=True)
    # How it was used: "trained", "held-out", "skipped: <why>", "rejected: <why>".
    outcome: Mapped[str] = mapped_column(Text, default="")
    consumed_by_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id"), nullable=True
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)


class ApiKeyRow(Base):
    """A bearer key of the server, stored as its sha256 only (the key is shown once)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the key
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell keys apart
    scope: Mapped[str] = mapped_column(String(8))  # app | admin
    users: Mapped[str] = mapped_column(String(256), default="*")  # glob of reachable users
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ServedCompletionRow(Base):
    """The id a response carried (``chatcmpl-...``, known before the answer is) -> the
    stored request."""

    __tablename__ = "served_completions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("feedback_requests.id"), index=True)
    model: Mapped[str] = mapped_column(String(320))  # the exact model that answered
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
