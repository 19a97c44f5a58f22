"""The payer's prior-authorization criteria (FEP policy 5.99.021, knowledge 7).

Two sets, both data (``prior_authorization.toml``: id, name as shown, order, policy wording,
source): the initial prior approval for an initiation, the renewal criteria for a renewal or
continuation. Here is one checker per criterion id, deciding met / not met / unknown from the
facts and saying which facts it used; a criterion in both sets has one checker that looks at
which set it serves (``no-live-vaccines``: before initiation, or during the course).
``CHECKERS`` covers ``Criterion`` exactly; the loader makes each data set cover its ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Literal

from cds_service.rules.doses import regimen_of
from cds_service.rules.model import (
    Finding,
    RuleResult,
    card_text,
    decline_bounds,
    describe,
    latest,
    names,
    when_text,
)
from cds_service.rules.renal import decline_percent
from fhir_mappings.facts import Condition, Medication, PatientFacts
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.vocabulary import ConditionKind, Criterion, DataCategory, Role

Status = Literal["met", "not met", "unknown"]
Checker = Callable[[PatientFacts, Knowledge], tuple[Status, str]]
_ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})
_ATTESTATION = "prescriber attestation"
_RENAL_DATA = frozenset({DataCategory.EGFR, DataCategory.CREATININE})


def prior_authorization(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Each criterion of the set the order needs (initiation or renewal) as met / not met /
    unknown, with the facts used; the card names the set."""
    if not facts.ordering_voclosporin:
        return
    text = card_text(knowledge, "prior-authorization")
    renewal = facts.is_renewal
    criteria = [
        (name, *CHECKERS[criterion.id](facts, knowledge))
        for criterion, name in knowledge.named_criteria(renewal)
    ]
    counts = dict.fromkeys(("met", "not met", "unknown"), 0)
    for _, status, _ in criteria:
        if status in counts:
            counts[status] += 1
    table = [{"name": name, "status": status, "evidence": why} for name, status, why in criteria]
    rows = "\n".join(text.each("row", table))
    criteria_set = text("set_renewal" if renewal else "set_initiation")
    yield Finding(
        "info",
        text(
            "summary",
            set=criteria_set,
            met=counts["met"],
            total=len(criteria),
            not_met=counts["not met"],
            unknown=counts["unknown"],
        ),
        text("detail", set=criteria_set, rows=rows),
    )


def _absent(facts: PatientFacts, category: DataCategory, found_nothing: Status) -> Status:
    """What finding nothing means: a fact when the data came, unknown when it did not."""
    return "unknown" if category in facts.unavailable else found_nothing


def _pool(facts: PatientFacts) -> tuple[Medication, ...]:
    return (*facts.draft_orders, *facts.current_medications)


def _lupus_nephritis(facts: PatientFacts) -> list[Condition]:
    return [c for c in facts.conditions if ConditionKind.LUPUS_NEPHRITIS in c.kinds]


def _active(conditions: list[Condition]) -> list[Condition]:
    return [c for c in conditions if c.clinical_status in _ACTIVE_CONDITION]


def _age(facts: PatientFacts, knowledge: Knowledge) -> tuple[Status, str]:
    age = facts.age_years
    if age is None:
        return "unknown", "birth date unknown"
    met = age >= knowledge.prior_authorization.minimum_age_years
    return ("met" if met else "not met"), f"age {age}"


def _diagnosis(facts: PatientFacts, knowledge: Knowledge) -> tuple[Status, str]:
    ln = _lupus_nephritis(facts)
    status: Status = "met" if ln else _absent(facts, DataCategory.CONDITIONS, "not met")
    return status, _conditions_text(ln) or "no lupus nephritis diagnosis on record"


