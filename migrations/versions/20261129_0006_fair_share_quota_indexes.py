"""indexes for fair-share dispatch and tenant quotas

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The dispatcher's probe for each tenant's oldest undispatched job in one queue
    # (db/dispatch.py): one index lookup per tenant, however long a backlog.
    op.create_index(
        "ix_jobs_undispatched",
        "jobs",
        ["engine", "pool", "priority", "tenant_id", "created_at"],
        unique=False,
        postgresql_where=sa.text("status = 'queued' AND dispatched_at IS NULL"),
    )
    # A tenant's active (queued + running) jobs, counted at each admission (api/quotas.py).
    op.create_index(
        "ix_jobs_tenant_active",
        "jobs",
        ["tenant_id", "status"],
        unique=False,
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_active", table_name="jobs")
    op.drop_index("ix_jobs_undispatched", table_name="jobs")
