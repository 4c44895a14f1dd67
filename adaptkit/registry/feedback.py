"""SQL tables of the feedback log: requests served and the feedback users gave on them.

They share ``Base`` with the adapter tables, so ``Registry(...)`` creates them and the
feedback and the versions trained from it live in one database: an event is marked
consumed in the same transaction that records the version trained on it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from adaptkit.registry.schema import Base, utc_now

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
