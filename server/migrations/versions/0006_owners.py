"""Task owners, the task history, and one report per client and version (each client's newest kept).

Tasks from before owners have none: only an admin publishes to them until ``plada-server task chown``.

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("owner", sa.String(128), nullable=True))
    op.add_column("tokens", sa.Column("owner", sa.String(128), nullable=True))
    op.create_table(
        "task_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task_ref", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False, index=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.execute("DELETE FROM reports WHERE id NOT IN (SELECT MAX(id) FROM reports GROUP BY version_ref, client_id)")
    op.create_index("uq_reports_version_client", "reports", ["version_ref", "client_id"], unique=True)
