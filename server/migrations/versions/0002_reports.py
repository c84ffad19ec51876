"""Client reports on versions.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version_ref", sa.Integer, sa.ForeignKey("versions.id"), nullable=False, index=True),
        sa.Column("client_id", sa.String(128), nullable=False),
        sa.Column("student_arch", sa.String(100), nullable=False),
        sa.Column("epochs", sa.Integer, nullable=False),
        sa.Column("accuracy", sa.Float, nullable=True),
        sa.Column("n_test", sa.Integer, nullable=True),
        sa.Column("wall_s", sa.Float, nullable=False),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
