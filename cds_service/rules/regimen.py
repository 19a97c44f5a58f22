"""The voclosporin regimen itself: age, background therapy, dose, duration (PI 1, 2, 8.4)."""

from __future__ import annotations

from collections.abc import Iterator

from cds_service.rules.model import (
    Finding,
    NotChecked,
    RuleResult,
    card_text,
    days_between,
    num,
    order_line,
    when_text,
)
from cds_service.rules.populations import esrd_or_dialysis, hepatic_dose_class
from cds_service.rules.renal import baseline_egfr
from fhir_mappings.facts import Medication, PatientFacts
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.vocabulary import Role

_DAYS_PER_WEEK = 7


def pediatric(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Under 18: safety and effectiveness not established (PI 8.4).

    A Patient without a birth date is could-not-check (data-unavailable warning), not a
    monitoring gap: no result is due, the record that was read lacks what the check needs.
    """
    if not facts.ordering_voclosporin:
        return
    text = card_text(knowledge, "pediatric")
    age = facts.age_years
    if age is None:
        yield NotChecked(text("no_birth_date"))
        return
    if age >= knowledge.adult_from_years:
        return
    yield Finding(
        "warning",
        text("summary", age=age),
        text("detail", birth_date=facts.birth_date, age=age),
    )


def background_therapy_missing(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """No active or drafted mycophenolate: LUPKYNIS is studied with MMF + steroids (PI 1, 2.2)."""
    if not facts.ordering_voclosporin:
        return
    pool = (*facts.draft_orders, *facts.active_medications)
    if any(m.has_role(Role.MYCOPHENOLATE) for m in pool):
        return
    text = card_text(knowledge, "background-therapy-missing")
    yield Finding("info", text("summary"), text("detail"))


def dose_check(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Each drafted voclosporin order: whole 7.9 mg capsules, twice daily, <= 23.7 mg a dose.

    Lower for some patients: severe renal impairment at initiation (start at 15.8 mg BID) and
    Child-Pugh A/B hepatic impairment (15.8 mg BID, ``populations.hepatic_dose_class``).

    An order without structured dosing is only reported once order entry is complete
    (``facts.order_entry_complete``: order-select may come before the dose is entered).
    """
    text = card_text(knowledge, "dose-check")
    for order in facts.draft_voclosporin:
        problems = _dose_problems(order, facts, knowledge)
        if not problems:
            continue
        yield Finding(
            "warning",
            text("summary", problem=problems[0]),
            text(
                "detail",
                order=order_line(order),
                as_ordered=_as_ordered(order),
                problems="\n".join(f"- {p}" for p in problems),
                capsules_per_dose=knowledge.dose.starting_dose_mg / knowledge.dose.capsule_mg,
            ),
            subject=_as_ordered(order),  # a different wrong dose is a different finding
        )


def _as_ordered(order: Medication) -> str:
    dosage = order.dosage
    if dosage is None:
        return "no structured dosage"
    doses = ", ".join(f"{d.mg:g} mg" + (f" ({d.when})" if d.when else "") for d in dosage.doses)
    per_day = f"{dosage.doses_per_day:g}/day" if dosage.doses_per_day is not None else "?/day"
    return f"{doses or 'no dose quantity'}; {per_day}" + (
        f"; '{dosage.text}'" if dosage.text else ""
    )


def _dose_problems(order: Medication, facts: PatientFacts, knowledge: Knowledge) -> list[str]:
    text = card_text(knowledge, "dose-check")
    rules = knowledge.dose
    dosage = order.dosage
    if dosage is None or not dosage.doses:
        if not facts.order_entry_complete:
            return []
        return [text("no_structured_dose")]
    problems = []
    if dosage.doses_per_day is None:
        problems.append(text("no_structured_frequency"))
    elif abs(dosage.doses_per_day - rules.doses_per_day) > 1e-9:
        problems.append(text("frequency", doses_per_day=dosage.doses_per_day))
    for amount in {d.mg for d in dosage.doses}:
        capsules = amount / rules.capsule_mg
        if (
            abs(capsules - round(capsules)) * rules.capsule_mg > rules.mg_tolerance
            or capsules < 0.5
        ):
            problems.append(text("partial_capsule", mg=amount))
        if amount > rules.max_dose_mg + rules.mg_tolerance:
            problems.append(text("above_maximum", mg=amount))
    if facts.is_initiation:
        baseline = baseline_egfr(facts, knowledge)
        severe = knowledge.renal.severe_impairment_below
        start = rules.severe_renal_starting_dose_mg
        if (
            baseline is not None
            and baseline.value < severe
            and not esrd_or_dialysis(facts)  # ESRD/dialysis: not studied, no start dose
            and any(d.mg > start + rules.mg_tolerance for d in dosage.doses)
        ):
            problems.append(text("severe_renal_start", egfr=num(baseline.value)))
    hepatic = hepatic_dose_class(facts)  # knowledge 1.18: Child-Pugh A/B, 15.8 mg BID
    if hepatic is not None and any(
        d.mg > rules.hepatic_impairment_dose_mg + rules.mg_tolerance for d in dosage.doses
    ):
        problems.append(text("hepatic_dose", child_pugh=hepatic))
    return problems


def treatment_duration(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Renewal past 24 weeks: reassess benefit; past one year: safety not established.

    Course start unknown (no usable ``authoredOn`` on the voclosporin orders read) is
    could-not-check (data-unavailable warning): the record read does not say what it should.
    """
    if not facts.is_renewal:
        return
    text = card_text(knowledge, "treatment-duration")
    start = facts.course_start
    if start is None:
        yield NotChecked(text("no_course_start"))
        return
    days = days_between(start, facts.now)
    rules = knowledge.duration
    weeks, reassess_weeks = days / _DAYS_PER_WEEK, rules.reassess_after_days / _DAYS_PER_WEEK
    if days > rules.not_established_after_days:
        summary = text("summary_beyond_one_year", weeks=weeks)
        advice = text("advice_beyond_one_year")
    elif days > rules.reassess_after_days:
        summary = text("summary_reassess", weeks=weeks, reassess_weeks=reassess_weeks)
        advice = text("advice_reassess", reassess_weeks=reassess_weeks)
    else:
        return
    yield Finding("info", summary, text("detail", start=when_text(start), days=days, advice=advice))
