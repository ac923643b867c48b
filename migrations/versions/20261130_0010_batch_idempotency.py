"""batches.idempotency_key and request_hash: POST /v1/batches takes an Idempotency-Key

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("idempotency_key", sa.String(255), nullable=True))
    op.add_column("batches", sa.Column("request_hash", sa.String(64), nullable=True))
    # Per tenant, as for jobs; NULL keys (no header) never collide.
    op.create_unique_constraint(
        "uq_batches_tenant_id_idempotency_key", "batches", ["tenant_id", "idempotency_key"]
    )


def downgrade() -> None:
    op.drop_constraint("uq_batches_tenant_id_idempotency_key", "batches", type_="unique")
    op.drop_column("batches", "request_hash")
    op.drop_column("batches", "idempotency_key")
