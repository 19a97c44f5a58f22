"""What rules produce: findings (with proposed order changes) and "could not check" notes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Literal, TypeVar

from fhir_mappings.facts import BloodPressure, Measurement, Medication, PatientFacts
from fhir_mappings.knowledge import CardTexts, Knowledge
from fhir_mappings.vocabulary import DataCategory

Indicator = Literal["info", "warning", "critical"]
SEVERITY: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class RemoveOrder:
    """Take a draft order out of the order session (CDS Hooks `delete` action)."""

    order: Medication


@dataclass(frozen=True)
class ReplaceDosage:
    """Replace the dosing of a draft order (CDS Hooks `update` action with the full resource).

    ``doses`` holds (mg, time of day or None) for each administration in a day; ``whole`` is
    False when they are this order's part of a regimen split over several drafts (the
    suggestion's other actions rewrite the rest; ``description`` names the whole regimen).
    """

    order: Medication
    doses: tuple[tuple[float, str | None], ...]
    description: str
    whole: bool = True


Action = RemoveOrder | ReplaceDosage


@dataclass(frozen=True)
class Suggestion:
    label: str
    actions: tuple[Action, ...]
    is_recommended: bool = False


@dataclass(frozen=True)
class Finding:
    """One thing a clinician should see; the engine stamps rule id and citation.

    ``subject`` is what the finding is about (the interacting ingredients, say), so that
    ``finding_key`` tells the same finding apart from another of the same rule across calls;
    empty for findings about the patient as a whole (the rule id says it all). ``quieted`` is set
    after the engine (``cds_service.repeats``) when the card is shown as a repeat.
    """

    indicator: Indicator
    summary: str
    detail: str
    suggestions: tuple[Suggestion, ...] = ()
    rule_id: str = ""
    citation: str = ""
    subject: str = ""
    quieted: bool = False

    def stamped(self, rule_id: str, citation: str) -> Finding:
        """This finding with the engine's rule id and citation (``dataclasses.replace`` costs
        several times more on the hook path; test_rules checks every field is kept)."""
        return Finding(
            self.indicator,
            self.summary,
            self.detail,
            self.suggestions,
            rule_id,
            citation,
            self.subject,
            self.quieted,
        )

    @property
    def finding_key(self) -> str:
        """Return a stable hash of rule id and subject (no patient data in it)."""
        return hashlib.sha256(f"{self.rule_id}\x1f{self.subject}".encode()).hexdigest()


@dataclass(frozen=True)
class NotChecked:
    """A rule could not (fully) run; it is said out loud on the data-unavailable card."""

    reason: str
    rule_id: str = ""
    # The rule ran, on part of the data (an optional key such as medicationStatements missing):
    # said on the card, but not counted as a check that could not run.
    partial: bool = False


@dataclass(frozen=True)
class MonitoringGap:
    """The chart has no recent result a check would read: an info note, not a failure.

    Data that could not be obtained or read is a ``NotChecked`` (the data-unavailable warning);
    a result the chart simply does not hold (no potassium in the window) is a monitoring gap,
    collected by the engine onto one info card (knowledge: "a card that found nothing vs a
    check that could not run").
    """

    result: str  # what is missing, as a clinician names it ("potassium")
    note: str
    rule_id: str = ""


# What a rule yields (named apart from the feedback outcome of a card and the hook call's result).
RuleResult = Finding | NotChecked | MonitoringGap
Rule = Callable[[PatientFacts, Knowledge], Iterator[RuleResult]]


@dataclass(frozen=True)
class RuleSpec:
    """A registered rule.

    ``needs``: data without which the rule must not run (its silence would be a false all-clear).
    ``reads``: data it reads when available; when missing the rule still runs on what it has
    (e.g. the draft orders) and the gap is reported.
    """

    rule_id: str
    check: Rule
    needs: frozenset[DataCategory] = field(default_factory=frozenset)
    reads: frozenset[DataCategory] = field(default_factory=frozenset)

    @cached_property
    def wants(self) -> frozenset[DataCategory]:
        """Everything the rule needs or reads."""
        return self.needs | self.reads


# ----------------------------------------------------------------------------------------------
# Helpers shared by the rule modules: pure functions of the facts.

T = TypeVar("T", Measurement, BloodPressure)


def recent(items: Iterable[T], now: datetime, max_age_days: int) -> list[T]:
    """Items dated within ``max_age_days`` before now (future-dated ones count as now)."""
    oldest = now - timedelta(days=max_age_days)
    return [i for i in items if i.when is not None and i.when >= oldest]


def latest(items: Iterable[T]) -> T | None:
    dated = [i for i in items if i.when is not None]
    return max(dated, key=lambda i: i.when) if dated else None  # type: ignore[arg-type,return-value]


def card_text(knowledge: Knowledge, rule_id: str) -> CardTexts:
    """The prose of one rule's card (cards.toml): ``text("summary", partners=...)``."""
    return knowledge.card_texts(rule_id)


def when_text(when: datetime | None) -> str:
    return when.date().isoformat() if when else "date unknown"


def num(value: float) -> str:
    """A lab value as a clinician reads it: 79.1, 1.1, 4.25 (no float noise from the EHR)."""
    return f"{round(value, 1 if abs(value) >= 10 else 2):g}"


def describe(m: Measurement) -> str:
    """Markdown line with the value, unit, date, source and whether it was computed."""
    origin = "computed" if m.computed else "measured"
    return f"{m.shown} {m.unit} on {when_text(m.when)} ({origin}; {m.method}; `{m.source}`)"


def subject_of(orders: Iterable[Medication]) -> str:
    """The sorted ingredient names of ``orders`` (their names when no ingredient is known)."""
    return ",".join(sorted({i.lower() for o in orders for i in (o.ingredients or {o.name})}))


def names(orders: Iterable[Medication]) -> str:
    return ", ".join(dict.fromkeys(o.name for o in orders))


def involved(facts: PatientFacts, partners: tuple[Medication, ...]) -> str:
    """The orders an interaction card is about, one line each (voclosporin first)."""
    lines = [order_line(o) for o in (*facts.draft_voclosporin, *partners)]
    if not facts.ordering_voclosporin:
        lines.insert(0, "- the patient already takes voclosporin (LUPKYNIS)")
    return "\n".join(lines)


# How a recorded medication is named on a card, per record type (the EHR's wording).
_RECORDED_AS = {
    "MedicationStatement": "reported medication",
    "MedicationDispense": "dispensed medication",
}


def order_line(order: Medication) -> str:
    recorded = _RECORDED_AS.get(order.record_type, "active order")
    where = "draft order" if order.is_draft else f"{recorded} ({order.status})"
    return f"- {order.name} — {where}, `{order.reference}`"


def remove_suggestions(
    orders: Iterable[Medication], verb: str = "Remove"
) -> tuple[Suggestion, ...]:
    """One suggestion per draft order that can be taken out of the session."""
    return tuple(
        Suggestion(f"{verb} the draft order for {o.name}", (RemoveOrder(o),))
        for o in orders
        if o.can_be_changed
    )


def days_between(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() / 86400


def on_treatment(facts: PatientFacts) -> bool:
    """The patient is on a voclosporin course: renewing it, or ordering another drug meanwhile.

    The on-treatment checks (BP gate, live vaccines given during the course) run then, not at
    initiation (decision "on-treatment checks"; K 1.21, PI 5.4, 5.9).
    """
    if facts.is_renewal:
        return True
    # Voclosporin only drafted earlier in this session (none in force) is an initiation under
    # way, not a course.
    drafted_only = any(m.is_voclosporin for m in facts.draft_orders) and not any(
        m.is_voclosporin for m in facts.current_medications
    )
    return facts.takes_voclosporin and not facts.ordering_voclosporin and not drafted_only


def decline_bounds(
    baseline: Measurement, current: Measurement
) -> tuple[float | None, float | None]:
    """The least and the most eGFR decline from baseline (percent) the two results allow.

    Exact results give one number twice (72 -> 57.6: 20.0, 20.0). A result reported as a bound
    (">60") gives no percentage, only limits: baseline >60 and now 40 is a decline of more than
    33.3%, with no upper limit (None). None: no limit on that side.
    """
    b_low, b_high = _interval(baseline)
    c_low, c_high = _interval(current)
    least = None if c_high is None or b_low <= 0 else round((1 - c_high / b_low) * 100, 6)
    most = None if b_high is None or b_high <= 0 else round((1 - c_low / b_high) * 100, 6)
    return least, most


def _interval(m: Measurement) -> tuple[float, float | None]:
    """(lowest, highest or None) values a result allows; a lab value is never below zero."""
    if m.comparator in (">", ">="):
        return m.value, None
    if m.comparator in ("<", "<="):
        return 0.0, m.value
    return m.value, m.value
