"""Repeated alerts: a warning or info finding overridden lately for this patient comes back as info.

Decision "repeated alerts" (knowledge/voclosporin.md; HL7 PDDI CDS IG "filter-out-repeated-
alerts"): a warning or info card that a clinician overrode for the same patient and the same
finding (``Finding.finding_key``: rule id + what it is about) within ``window_days`` is shown at
info and says when and why it was overridden. Critical findings never change, and neither does
the data-unavailable card: a check that could not run this time is not the finding overridden
before. Runs after the engine (rules stay pure), before cards are built; the past overrides come
from an injected ``OverrideLookup`` (the app wires one over the shared database), asked at most
once per call and not at all when nothing could be quieted. Flask-free and storage-free.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from cds_service.rules.engine import DATA_UNAVAILABLE
from cds_service.rules.model import SEVERITY, Finding
from fhir_mappings.knowledge import Knowledge

if TYPE_CHECKING:
    from cds_service.storage.values import Override

QUIETABLE = frozenset({"warning", "info"})
NEVER_QUIETED = frozenset({DATA_UNAVAILABLE})


class OverrideLookup(Protocol):
    """Where past overrides come from; must answer in bounded time, never raise."""

    def recent_overrides(
        self, patient_id: str, finding_keys: Collection[str], since: datetime
    ) -> Mapping[str, Override]:
        """Per finding key, the latest override for this patient since ``since``."""
        ...


class RepeatFilter:
    """Quiet repeated findings; ``window_days`` 0 (or no lookup) turns it off."""

    def __init__(
        self, lookup: OverrideLookup | None, window_days: int, knowledge: Knowledge
    ) -> None:
        if window_days < 0:
            raise ValueError(f"the repeat window cannot be negative, got {window_days}")
        self.lookup = lookup
        self.window_days = window_days
        self.knowledge = knowledge

    @property
    def enabled(self) -> bool:
        """Tell whether repeats are quieted at all."""
        return self.lookup is not None and self.window_days > 0

    def apply(
        self, findings: tuple[Finding, ...], patient_id: str | None, now: datetime
    ) -> tuple[Finding, ...]:
        """Return ``findings`` with recent repeats at info, in severity order."""
        if not self.enabled or self.lookup is None or not patient_id:
            return findings
        keys = sorted({f.finding_key for f in findings if quietable(f)})
        if not keys:
            return findings
        overrides = self.lookup.recent_overrides(
            patient_id, keys, now - timedelta(days=self.window_days)
        )
        if not overrides:
            return findings
        result = [
            self._quiet(f, overrides[f.finding_key])
            if quietable(f) and f.finding_key in overrides
            else f
            for f in findings
        ]
        result.sort(key=lambda f: SEVERITY[f.indicator])  # stable: the engine's order within
        return tuple(result)

    def _quiet(self, finding: Finding, override: Override) -> Finding:
        """Show ``finding`` at info, saying when and why it was overridden."""

        def text(name: str, **values: object) -> str:
            return self.knowledge.card_text(DATA_UNAVAILABLE, name, **values)

        date = override.overridden_at.date().isoformat()
        reason = override.reason_display or override.reason_code or text("repeat_no_reason")
        if override.user_comment:
            reason = text("repeat_reason_comment", reason=reason, comment=override.user_comment)
        return replace(
            finding,
            indicator="info",
            summary=text("repeat_summary", date=date, summary=finding.summary),
            detail=text("repeat_note", date=date, reason=reason) + "\n\n" + finding.detail,
            quieted=True,
        )


def quietable(finding: Finding) -> bool:
    """Tell whether ``finding`` may be quieted as a repeat (never critical, never data gaps)."""
    return finding.indicator in QUIETABLE and finding.rule_id not in NEVER_QUIETED
