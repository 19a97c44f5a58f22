"""Repeated alerts: the finding key and the quieted flag of each issued card, and the indexes
that make "overrides of these findings for this patient" one indexed query.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add cds_issued_card.finding_key and .quieted; index the repeat lookup."""
    # Plain ADD COLUMN works on both databases (SQLite needs the server default for NOT NULL);
    # cards issued before this migration have no key and are never taken for a repeat.
    op.add_column("cds_issued_card", sa.Column("finding_key", sa.String(64), nullable=True))
    op.add_column(
        "cds_issued_card",
        sa.Column("quieted", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_cds_hook_call_patient_hash", "cds_hook_call", ["patient_hash"])
    op.create_index(
        "ix_cds_issued_card_call_id_finding_key", "cds_issued_card", ["call_id", "finding_key"]
    )


def downgrade() -> None:
    """Drop what upgrade added.

    Plain DROP COLUMN on both databases (SQLite 3.35+): batch mode would rebuild the table on
    SQLite, and dropping the old copy with foreign keys on deletes every card's feedback.
    """
    op.drop_index("ix_cds_issued_card_call_id_finding_key", table_name="cds_issued_card")
    op.drop_index("ix_cds_hook_call_patient_hash", table_name="cds_hook_call")
    op.execute("ALTER TABLE cds_issued_card DROP COLUMN quieted")
    op.execute("ALTER TABLE cds_issued_card DROP COLUMN finding_key")
