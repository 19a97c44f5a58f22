"""The values the service hands to storage: audit records (``CallRecord``, ``IssuedCard``),
feedback entries (``FeedbackEntry``), past overrides read back (``Override``) and the keyed
patient hash that goes into a record.

Plain frozen values, so the hook path builds them without touching the database (the app's
``cds_service.recording.Recorder`` does). Storage's errors (``UnknownCardError``,
``StorageUnavailableError``) are in ``cds_service.errors``.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Literal

FeedbackOutcome = Literal["accepted", "overridden"]
FEEDBACK_OUTCOMES: tuple[FeedbackOutcome, ...] = ("accepted", "overridden")


def _require_utc_aware(name: str, value: datetime) -> None:
    """Refuse naive datetimes: an audit time without a zone cannot be compared."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")


@dataclass(frozen=True)
class IssuedCard:
    """One card the service returned, with the rule that raised it (for feedback checks)."""

    uuid: str
    rule_id: str
    indicator: str
    suggestion_uuids: tuple[str, ...] = ()
    finding_key: str | None = None  # rule id + what it is about, hashed (no patient data)
    quieted: bool = False  # shown at info as a repeat of an overridden card


@dataclass(frozen=True)
class CallRecord:
    """The audit record of one hook call: what ran, what fired, what was missing.

    ``patient_hash`` is ``hash_patient_id(key, patient_id)``: never the id itself, never a
    name or an access token.
    """

    hook_instance: str
    service_id: str
    hook: str
    called_at: datetime
    duration_ms: float
    rules_evaluated: tuple[str, ...]
    cards: tuple[IssuedCard, ...]
    knowledge_version: str
    unavailable_data: tuple[str, ...]
    patient_hash: str | None
    # Made with the record, so a record written twice (a replayed spool) is stored once.
    call_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        """Check the time has a zone, so stored times compare across instances."""
        _require_utc_aware("called_at", self.called_at)

    @property
    def rules_fired(self) -> tuple[str, ...]:
        """Return the distinct rule ids that produced a card, in card order."""
        return tuple(dict.fromkeys(card.rule_id for card in self.cards))


@dataclass(frozen=True)
class FeedbackEntry:
    """One CDS Hooks 2.0 feedback object (section "Feedback"), in snake_case."""

    card_uuid: str
    outcome: FeedbackOutcome
    accepted_suggestion_ids: tuple[str, ...]
    override_reason_system: str | None
    override_reason_code: str | None
    override_reason_display: str | None
    user_comment: str | None
    outcome_timestamp: datetime

    def __post_init__(self) -> None:
        """Check the outcome and the timestamp, the two fields analytics relies on."""
        if self.outcome not in FEEDBACK_OUTCOMES:
            raise ValueError(f"outcome must be one of {FEEDBACK_OUTCOMES}, got {self.outcome!r}")
        _require_utc_aware("outcome_timestamp", self.outcome_timestamp)


@dataclass(frozen=True)
class Override:
    """The latest override of one finding for one patient (what a repeated card tells)."""

    finding_key: str
    overridden_at: datetime
    reason_code: str | None
    reason_display: str | None
    user_comment: str | None


def hash_patient_id(key: bytes, patient_id: str) -> str:
    """Return HMAC-SHA256(key, patient_id) as hex: links calls for one patient, reveals no id."""
    mac = _keyed_hmac(key).copy()  # the key's pads hashed once, not on every call
    mac.update(patient_id.encode("utf-8"))
    return mac.hexdigest()


@lru_cache(maxsize=8)
def _keyed_hmac(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 with ``key`` and no message yet, to copy per message (thread-safe).

    On the hook path twice a call: OpenSSL's one-shot HMAC looks the digest up anew each time,
    which costs several times the hash itself once the request has evicted it from the caches.
    """
    return hmac.new(key, digestmod=hashlib.sha256)
