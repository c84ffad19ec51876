"""Job messages of up to 2,000 characters (SQLite rebuilds the small jobs table; PostgreSQL alters the type).

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("message", type_=sa.String(2000), existing_type=sa.String(500), existing_nullable=False)
