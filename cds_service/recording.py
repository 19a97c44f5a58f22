"""Audit trail of hook calls and storage of clinicians' feedback (CDS Hooks 2.0 #feedback).

Audit records go to a background writer: a database outage is logged and never delays or fails
the cards. Feedback is stored synchronously because the client needs to know it was kept.
"""

from __future__ import annotations

import logging
from datetime import UTC
from typing import Any

from flask import Flask, current_app, g

from cds_service.errors import NotFound, ServiceUnavailable
from cds_service.service import HookOutcome
from cds_service.storage import (
    HASH_KEY_EXTENSION,
    CallRecord,
    FeedbackEntry,
    IssuedCard,
    StorageUnavailableError,
    UnknownCardError,
    get_audit_writer,
    get_storage,
    hash_patient_id,
    init_storage,
    shutdown_storage,
)

log = logging.getLogger(__name__)


def init_recording(app: Flask) -> None:
    init_storage(app)
    app.extensions["cds_feedback"] = store_feedback
    app.extensions.setdefault("cds_closers", []).append(lambda: shutdown_storage(app))
    app.after_request(_audit_after_call)


def call_record(outcome: HookOutcome, hash_key: bytes) -> CallRecord:
    return CallRecord(
        hook_instance=outcome.hook_instance,
        service_id=outcome.service.id,
        hook=outcome.service.hook,
        called_at=outcome.started_at.astimezone(UTC),
        duration_ms=outcome.duration_ms,
        rules_evaluated=outcome.evaluation.rules_evaluated,
        cards=tuple(
            IssuedCard(c.uuid, c.rule_id, c.indicator, c.suggestion_uuids) for c in outcome.cards
        ),
        knowledge_version=outcome.knowledge_version,
        unavailable_data=outcome.unavailable,
        patient_hash=hash_patient_id(hash_key, outcome.patient_id),
    )


def _audit_after_call(response: Any) -> Any:
    """Queue the audit record; a failure here is logged and never touches the cards."""
    outcome: HookOutcome | None = g.pop("hook_outcome", None)
    if outcome is not None and response.status_code == 200:
        try:
            key: bytes = current_app.extensions[HASH_KEY_EXTENSION]
            get_audit_writer().submit(call_record(outcome, key))
        except Exception:  # the audit trail must never fail a hook answer
            log.exception("audit record for hookInstance %s not queued", outcome.hook_instance)
    return response


def store_feedback(service_id: str, items: list[dict[str, Any]]) -> int:
    """Store loaded feedback items; unknown card -> 404, database down -> 503."""
    entries = [_entry(item) for item in items]
    try:
        try:
            return get_storage().store_feedback(service_id, entries)
        except UnknownCardError:
            # The card may still be in the audit writer's queue (cards are recorded in the
            # background): write the queue out and look once more.
            get_audit_writer().flush(2.0)
            return get_storage().store_feedback(service_id, entries)
    except UnknownCardError as exc:
        raise NotFound(
            f"No card issued by service '{service_id}' has uuid "
            + ", ".join(exc.card_uuids)
            + "; nothing was stored",
            extra={"unknownCards": list(exc.card_uuids)},
        ) from exc
    except StorageUnavailableError as exc:
        raise ServiceUnavailable("Feedback could not be stored; please retry") from exc


def _entry(item: dict[str, Any]) -> FeedbackEntry:
    reason = (item.get("override_reason") or {}).get("reason") or {}
    return FeedbackEntry(
        card_uuid=item["card"],
        outcome=item["outcome"],
        accepted_suggestion_ids=tuple(s["id"] for s in item.get("accepted_suggestions") or []),
        override_reason_system=reason.get("system"),
        override_reason_code=reason.get("code"),
        override_reason_display=reason.get("display"),
        user_comment=(item.get("override_reason") or {}).get("user_comment"),
        outcome_timestamp=item["outcome_timestamp"].astimezone(UTC),
    )