def _active_disease(facts: PatientFacts, knowledge: Knowledge) -> tuple[Status, str]:
    ln = _lupus_nephritis(facts)
    active_ln = _active(ln)
    upcr = latest(facts.upcr)
    status: Status = (
        "met"
        if active_ln
        else "unknown"
        if ln
        else _absent(facts, DataCategory.CONDITIONS, "not met")
    )
    return status, (
        (_conditions_text(active_ln) or "no active lupus nephritis condition on record")
        + (f"; latest UPCR {describe(upcr)}" if upcr else "")
    )


def _background_therapy(facts: PatientFacts, knowledge: Knowledge) -> tuple[Status, str]:
    """Met with mycophenolate on record; a corticosteroid alone is to confirm: LUPKYNIS is used
    with MMF and corticosteroids (PI 1), so a steroid alone is not shown to be the regimen the
    policy means (clinical review)."""
    pool = _pool(facts)
    mmf = [m for m in pool if Role.MYCOPHENOLATE in m.roles]
    steroids = [m for m in pool if Role.CORTICOSTEROID in m.roles]
    if mmf:
        return "met", names([*mmf, *steroids])
    if steroids:
        return "unknown", names(steroids) + " (no mycophenolate on record: confirm)"
    return _absent(facts, DataCategory.MEDICATIONS, "not met"), "none found"


def _no_cyclophosphamide(facts: PatientFacts, knowledge: Knowledge) -> tuple[Status, str]:
    cyclophosphamide = [m for m in _pool(facts) if Role.CYCLOPHOSPHAMIDE in m.roles]
    status: Status = (
        "not met" if cyclophosphamide else _absent(facts, DataCategory.MEDICATIONS, "met")
    )
    return status, names(cyclophosphamide) or "no cyclophosphamide found"


def _attestation(facts: PatientFacts, knowledge: Knowledge) -> tuple[Status, str]:
    """The prescriber's agreement is not in the chart: always to confirm."""
    return "unknown", _ATTESTATION


def _no_live_vaccines(facts: PatientFacts, knowledge: Knowledge) -> tuple[Status, str]:
    """A live vaccine drafted now, or recorded in the window before initiation (28 days) or, on
    renewal, since the course started."""
    live = [m for m in facts.draft_orders if m.is_live_vaccine]
    if facts.is_renewal:
        since = facts.course_start
        if since is None and not live:
            text = card_text(knowledge, "prior-authorization")
            return _absent(facts, DataCategory.IMMUNIZATIONS, "unknown"), text("no_course_start")
    else:
        since = facts.now - timedelta(days=knowledge.live_vaccine_days_before_initiation)
    recent_live = [
        i
        for i in facts.immunizations
        if i.live and i.when is not None and since is not None and i.when >= since
    ]
    status: Status = (
        "not met" if live or recent_live else _absent(facts, DataCategory.IMMUNIZATIONS, "met")
    )
    return status, (
        names(live) or ", ".join(i.name for i in recent_live) or "no live vaccine found"
    )


