"""The audit and feedback tables (SQLAlchemy Core), mirrored by the Alembic migrations.

Three tables: the hook calls (with the rules each evaluated, as one JSON array text), the
cards they issued, and the feedback on those cards.

Times are stored in UTC: ``timestamptz`` on PostgreSQL, UTC text on SQLite; both come back
as aware datetimes through ``UTCDateTime``. Change a table here *and* add a migration;
``tests/test_storage.py`` fails when the two drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.sql.expression import false
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so later migrations can refer to them on both databases.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Store aware datetimes as UTC and always return them aware (SQLite drops zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; naive datetimes are refused rather than guessed."""
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored as UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Attach UTC to SQLite's naive values; normalise PostgreSQL's to UTC."""
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
AutoId = BigInteger().with_variant(Integer(), "sqlite")

hook_call = Table(
    "cds_hook_call",
    metadata,
    Column("id", String(36), primary_key=True),  # a uuid4 made by the writer
    Column("hook_instance", String(255), nullable=False),
    Column("service_id", String(255), nullable=False),
    Column("hook", String(255), nullable=False),
    Column("called_at", UTCDateTime(), nullable=False),
    Column("duration_ms", Float(), nullable=False),
    Column("knowledge_version", String(255), nullable=False),
    Column("unavailable_data", JSON(), nullable=False),
    Column("patient_hash", String(64), nullable=True),  # HMAC-SHA256 of the patient id
    # The rule ids evaluated in the call: one JSON array text, sorted (``rule_ids_text``), so
    # the analytics count calls per distinct list and a write is one row (migration 0003).
    Column("rules_evaluated", Text(), nullable=False, server_default="[]"),
    Index(None, "called_at"),
    Index(None, "hook_instance"),
    Index(None, "patient_hash"),  # the repeat lookup starts here (migration 0002)
)

issued_card = Table(
    "cds_issued_card",
    metadata,
    Column("uuid", String(255), primary_key=True),
    Column("call_id", String(36), ForeignKey(hook_call.c.id, ondelete="CASCADE"), nullable=False),
    Column("service_id", String(255), nullable=False),
    Column("rule_id", String(255), nullable=False),
    Column("indicator", String(16), nullable=False),
    Column("suggestion_uuids", JSON(), nullable=False),
    Column("issued_at", UTCDateTime(), nullable=False),
    # SHA-256 of rule id + what the finding is about (Finding.finding_key; no patient data).
    Column("finding_key", String(64), nullable=True),
    # Shown at info because the same finding was overridden for this patient lately.
    Column("quieted", Boolean(), nullable=False, server_default=false()),
    Index(None, "rule_id", "issued_at"),
    Index(None, "issued_at"),
    # The repeat lookup, after the patient's calls; also the call's cards (no index on call_id
    # alone: this one serves it, and each index is a page more per audit write).
    Index(None, "call_id", "finding_key"),
)

feedback = Table(
    "cds_feedback",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    # SHA-256 of the entry's content: the same feedback sent twice collides here.
    Column("dedup_key", String(64), nullable=False, unique=True),
    Column(
        "card_uuid", String(255), ForeignKey(issued_card.c.uuid, ondelete="CASCADE"), nullable=False
    ),
    Column("service_id", String(255), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("accepted_suggestion_ids", JSON(), nullable=False),
    Column("override_reason_system", String(255), nullable=True),
    Column("override_reason_code", String(255), nullable=True),
    Column("override_reason_display", Text(), nullable=True),
    Column("user_comment", Text(), nullable=True),
    Column("outcome_timestamp", UTCDateTime(), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    CheckConstraint("outcome IN ('accepted', 'overridden')", name="outcome"),
    Index(None, "card_uuid", "outcome_timestamp"),
)

TABLES = (hook_call, issued_card, feedback)


def rule_ids_text(rule_ids: Iterable[str]) -> str:
    """Return how ``cds_hook_call.rules_evaluated`` stores rule ids: a compact JSON array,
    sorted and without duplicates (equal lists are equal text, so they group)."""
    return json.dumps(sorted(set(rule_ids)), separators=(",", ":"), ensure_ascii=False)


def rule_ids_from_text(stored: str) -> tuple[str, ...]:
    """Read ``cds_hook_call.rules_evaluated`` back (any JSON array of strings)."""
    rule_ids = json.loads(stored)
    if not isinstance(rule_ids, list) or not all(isinstance(r, str) for r in rule_ids):
        raise ValueError(f"rules_evaluated is not a JSON array of rule ids: {stored[:80]!r}")
    return tuple(rule_ids)
