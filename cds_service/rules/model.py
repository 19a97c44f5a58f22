"""What rules produce: findings (with proposed order changes) and "could not check" notes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Literal, TypeVar

from fhir_mappings.facts import BloodPressure, Measurement, Medication, PatientFacts
from fhir_mappings.knowledge import Knowledge
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

    ``doses`` holds (mg, time of day or None) for each administration in a day.
    """

    order: Medication
    doses: tuple[tuple[float, str | None], ...]
    description: str


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


def card_text(knowledge: Knowledge, rule_id: str) -> Callable[..., str]:
    """The prose of one rule's card (cards.toml): ``text("summary", partners=...)``."""
    return partial(knowledge.card_text, rule_id)


def when_text(when: datetime | None) -> str:
    return when.date().isoformat() if when else "date unknown"


def num(value: float) -> str:
    """A lab value as a clinician reads it: 79.1, 1.1, 4.25 (no float noise from the EHR)."""
    return f"{round(value, 1 if abs(value) >= 10 else 2):g}"


def describe(m: Measurement) -> str:
    """Markdown line with the value, unit, date, source and whether it was computed."""
    origin = "computed" if m.computed else "measured"
    return f"{num(m.value)} {m.unit} on {when_text(m.when)} ({origin}; {m.method}; `{m.source}`)"


def subject_of(orders: Iterable[Medication]) -> str:
    """The sorted ingredient names of ``orders`` (their names when no ingredient is known)."""
    return ",".join(sorted({i.lower() for o in orders for i in (o.ingredients or {o.name})}))


def names(orders: Iterable[Medication]) -> str:
    return ", ".join(dict.fromkeys(o.name for o in orders))


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
