"""Audit trail of hook calls, issued cards, evaluated rules and clinicians' feedback.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations keep their own copies of types: a later change to schema.py must not
# rewrite history. UTC datetimes are timestamptz on PostgreSQL, text on SQLite.
UTC_DATETIME = sa.DateTime(timezone=True)
AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create the four tables of the audit trail and feedback."""
    op.create_table(
        "cds_hook_call",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("hook_instance", sa.String(255), nullable=False),
        sa.Column("service_id", sa.String(255), nullable=False),
        sa.Column("hook", sa.String(255), nullable=False),
        sa.Column("called_at", UTC_DATETIME, nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("knowledge_version", sa.String(255), nullable=False),
        sa.Column("unavailable_data", sa.JSON(), nullable=False),
        sa.Column("patient_hash", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_cds_hook_call"),
    )
    op.create_index("ix_cds_hook_call_called_at", "cds_hook_call", ["called_at"])
    op.create_index("ix_cds_hook_call_hook_instance", "cds_hook_call", ["hook_instance"])

    op.create_table(
        "cds_issued_card",
        sa.Column("uuid", sa.String(255), nullable=False),
        sa.Column("call_id", sa.String(36), nullable=False),
        sa.Column("service_id", sa.String(255), nullable=False),
        sa.Column("rule_id", sa.String(255), nullable=False),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("suggestion_uuids", sa.JSON(), nullable=False),
        sa.Column("issued_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id"],
            ["cds_hook_call.id"],
            ondelete="CASCADE",
            name="fk_cds_issued_card_call_id_cds_hook_call",
        ),
        sa.PrimaryKeyConstraint("uuid", name="pk_cds_issued_card"),
    )
    op.create_index("ix_cds_issued_card_call_id", "cds_issued_card", ["call_id"])
    op.create_index("ix_cds_issued_card_issued_at", "cds_issued_card", ["issued_at"])
    op.create_index(
        "ix_cds_issued_card_rule_id_issued_at", "cds_issued_card", ["rule_id", "issued_at"]
    )

    op.create_table(
        "cds_rule_evaluation",
        sa.Column("call_id", sa.String(36), nullable=False),
        sa.Column("rule_id", sa.String(255), nullable=False),
        sa.Column("evaluated_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id"],
            ["cds_hook_call.id"],
            ondelete="CASCADE",
            name="fk_cds_rule_evaluation_call_id_cds_hook_call",
        ),
        sa.PrimaryKeyConstraint("call_id", "rule_id", name="pk_cds_rule_evaluation"),
    )
    op.create_index(
        "ix_cds_rule_evaluation_rule_id_evaluated_at",
        "cds_rule_evaluation",
        ["rule_id", "evaluated_at"],
    )

    op.create_table(
        "cds_feedback",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("dedup_key", sa.String(64), nullable=False),
        sa.Column("card_uuid", sa.String(255), nullable=False),
        sa.Column("service_id", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("accepted_suggestion_ids", sa.JSON(), nullable=False),
        sa.Column("override_reason_system", sa.String(255), nullable=True),
        sa.Column("override_reason_code", sa.String(255), nullable=True),
        sa.Column("override_reason_display", sa.Text(), nullable=True),
        sa.Column("user_comment", sa.Text(), nullable=True),
        sa.Column("outcome_timestamp", UTC_DATETIME, nullable=False),
        sa.Column("received_at", UTC_DATETIME, nullable=False),
        sa.CheckConstraint("outcome IN ('accepted', 'overridden')", name="ck_cds_feedback_outcome"),
        sa.ForeignKeyConstraint(
            ["card_uuid"],
            ["cds_issued_card.uuid"],
            ondelete="CASCADE",
            name="fk_cds_feedback_card_uuid_cds_issued_card",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_cds_feedback"),
        sa.UniqueConstraint("dedup_key", name="uq_cds_feedback_dedup_key"),
    )
    op.create_index(
        "ix_cds_feedback_card_uuid_outcome_timestamp",
        "cds_feedback",
        ["card_uuid", "outcome_timestamp"],
    )


def downgrade() -> None:
    """Drop the tables (their indexes go with them), children first."""
    op.drop_table("cds_feedback")
    op.drop_table("cds_rule_evaluation")
    op.drop_table("cds_issued_card")
    op.drop_table("cds_hook_call")
