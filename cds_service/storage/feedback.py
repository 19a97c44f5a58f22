"""Store clinicians' feedback on cards (CDS Hooks 2.0 "Feedback"), once per distinct entry, and
read back the recent overrides of one patient's findings (repeated alerts).

Feedback is de-duplicated by a content hash under a unique constraint with
``ON CONFLICT DO NOTHING`` on both databases, so parallel duplicate posts store one row.
``recent_overrides`` is one query on the hook path: it starts at the patient's calls
(``ix_cds_hook_call_patient_hash``), finds their cards with these finding keys
(``ix_cds_issued_card_call_id_finding_key``) and their feedback (``card_uuid`` index). No index
leads with ``finding_key``: a common finding has cards for every patient, so the query must
start from the one patient's calls.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from cds_service.errors import UnknownCardError

from .engine import Database, as_utc
from .schema import feedback, hook_call, issued_card
from .values import FeedbackEntry, Override


def feedback_dedup_key(entry: FeedbackEntry) -> str:
    """Hash what makes two feedback entries "the same" (display text and order aside)."""
    content = [
        entry.card_uuid,
        entry.outcome,
        sorted(set(entry.accepted_suggestion_ids)),
        entry.override_reason_system,
        entry.override_reason_code,
        entry.user_comment,
        as_utc(entry.outcome_timestamp).isoformat(),
    ]
    return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()


def store_feedback(
    database: Database,
    service_id: str,
    entries: Sequence[FeedbackEntry],
    received_at: datetime,
) -> int:
    """Store feedback entries all-or-nothing; return how many were new (not duplicates).

    Raises UnknownCardError, storing nothing, when any card uuid was not issued by
    ``service_id``.
    """
    if not entries:
        return 0
    card_uuids = list(dict.fromkeys(entry.card_uuid for entry in entries))
    insert = (
        (
            postgresql.insert(feedback)
            if database.dialect == "postgresql"
            else sqlite.insert(feedback)
        )
        .on_conflict_do_nothing(index_elements=[feedback.c.dedup_key])
        .returning(feedback.c.id)
    )
    with database.transaction(write=True) as conn:
        known = set(
            conn.scalars(
                select(issued_card.c.uuid).where(
                    issued_card.c.uuid.in_(card_uuids), issued_card.c.service_id == service_id
                )
            )
        )
        unknown = [card_uuid for card_uuid in card_uuids if card_uuid not in known]
        if unknown:
            raise UnknownCardError(service_id, unknown)
        stored = 0
        for entry in entries:
            result = conn.execute(
                insert.values(
                    dedup_key=feedback_dedup_key(entry),
                    card_uuid=entry.card_uuid,
                    service_id=service_id,
                    outcome=entry.outcome,
                    accepted_suggestion_ids=list(entry.accepted_suggestion_ids),
                    override_reason_system=entry.override_reason_system,
                    override_reason_code=entry.override_reason_code,
                    override_reason_display=entry.override_reason_display,
                    user_comment=entry.user_comment,
                    outcome_timestamp=as_utc(entry.outcome_timestamp),
                    received_at=received_at,
                )
            )
            # Count returned rows: rowcount is not reliable for ON CONFLICT on every driver.
            stored += len(result.all())
    return stored


def recent_overrides(
    database: Database,
    patient_hash: str,
    finding_keys: Collection[str],
    since: datetime,
    timeout_ms: int,
) -> dict[str, Override]:
    """Return per finding key the latest override for this patient at or after ``since``.

    One read-only query on a hook-path connection (no transaction: a single statement reads
    one snapshot), bounded by ``timeout_ms``; outages raise StorageUnavailableError.
    """
    if not finding_keys:
        return {}
    keys = sorted(set(finding_keys))
    start = as_utc(since)
    if database.dialect == "sqlite":
        query = _overrides_query_sqlite(len(keys))
        parameters: tuple[object, ...] = (
            patient_hash,
            *keys,
            start.replace(tzinfo=None).isoformat(" ", "microseconds"),
        )
    else:
        query, parameters = _OVERRIDES_QUERY_PG, (patient_hash, keys, start)

    def read(conn: Any) -> list[tuple[Any, ...]]:
        return list(conn.execute(query, parameters).fetchall())

    found: dict[str, Override] = {}
    for key, when, code, display, comment in database.on_hook_connection(timeout_ms, read):
        found.setdefault(key, Override(key, _utc(when), code, display, comment))
    return found


# Driver SQL, written once rather than built with Core on every call: this read is on the
# hook path, and building and compiling the select cost more than running it (issue 14).
_OVERRIDES_QUERY = (
    "SELECT c.finding_key, f.outcome_timestamp, f.override_reason_code, "
    "f.override_reason_display, f.user_comment "
    f"FROM {hook_call.name} h JOIN {issued_card.name} c ON c.call_id = h.id "
    f"JOIN {feedback.name} f ON f.card_uuid = c.uuid "
    "WHERE h.patient_hash = {mark} AND c.finding_key {keys} "
    "AND f.outcome = 'overridden' AND f.outcome_timestamp >= {mark} "
    "ORDER BY f.outcome_timestamp DESC, f.id DESC"
)
# PostgreSQL: the keys as one array, so the text is the same every call (prepared once).
_OVERRIDES_QUERY_PG = _OVERRIDES_QUERY.format(mark="%s", keys="= ANY(%s)")


@lru_cache(maxsize=16)
def _overrides_query_sqlite(key_count: int) -> str:
    """The read for ``key_count`` finding keys on SQLite (one cached statement per count)."""
    return _OVERRIDES_QUERY.format(mark="?", keys=f"IN ({', '.join(['?'] * key_count)})")


def _utc(value: datetime | str) -> datetime:
    """A stored time as aware UTC (SQLite keeps UTC as naive text, as ``UTCDateTime`` writes)."""
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
