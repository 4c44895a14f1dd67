"""The registry as the first release made it (users, adapter versions, requests,
feedback events). A home written by that release has these tables and no version
stamp; ``adaptkit db upgrade`` stamps it with this revision and goes on from here.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # users.active_version_id and adapter_versions.user_id refer to each other: SQLite
    # takes the forward reference inline, PostgreSQL gets it added after both exist.
    user_fks = (
        [sa.ForeignKeyConstraint(["active_version_id"], ["adapter_versions.id"])] if sqlite else []
    )
    op.create_table(
        "users",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active_version_id", sa.Integer, nullable=True),
        *user_fks,
    )
    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(64), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("adapter_versions.id"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("base_model", sa.String(256), nullable=False),
        sa.Column("data_digest", sa.String(64), nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("blob_sha256", sa.String(64), nullable=False),
        sa.Column("blob_path", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Text, nullable=False),
        sa.UniqueConstraint("user_id", "number"),
    )
    op.create_index("ix_adapter_versions_user_id", "adapter_versions", ["user_id"])
    if not sqlite:
        op.create_foreign_key(
            "users_active_version_id_fkey",
            "users",
            "adapter_versions",
            ["active_version_id"],
            ["id"],
        )
    op.create_table(
        "feedback_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(64), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("messages", sa.JSON, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("version_number", sa.Integer, nullable=True),
    )
    op.create_index("ix_feedback_requests_user_id", "feedback_requests", ["user_id"])
    op.create_table(
        "feedback_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(64), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("request_id", sa.Integer, sa.ForeignKey("feedback_requests.id"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column(
            "consumed_by_version_id",
            sa.Integer,
            sa.ForeignKey("adapter_versions.id"),
            nullable=True,
        ),
    )
    op.create_index("ix_feedback_events_user_id", "feedback_events", ["user_id"])
    op.create_index("ix_feedback_events_request_id", "feedback_events", ["request_id"])
    op.create_index("ix_feedback_events_state", "feedback_events", ["state"])
