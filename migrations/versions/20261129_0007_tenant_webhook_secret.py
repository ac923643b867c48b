"""a webhook signing secret per tenant

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 21:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("webhook_secret", sa.String(length=128), nullable=True))


def downgrade() -> None:
    op.drop_column("tenants", "webhook_secret")