def _clinical_benefit(facts: PatientFacts, knowledge: Knowledge) -> tuple[Status, str]:
    """Renewal 1: the eGFR trend from the course baseline (the latest eGFR on or before the
    course start) to the latest since.

    "Stabilization" is read with the label's no-change band (PI 2.2 Table 1): a decline of at
    most 20% (rules.toml ``decline_reduce_above_percent``) or a rise is met; a larger decline
    with eGFR below 60 (the label's dose-change zone) is the renal worsening the policy excludes:
    not met. A larger decline with eGFR still at or above 60, a result reported as a bound that
    does not decide, no eGFR before or since the start, or eGFR that could not be obtained:
    unknown, for the prescriber's documentation to settle.
    """
    text = card_text(knowledge, "prior-authorization")
    if facts.unavailable & _RENAL_DATA:
        return "unknown", text("benefit_unavailable")
    start = facts.course_start
    if start is None:
        return "unknown", text("no_course_start")
    start_day = start.date()
    before = [m for m in facts.egfr if m.when is not None and m.when.date() <= start_day]
    after = [m for m in facts.egfr if m.when is not None and m.when.date() > start_day]
    baseline, current = latest(before), latest(after)
    if baseline is None:
        return "unknown", text("benefit_no_baseline", start=when_text(start))
    if current is None:
        return "unknown", text("benefit_no_current", start=when_text(start))
    renal = knowledge.renal
    least: float | None
    most: float | None
    if baseline.comparator is None and current.comparator is None and baseline.value > 0:
        least = most = decline_percent(baseline.value, current.value)
    else:
        least, most = decline_bounds(baseline, current)
    readings = text("benefit_readings", baseline=describe(baseline), latest=describe(current))
    if most is not None and most <= renal.decline_reduce_above_percent:
        change = text("benefit_change", change=-most) if least == most else ""
        return "met", text("benefit_stable", readings=readings, change=change)
    if least is not None and least > renal.decline_reduce_above_percent:
        down = text("benefit_decline" if least == most else "benefit_decline_more", decline=least)
        if current.below(renal.decline_applies_below):
            return "not met", text("benefit_worse", readings=readings, change=down)
        return "unknown", text("benefit_worse_high", readings=readings, change=down)
    return "unknown", text("benefit_bound", readings=readings)


def _quantity_limit(facts: PatientFacts, knowledge: Knowledge) -> tuple[Status, str]:
    """Capsules per quantity period of the session's regimen: all voclosporin drafts together
    (an AM and a PM draft, or two BID drafts, are one regimen; ``doses.regimen_of``)."""
    limits = knowledge.prior_authorization
    regimen = regimen_of(facts.draft_voclosporin, knowledge)
    daily_mg = regimen.daily_mg() if regimen is not None else None
    if daily_mg is None:
        return "unknown", "dose or frequency not stated on the order"
    capsules = daily_mg / knowledge.dose.capsule_mg * limits.quantity_period_days
    status: Status = "met" if capsules <= limits.quantity_capsules + 0.5 else "not met"
    return status, f"{capsules:.0f} capsules per {limits.quantity_period_days} days as dosed"


def _approval_duration(facts: PatientFacts, knowledge: Knowledge) -> tuple[Status, str]:
    limits = knowledge.prior_authorization
    spans = []
    for order in facts.draft_voclosporin:
        if order.expected_supply_days is not None:
            spans.append(order.expected_supply_days * (1 + (order.number_of_repeats or 0)))
    if not spans:
        return "unknown", "supply duration not stated on the order"
    days = max(spans)
    status: Status = "met" if days <= limits.approval_months * 365 / 12 + 0.5 else "not met"
    return status, f"{days:.0f} days of supply ordered (including refills)"


def _conditions_text(conditions: list[Condition]) -> str:
    return ", ".join(f"{c.name} ({c.clinical_status or 'status not stated'})" for c in conditions)


CHECKERS: dict[Criterion, Checker] = {
    Criterion.AGE: _age,
    Criterion.DIAGNOSIS: _diagnosis,
    Criterion.ACTIVE_DISEASE: _active_disease,
    Criterion.BACKGROUND_THERAPY: _background_therapy,
    Criterion.NO_CYCLOPHOSPHAMIDE: _no_cyclophosphamide,
    Criterion.MONITOR_EGFR_AND_BP: _attestation,
    Criterion.MONITOR_INFECTIONS: _attestation,
    Criterion.NO_LIVE_VACCINES: _no_live_vaccines,
    Criterion.QUANTITY_LIMIT: _quantity_limit,
    Criterion.APPROVAL_DURATION: _approval_duration,
    Criterion.CLINICAL_BENEFIT: _clinical_benefit,
    Criterion.BENEFITS_OUTWEIGH_RISKS: _attestation,
}
if set(CHECKERS) != set(Criterion):  # checked on import, i.e. at start-up, before any request
    raise RuntimeError(
        f"coverage.CHECKERS does not cover Criterion: {sorted(set(Criterion) ^ set(CHECKERS))}"
    )
