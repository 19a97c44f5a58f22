"""Record what the service did: hook calls into the audit trail, clinicians' feedback into storage.

The app's side of the audit trail and of CDS Hooks 2.0 #feedback: the ``Recorder`` turns a
``HookOutcome`` into a ``CallRecord`` and loaded feedback into ``FeedbackEntry`` values (the
values storage takes, ``cds_service.storage.values``), and hands them over. Audit records go to
the ``AuditWriter`` (``cds_service.storage.audit``) before the answer leaves: the database
within a short bound, else the local spool, so any instance knows the card at once and an
outage never fails the cards. Feedback is stored synchronously because the client needs to
know it was kept; at most ``feedback_slots`` writes per process run at once (a stalled
database cannot take every thread the hook path needs): beyond that 503 with Retry-After.
Flask-free: the views call the app's ``Recorder`` directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from cds_service.errors import (
    CardNotYetRecorded,
    FeedbackBusy,
    StorageUnavailableError,
    UnknownCardError,
)
from cds_service.service import HookOutcome
from cds_service.storage import (
    AuditWriter,
    CallRecord,
    FeedbackEntry,
    IssuedCard,
    Override,
    Storage,
    hash_patient_id,
)

log = logging.getLogger(__name__)
RECORDER_EXTENSION = "cds_recorder"


class Recorder:
    """Turns hook outcomes and loaded feedback into storage records.

    ``reason_displays``: (system, code) -> display of the override reasons the cards offer, so
    feedback that names a reason by code and system only (the Sandbox does) is stored with the
    display the clinician saw.
    """

    def __init__(
        self,
        storage: Storage,
        writer: AuditWriter,
        hash_key: bytes,
        reason_displays: Mapping[tuple[str, str], str] | None = None,
        *,
        feedback_slots: int = 2,
        feedback_wait_s: float = 0.25,
    ) -> None:
        self.storage = storage
        self.writer = writer
        self.hash_key = hash_key
        self.reason_displays = dict(reason_displays or {})
        self.feedback_wait_s = feedback_wait_s
        self._feedback_slots = threading.BoundedSemaphore(feedback_slots)

    def record_call(self, outcome: HookOutcome) -> None:
        """Queue the audit record; a failure here is logged and never touches the cards."""
        try:
            self.writer.submit(call_record(outcome, self.hash_key))
        except Exception:  # the audit trail must never fail a hook answer
            log.exception("audit record for hookInstance %s not queued", outcome.hook_instance)

    def store_feedback(self, service_id: str, items: list[dict[str, Any]]) -> int:
        """Store loaded feedback items; 404 unknown card, 503 (Retry-After) database down,
        card still spooled, or every feedback slot taken."""
        entries = [feedback_entry(item, self.reason_displays) for item in items]
        if not self._feedback_slots.acquire(timeout=self.feedback_wait_s):
            raise FeedbackBusy()
        try:
            return self.storage.store_feedback(service_id, entries)
        except UnknownCardError as exc:
            # Issued here while the database was away: the record waits in the spool, and a
            # retry after its replay succeeds. A card no instance issued stays a 404.
            spool = self.writer.spool
            if spool is None or not spool.holds_any(exc.card_uuids):
                raise
            if self.writer.replay(time.monotonic() + 1.0):
                try:
                    return self.storage.store_feedback(service_id, entries)
                except UnknownCardError:
                    pass  # spooled by another process of this folder, not replayed yet
            raise CardNotYetRecorded() from exc
        except StorageUnavailableError as exc:
            log.error("feedback not stored: %s", exc)
            raise StorageUnavailableError(
                str(exc), detail="Feedback could not be stored; please retry"
            ) from exc
        finally:
            self._feedback_slots.release()


def call_record(outcome: HookOutcome, hash_key: bytes) -> CallRecord:
    """Build the audit record of one hook call; the patient id goes in only as a keyed hash."""
    return CallRecord(
        hook_instance=outcome.hook_instance,
        service_id=outcome.service.id,
        hook=outcome.service.hook,
        called_at=outcome.started_at.astimezone(UTC),
        duration_ms=outcome.duration_ms,
        rules_evaluated=outcome.evaluation.rules_evaluated,
        cards=tuple(
            IssuedCard(c.uuid, c.rule_id, c.indicator, c.suggestion_uuids, c.finding_key, c.quieted)
            for c in outcome.cards
        ),
        knowledge_version=outcome.knowledge_version,
        unavailable_data=outcome.unavailable,
        patient_hash=hash_patient_id(hash_key, outcome.patient_id),
    )


def feedback_entry(
    item: dict[str, Any], reason_displays: Mapping[tuple[str, str], str] | None = None
) -> FeedbackEntry:
    """A loaded FeedbackItemSchema (snake_case) as the record storage keeps.

    A reason without a display whose system and code the service issued gets the issued
    display; a display the client sent is kept as sent; an unknown code stays without one.
    """
    reason = (item.get("override_reason") or {}).get("reason") or {}
    system, code, display = reason.get("system"), reason.get("code"), reason.get("display")
    if not display and isinstance(system, str) and isinstance(code, str):
        display = (reason_displays or {}).get((system, code))
    return FeedbackEntry(
        card_uuid=item["card"],
        outcome=item["outcome"],
        accepted_suggestion_ids=tuple(s["id"] for s in item.get("accepted_suggestions") or []),
        override_reason_system=system,
        override_reason_code=code,
        override_reason_display=display,
        user_comment=(item.get("override_reason") or {}).get("user_comment"),
        outcome_timestamp=item["outcome_timestamp"].astimezone(UTC),
    )


class StoredOverrides:
    """Past overrides read from the shared database for repeated alerts (``OverrideLookup``).

    On the hook path, so never raises and never waits long: the read is bounded by
    ``timeout_ms`` (lock and statement timeouts); when the database fails the answer is "no
    overrides known" (cards go out unquieted), logged, and the database is not asked again for
    ``retry_after_s``, so an outage does not add its connect timeout to every call.
    """

    def __init__(
        self,
        storage: Storage,
        hash_key: bytes,
        timeout_ms: int = 500,
        retry_after_s: float = 30.0,
    ) -> None:
        self.storage = storage
        self.hash_key = hash_key
        self.timeout_ms = timeout_ms
        self.retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._resume_at = 0.0

    def recent_overrides(
        self, patient_id: str, finding_keys: Collection[str], since: datetime
    ) -> Mapping[str, Override]:
        """Per finding key, this patient's latest override since ``since``; {} on failure."""
        with self._lock:
            if time.monotonic() < self._resume_at:
                return {}
        try:
            return self.storage.recent_overrides(
                hash_patient_id(self.hash_key, patient_id), finding_keys, since, self.timeout_ms
            )
        except Exception as exc:  # repeats are a courtesy: the cards must go out regardless
            with self._lock:
                self._resume_at = time.monotonic() + self.retry_after_s
            log.error(
                "past overrides not read (%s: %s); cards go out unquieted, next try in %.0f s",
                type(exc).__name__,
                exc,
                self.retry_after_s,
            )
            return {}
