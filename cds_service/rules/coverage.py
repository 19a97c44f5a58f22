"""The payer's prior-authorization criteria for initiation (FEP policy 5.99.021, knowledge 7)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Literal

from cds_service.rules.model import Finding, Outcome, describe, latest
from fhir_mappings.facts import DataCategory, Medication, PatientFacts
from fhir_mappings.knowledge import Knowledge

Status = Literal["met", "not met", "unknown"]
_ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})


def prior_authorization(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Initiation: each policy criterion as met / not met / unknown, with the facts used."""
    if not facts.is_initiation:
        return
    criteria = _criteria(facts, knowledge)
    counts = {
        s: sum(1 for _, status, _ in criteria if status == s) for s in ("met", "not met", "unknown")
    }
    rows = "\n".join(f"| {name} | **{status}** | {why} |" for name, status, why in criteria)
    yield Finding(
        "info",
        f"Prior authorization: {counts['met']} of {len(criteria)} criteria met, "
        f"{counts['not met']} not met, {counts['unknown']} to confirm",
        f"Payer policy: {knowledge.payer_policy_title}.\n\n| criterion | status | facts |\n"
        f"|---|---|---|\n{rows}",
    )


def _criteria(facts: PatientFacts, knowledge: Knowledge) -> list[tuple[str, Status, str]]:
    limits = knowledge.prior_authorization
    pool = (*facts.draft_orders, *facts.active_medications)
    age = facts.age_years
    ln = [c for c in facts.conditions if "lupus-nephritis" in c.kinds]
    active_ln = [c for c in ln if c.clinical_status in _ACTIVE_CONDITION]
    background = [m for m in pool if m.has_role("mycophenolate") or m.has_role("corticosteroid")]
    cyclophosphamide = [m for m in pool if m.has_role("cyclophosphamide")]
    live = [m for m in facts.draft_orders if m.is_live_vaccine]
    recent_live = [
        i
        for i in facts.immunizations
        if i.live
        and i.when is not None
        and i.when >= facts.now - timedelta(days=knowledge.live_vaccine_days_before_initiation)
    ]
    upcr = latest(facts.upcr)

    def absent(category: DataCategory, found_nothing: Status) -> Status:
        """What finding nothing means: a fact when the data came, unknown when it did not."""
        return "unknown" if category in facts.unavailable else found_nothing

    criteria: list[tuple[str, Status, str]] = [
        (
            "Age 18 or older",
            "unknown" if age is None else ("met" if age >= limits.minimum_age_years else "not met"),
            "birth date unknown" if age is None else f"age {age}",
        ),
        (
            "Diagnosis of lupus nephritis",
            "met" if ln else absent(DataCategory.CONDITIONS, "not met"),
            _conditions_text(ln) or "no lupus nephritis diagnosis on record",
        ),
        (
            "Active lupus nephritis",
            "met" if active_ln else "unknown" if ln else absent(DataCategory.CONDITIONS, "not met"),
            (_conditions_text(active_ln) or "no active lupus nephritis condition on record")
            + (f"; latest UPCR {describe(upcr)}" if upcr else ""),
        ),
        (
            "Background immunosuppression (e.g. MMF, corticosteroids)",
            "met" if background else absent(DataCategory.MEDICATIONS, "not met"),
            _names(background) or "none found",
        ),
        (
            "Not with cyclophosphamide",
            "not met" if cyclophosphamide else absent(DataCategory.MEDICATIONS, "met"),
            _names(cyclophosphamide) or "no cyclophosphamide found",
        ),
        (
            "Prescriber agrees to monitor eGFR and blood pressure",
            "unknown",
            "prescriber attestation",
        ),
        (
            "Prescriber agrees to monitor for serious infections and malignancies",
            "unknown",
            "prescriber attestation",
        ),
        (
            "Not given with live vaccines",
            "not met" if live or recent_live else absent(DataCategory.IMMUNIZATIONS, "met"),
            _names(live) or ", ".join(i.name for i in recent_live) or "no live vaccine found",
        ),
    ]
    criteria.append(_quantity_limit(facts, knowledge))
    criteria.append(_duration_limit(facts, knowledge))
    return criteria


def _names(orders: list[Medication]) -> str:
    return ", ".join(dict.fromkeys(o.name for o in orders))


def _conditions_text(conditions: list) -> str:  # type: ignore[type-arg]
    return ", ".join(f"{c.name} ({c.clinical_status or 'status not stated'})" for c in conditions)


def _quantity_limit(facts: PatientFacts, knowledge: Knowledge) -> tuple[str, Status, str]:
    limits = knowledge.prior_authorization
    name = (
        f"Quantity limit {limits.quantity_capsules} capsules per {limits.quantity_period_days} days"
    )
    per_day = []
    for order in facts.draft_voclosporin:
        if order.dosage and order.dosage.doses and order.dosage.doses_per_day is not None:
            daily_mg = sum(d.mg for d in order.dosage.doses)
            per_day.append(daily_mg / knowledge.dose.capsule_mg)
    if not per_day:
        return name, "unknown", "dose or frequency not stated on the order"
    capsules = max(per_day) * limits.quantity_period_days
    status: Status = "met" if capsules <= limits.quantity_capsules + 0.5 else "not met"
    return name, status, f"{capsules:.0f} capsules per {limits.quantity_period_days} days as dosed"


def _duration_limit(facts: PatientFacts, knowledge: Knowledge) -> tuple[str, Status, str]:
    limits = knowledge.prior_authorization
    name = f"Approval duration {limits.approval_months} months"
    spans = []
    for order in facts.draft_voclosporin:
        if order.expected_supply_days is not None:
            spans.append(order.expected_supply_days * (1 + (order.number_of_repeats or 0)))
    if not spans:
        return name, "unknown", "supply duration not stated on the order"
    days = max(spans)
    status: Status = "met" if days <= limits.approval_months * 365 / 12 + 0.5 else "not met"
    return name, status, f"{days:.0f} days of supply ordered (including refills)"
