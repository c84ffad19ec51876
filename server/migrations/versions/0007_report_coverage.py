"""Client reports say how much of the payload the client's own pool copy held (missing, other pictures,
re-encoded): a nullable JSON column, empty for byte-identical copies and older clients; and who wrote each
report (``reporter``: the owner or token that first wrote it; empty for reports from before this revision).

Revision ID: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reports") as batch:
        batch.add_column(sa.Column("coverage", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("reporter", sa.String(160), nullable=True))
