"""Content-addressed blobs verified whole (the config's sha256 beside the weights'),
pinned versions, the audit log of erasures, and trainer leases.

Rows written before this revision keep their ``USER/vN`` blob paths; their config
digest is computed here from the blob as it is at upgrade time (left NULL, and
reported by ``adaptkit fsck``, where the blob is missing).

Revision ID: 0002
Revises: 0001
"""

import hashlib
from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("adapter_versions", sa.Column("config_sha256", sa.String(64), nullable=True))
    op.add_column(
        "adapter_versions",
        sa.Column("pinned", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "registry_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
    )
    op.create_index("ix_registry_audit_user_id", "registry_audit", ["user_id"])
    op.create_table(
        "user_leases",
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(256), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    _record_config_digests(context.config.attributes.get("blob_root"))


def _record_config_digests(blob_root: Path | None) -> None:
    if blob_root is None:
        return
    bind = op.get_bind()
    versions = sa.table(
        "adapter_versions",
        sa.column("id", sa.Integer),
        sa.column("blob_path", sa.Text),
        sa.column("config_sha256", sa.String),
    )
    rows = bind.execute(sa.select(versions.c.id, versions.c.blob_path)).all()
    for row_id, blob_path in rows:
        config = Path(blob_root) / blob_path / "adapter_config.json"
        if config.is_file():
            digest = hashlib.sha256(config.read_bytes()).hexdigest()
            bind.execute(
                versions.update().where(versions.c.id == row_id).values(config_sha256=digest)
            )
