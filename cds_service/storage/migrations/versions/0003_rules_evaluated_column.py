"""The rules a call evaluated as one column of the call (a JSON array text) instead of a row per
rule in cds_rule_evaluation, and no index on cds_issued_card.call_id alone (the index on
call_id + finding_key serves it): an audit write is one call row and its cards (issue 14).

Upgrade moves every call's evaluated rules into ``cds_hook_call.rules_evaluated`` (sorted by
code point, compact, as ``schema.rule_ids_text`` writes them), then drops the old table;
downgrade rebuilds the table from the column (``evaluated_at`` is the call's time, as it always
was) and drops the column. SQL per database: SQLite's JSON functions (3.38+, or the JSON1
extension) and ``ALTER TABLE ... DROP COLUMN`` (3.35+), PostgreSQL's json functions. No table
is rebuilt on SQLite: a rebuilt parent table would cascade-delete its children.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)  # as 0001 created it

# Per database: fill rules_evaluated from the rows (a call without rows keeps "[]").
_FILL = {
    "sqlite": (
        "UPDATE cds_hook_call SET rules_evaluated = ("
        "SELECT json_group_array(rule_id) FROM ("
        "SELECT e.rule_id FROM cds_rule_evaluation e WHERE e.call_id = cds_hook_call.id "
        "ORDER BY e.rule_id)) "
        "WHERE id IN (SELECT call_id FROM cds_rule_evaluation)"
    ),
    "postgresql": (
        "UPDATE cds_hook_call h SET rules_evaluated = e.rules FROM ("
        "SELECT call_id, "
        "'[' || string_agg(to_json(rule_id)::text, ',' ORDER BY rule_id COLLATE \"C\") || ']' "
        "AS rules FROM cds_rule_evaluation GROUP BY call_id) e "
        "WHERE e.call_id = h.id"
    ),
}
# Per database: the rows back from the column, one per distinct rule id of a call.
_RESTORE = {
    "sqlite": (
        "INSERT INTO cds_rule_evaluation (call_id, rule_id, evaluated_at) "
        "SELECT DISTINCT h.id, j.value, h.called_at "
        "FROM cds_hook_call h, json_each(h.rules_evaluated) j"
    ),
    "postgresql": (
        "INSERT INTO cds_rule_evaluation (call_id, rule_id, evaluated_at) "
        "SELECT DISTINCT h.id, j.value, h.called_at FROM cds_hook_call h "
        "CROSS JOIN LATERAL json_array_elements_text(h.rules_evaluated::json) AS j(value)"
    ),
}


def _dialect() -> str:
    """The database this migration runs on (only SQLite and PostgreSQL are supported)."""
    name = op.get_bind().dialect.name
    if name not in _FILL:
        raise NotImplementedError(f"migration 0003 supports SQLite and PostgreSQL, not {name}")
    return name


def upgrade() -> None:
    """Add cds_hook_call.rules_evaluated, move the rows into it, drop cds_rule_evaluation."""
    dialect = _dialect()
    op.add_column(
        "cds_hook_call",
        sa.Column("rules_evaluated", sa.Text(), nullable=False, server_default="[]"),
    )
    op.execute(_FILL[dialect])
    op.drop_table("cds_rule_evaluation")  # its index goes with it
    op.drop_index("ix_cds_issued_card_call_id", table_name="cds_issued_card")


def downgrade() -> None:
    """Rebuild cds_rule_evaluation from the column, then drop the column."""
    dialect = _dialect()
    op.create_index("ix_cds_issued_card_call_id", "cds_issued_card", ["call_id"])
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
    op.execute(_RESTORE[dialect])
    # Plain DROP COLUMN on both databases (batch mode would rebuild the table on SQLite).
    op.execute("ALTER TABLE cds_hook_call DROP COLUMN rules_evaluated")
