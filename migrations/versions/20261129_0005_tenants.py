"""tenants, api keys, tenant and pool on jobs and voices

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 21:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DEFAULT_TENANT_ID = "00000000-0000-0000-0000-000000000001"


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("pool", sa.String(length=64), server_default="default", nullable=False),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("jobs_per_minute", sa.Integer(), nullable=True),
        sa.Column("chars_per_day", sa.BigInteger(), nullable=True),
        sa.Column("max_voices", sa.Integer(), nullable=True),
        sa.Column("weight", sa.Integer(), server_default="1", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    # The default tenant owns what existed before tenants and everything made with auth off.
    op.execute(f"INSERT INTO tenants (id, name) VALUES ('{DEFAULT_TENANT_ID}', 'default')")
    op.create_table(
        "api_keys",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=True),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"], unique=False)

    for table in ("jobs", "voices"):
        op.add_column(
            table,
            sa.Column(
                "tenant_id",
                postgresql.UUID(as_uuid=True),
                server_default=sa.text(f"'{DEFAULT_TENANT_ID}'::uuid"),
                nullable=False,
            ),
        )
        # The default fills existing rows; new ones always name their tenant.
        op.alter_column(table, "tenant_id", server_default=None)
        op.create_foreign_key(
            op.f(f"fk_{table}_tenant_id_tenants"),
            table,
            "tenants",
            ["tenant_id"],
            ["id"],
            ondelete="RESTRICT",
        )
    op.add_column(
        "jobs", sa.Column("pool", sa.String(length=64), server_default="default", nullable=False)
    )
    op.add_column("voices", sa.Column("pool", sa.String(length=64), nullable=True))
    op.drop_constraint("uq_jobs_idempotency_key", "jobs", type_="unique")
    op.create_unique_constraint(
        "uq_jobs_tenant_id_idempotency_key", "jobs", ["tenant_id", "idempotency_key"]
    )
    op.create_index(
        "ix_jobs_tenant_id_created_at_id", "jobs", ["tenant_id", "created_at", "id"], unique=False
    )
    op.create_index(
        "ix_voices_tenant_id_created_at_id",
        "voices",
        ["tenant_id", "created_at", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_voices_tenant_id_created_at_id", table_name="voices")
    op.drop_index("ix_jobs_tenant_id_created_at_id", table_name="jobs")
    op.drop_constraint("uq_jobs_tenant_id_idempotency_key", "jobs", type_="unique")
    op.create_unique_constraint("uq_jobs_idempotency_key", "jobs", ["idempotency_key"])
    op.drop_column("voices", "pool")
    op.drop_column("jobs", "pool")
    for table in ("jobs", "voices"):
        op.drop_constraint(op.f(f"fk_{table}_tenant_id_tenants"), table, type_="foreignkey")
        op.drop_column(table, "tenant_id")
    op.drop_index(op.f("ix_api_keys_tenant_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
