"""The server's rows: API keys (stored as their sha256), the completion ids responses
carry, and an idempotency key on feedback events (a retried POST finds its event).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("users", sa.String(256), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "served_completions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("request_id", sa.Integer, sa.ForeignKey("feedback_requests.id"), nullable=False),
        sa.Column("model", sa.String(320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_served_completions_request_id", "served_completions", ["request_id"])
    # SQLite cannot add a constraint in place: batch mode copies the table.
    with op.batch_alter_table("feedback_events") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(128), nullable=True))
        batch.create_unique_constraint(
            "uq_feedback_events_idempotency", ["user_id", "idempotency_key"]
        )
