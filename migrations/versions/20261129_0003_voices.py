"""voices, and job mode / voice / language / quality

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 21:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "voices",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("transcript", sa.Text(), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("upload_key", sa.Text(), nullable=True),
        sa.Column("upload_sha256", sa.String(length=64), nullable=True),
        sa.Column("upload_bytes", sa.BigInteger(), nullable=True),
        sa.Column("prompt_key", sa.Text(), nullable=True),
        sa.Column("audio_sha256", sa.String(length=64), nullable=True),
        sa.Column("sample_rate", sa.Integer(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("embedding", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_voices")),
    )
    op.create_index("ix_voices_created_at_id", "voices", ["created_at", "id"], unique=False)
    op.add_column(
        "jobs", sa.Column("mode", sa.String(length=16), server_default="preset", nullable=False)
    )
    op.add_column("jobs", sa.Column("voice_id", postgresql.UUID(as_uuid=True), nullable=True))
    op.add_column("jobs", sa.Column("language", sa.String(length=16), nullable=True))
    op.add_column(
        "jobs", sa.Column("quality", postgresql.JSONB(astext_type=sa.Text()), nullable=True)
    )
    op.create_index(op.f("ix_jobs_voice_id"), "jobs", ["voice_id"], unique=False)
    op.create_foreign_key(
        op.f("fk_jobs_voice_id_voices"), "jobs", "voices", ["voice_id"], ["id"], ondelete="SET NULL"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("fk_jobs_voice_id_voices"), "jobs", type_="foreignkey")
    op.drop_index(op.f("ix_jobs_voice_id"), table_name="jobs")
    op.drop_column("jobs", "quality")
    op.drop_column("jobs", "language")
    op.drop_column("jobs", "voice_id")
    op.drop_column("jobs", "mode")
    op.drop_index("ix_voices_created_at_id", table_name="voices")
    op.drop_table("voices")
