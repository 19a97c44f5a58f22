"""Builders for audit records, feedback and seed data, shared by the storage tests.

Also the queries tests use to read what was stored (``calls_for_hook_instance``,
``feedback_count``): the service itself never reads the audit trail back.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask import Flask
from sqlalchemy import func, select

from cds_service.analytics import analytics_bp
from cds_service.app import register_error_handlers
from cds_service.storage import (
    CallRecord,
    FeedbackEntry,
    IssuedCard,
    Storage,
    db_cli,
    hash_patient_id,
    init_storage,
)
from cds_service.storage.schema import feedback as feedback_table
from cds_service.storage.schema import hook_call, issued_card, rule_ids_from_text

NRCS = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"


def sqlite_url(directory: Path) -> str:
    """Return the URL of a fresh SQLite file in ``directory``."""
    return f"sqlite:///{directory / 'cds-test.sqlite3'}"


def make_app(instance_path: Path, **config: object) -> Flask:
    """Build the smallest app that wires storage, as create_app will."""
    app = Flask("cds_service", instance_path=str(instance_path))
    app.config.update(
        TESTING=True,
        CDS_DATABASE_URL=None,
        CDS_AUDIT_HASH_KEY="test-key",
        CDS_ANALYTICS_TOKEN=None,
        CDS_JWT_ISSUERS=None,
    )
    app.config.setdefault("CDS_CLOCK", lambda: datetime.now(UTC))
    app.config.update(config)
    init_storage(app)
    app.cli.add_command(db_cli)
    register_error_handlers(app)
    app.register_blueprint(analytics_bp)
    return app


SERVICE_ID = "voclosporin-order-select"
RULES = ("ddi-strong-cyp3a4", "renal-egfr-low", "bp-uncontrolled", "vaccine-live")


@dataclass(frozen=True)
class Seeded:
    """What ``seed`` stored, for tests that check the numbers."""

    calls: int
    cards: dict[str, list[str]]  # rule id -> card uuids
    now: datetime


def call(
    hook_instance: str,
    called_at: datetime,
    cards: tuple[IssuedCard, ...],
    rules: tuple[str, ...] = RULES,
    service_id: str = SERVICE_ID,
    patient: str = "Patient/123",
) -> CallRecord:
    """Build an audit record with sensible defaults."""
    return CallRecord(
        hook_instance=hook_instance,
        service_id=service_id,
        hook="order-select",
        called_at=called_at,
        duration_ms=42.0,
        rules_evaluated=rules,
        cards=cards,
        knowledge_version="2026.11.0",
        unavailable_data=("egfr",),
        patient_hash=hash_patient_id(b"test-key", patient),
    )


def card(
    rule_id: str, indicator: str = "warning", suggestions: int = 1, quieted: bool = False
) -> IssuedCard:
    """Build an issued card with fresh uuids (``quieted``: shown at info as a repeat)."""
    return IssuedCard(
        str(uuid.uuid4()),
        rule_id,
        indicator,
        tuple(str(uuid.uuid4()) for _ in range(suggestions)),
        finding_key=f"{rule_id}-key",
        quieted=quieted,
    )


def accepted(card_uuid: str, at: datetime, suggestion: str = "s1") -> FeedbackEntry:
    """Build an "accepted" feedback entry."""
    return FeedbackEntry(card_uuid, "accepted", (suggestion,), None, None, None, None, at)


def overridden(
    card_uuid: str,
    at: datetime,
    code: str | None = "cds-not-applicable",
    comment: str | None = None,
) -> FeedbackEntry:
    """Build an "overridden" feedback entry with a coded reason (or only a comment)."""
    display = None if code is None else code.replace("-", " ").capitalize()
    return FeedbackEntry(
        card_uuid, "overridden", (), NRCS if code else None, code, display, comment, at
    )


def seed(storage: Storage, now: datetime | None = None) -> Seeded:
    """Store a realistic fortnight: four rules, 40 calls, mixed outcomes and reasons, and two
    bp-uncontrolled cards quieted as repeats."""
    now = now or datetime.now(UTC)
    cards: dict[str, list[str]] = {rule: [] for rule in RULES}
    records = []
    feedback = []
    for index in range(40):
        at = now - timedelta(days=index % 14, hours=1 + index % 5)
        issued: list[IssuedCard] = []
        if index % 2 == 0:
            issued.append(card("ddi-strong-cyp3a4", "critical"))
        if index % 5 == 0:
            issued.append(card("renal-egfr-low", "warning"))
        if index % 8 == 0:  # every other one a repeat of an overridden card, quieted to info
            issued.append(card("bp-uncontrolled", "info", quieted=index % 16 == 8))
        records.append(call(f"hook-{index}", at, tuple(issued), patient=f"Patient/{index % 7}"))
        for item in issued:
            cards[item.rule_id].append(item.uuid)
            later = at + timedelta(minutes=2)
            if item.rule_id == "ddi-strong-cyp3a4":
                if index % 3 == 0:
                    feedback.append(overridden(item.uuid, later, "recipient-disagrees-evidence"))
                elif index % 3 == 1:
                    feedback.append(overridden(item.uuid, later, "cds-not-applicable"))
                    feedback.append(
                        overridden(
                            item.uuid, later + timedelta(minutes=1), None, "on ketoconazole taper"
                        )
                    )
                else:
                    feedback.append(accepted(item.uuid, later, item.suggestion_uuids[0]))
            elif item.rule_id == "renal-egfr-low" and index % 10 == 0:
                feedback.append(accepted(item.uuid, later, item.suggestion_uuids[0]))
    storage.record_calls(records)
    storage.store_feedback(SERVICE_ID, feedback)
    return Seeded(len(records), cards, now)


def calls_for_hook_instance(storage: Storage, hook_instance: str) -> list[CallRecord]:
    """Rebuild the audit records of one hookInstance from the tables."""
    with storage.engine.connect() as conn:
        rows = (
            conn.execute(
                select(hook_call)
                .where(hook_call.c.hook_instance == hook_instance)
                .order_by(hook_call.c.called_at, hook_call.c.id)
            )
            .mappings()
            .all()
        )
        ids = [row["id"] for row in rows]
        cards: dict[str, list[IssuedCard]] = defaultdict(list)
        for card in conn.execute(
            select(issued_card).where(issued_card.c.call_id.in_(ids)).order_by(issued_card.c.uuid)
        ).mappings():
            cards[card["call_id"]].append(
                IssuedCard(
                    card["uuid"],
                    card["rule_id"],
                    card["indicator"],
                    tuple(card["suggestion_uuids"]),
                    card["finding_key"],
                    bool(card["quieted"]),
                )
            )
    return [
        CallRecord(
            hook_instance=row["hook_instance"],
            service_id=row["service_id"],
            hook=row["hook"],
            called_at=row["called_at"],
            duration_ms=row["duration_ms"],
            rules_evaluated=rule_ids_from_text(row["rules_evaluated"]),
            cards=tuple(cards[row["id"]]),
            knowledge_version=row["knowledge_version"],
            unavailable_data=tuple(row["unavailable_data"]),
            patient_hash=row["patient_hash"],
        )
        for row in rows
    ]


def feedback_count(storage: Storage) -> int:
    """Return how many distinct feedback entries are stored."""
    with storage.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(feedback_table)) or 0)
