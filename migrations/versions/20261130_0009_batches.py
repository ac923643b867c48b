"""batches: a batch row per POST /v1/batches, jobs.batch_id/batch_index, batch webhooks

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.Column(
            "tenant_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("tenants.id", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("total_chars", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("concatenate", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("canceled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("audio_key", sa.Text(), nullable=True),
        sa.Column("audio_status", sa.String(length=16), nullable=True),
        sa.Column("audio_error", sa.Text(), nullable=True),
        sa.Column("audio_duration_s", sa.Float(), nullable=True),
    )
    op.create_index(
        "ix_batches_tenant_id_created_at_id", "batches", ["tenant_id", "created_at", "id"]
    )
    op.create_index(
        "ix_batches_open",
        "batches",
        ["created_at"],
        postgresql_where=sa.text("completed_at IS NULL"),
    )
    op.add_column(
        "jobs",
        sa.Column(
            "batch_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("batches.id", ondelete="SET NULL", name="fk_jobs_batch_id_batches"),
            nullable=True,
        ),
    )
    op.add_column("jobs", sa.Column("batch_index", sa.Integer(), nullable=True))
    op.create_index(
        "ix_jobs_batch_id_batch_index",
        "jobs",
        ["batch_id", "batch_index"],
        postgresql_where=sa.text("batch_id IS NOT NULL"),
    )
    # A batch's own events (batch.completed) have no job.
    op.alter_column("webhook_deliveries", "job_id", nullable=True)
    op.add_column(
        "webhook_deliveries",
        sa.Column(
            "batch_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey(
                "batches.id", ondelete="CASCADE", name="fk_webhook_deliveries_batch_id_batches"
            ),
            nullable=True,
        ),
    )
    op.create_index("ix_webhook_deliveries_batch_id", "webhook_deliveries", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_batch_id", table_name="webhook_deliveries")
    op.drop_column("webhook_deliveries", "batch_id")
    op.execute("DELETE FROM webhook_deliveries WHERE job_id IS NULL")
    op.alter_column("webhook_deliveries", "job_id", nullable=False)
    op.drop_index("ix_jobs_batch_id_batch_index", table_name="jobs")
    op.drop_column("jobs", "batch_index")
    op.drop_column("jobs", "batch_id")
    op.drop_index("ix_batches_open", table_name="batches")
    op.drop_index("ix_batches_tenant_id_created_at_id", table_name="batches")
    op.drop_table("batches")
