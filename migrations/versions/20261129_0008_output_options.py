"""job output options: bit depth, loudness target, subtitles; timings and subtitle keys

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 22:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("bit_depth", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("loudness_target", sa.Float(), nullable=True))
    op.add_column("jobs", sa.Column("subtitles", sa.String(length=8), nullable=True))
    op.add_column("jobs", sa.Column("timings_key", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("subtitles_key", sa.Text(), nullable=True))


def downgrade() -> None:
    for column in ("subtitles_key", "timings_key", "subtitles", "loudness_target", "bit_depth"):
        op.drop_column("jobs", column)
