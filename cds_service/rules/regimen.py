"""The voclosporin regimen itself: age, background therapy, dose, duration (PI 1, 2, 8.4)."""

from __future__ import annotations

from collections.abc import Iterator

from cds_service.rules.model import (
    Finding,
    NotChecked,
    Outcome,
    days_between,
    num,
    order_line,
    when_text,
)
from cds_service.rules.renal import baseline_egfr
from fhir_mappings.facts import Medication, PatientFacts
from fhir_mappings.knowledge import Knowledge


def pediatric(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Under 18: safety and effectiveness not established (PI 8.4). Unknown age is reported."""
    if not facts.ordering_voclosporin:
        return
    age = facts.age_years
    if age is None:
        yield NotChecked("patient birth date unknown")
        return
    if age >= knowledge.adult_from_years:
        return
    yield Finding(
        "warning",
        f"Patient is {age}: voclosporin safety and effectiveness under "
        f"{knowledge.adult_from_years} not established",
        f"Birth date {facts.birth_date}; age {age} years. LUPKYNIS is indicated for adults; "
        "safety and effectiveness in pediatric patients have not been established.",
    )


def background_therapy_missing(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """No active or drafted mycophenolate: LUPKYNIS is studied with MMF + steroids (PI 1, 2.2)."""
    if not facts.ordering_voclosporin:
        return
    pool = (*facts.draft_orders, *facts.active_medications)
    if any(m.has_role("mycophenolate") for m in pool):
        return
    yield Finding(
        "info",
        "No mycophenolate found: voclosporin is used with MMF and corticosteroids",
        "LUPKYNIS is indicated in combination with a background immunosuppressive regimen and "
        "was studied with mycophenolate mofetil and corticosteroids. No active or drafted "
        "mycophenolate order was found.",
    )


def dose_check(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Each drafted voclosporin order: whole 7.9 mg capsules, twice daily, <= 23.7 mg a dose.

    order-select may come before the dose is entered, so an order without structured dosing is
    only reported at order-sign (and medication-prescribe).
    """
    for order in facts.draft_voclosporin:
        problems = _dose_problems(order, facts, knowledge)
        if not problems:
            continue
        yield Finding(
            "warning",
            f"Voclosporin dose is not a label regimen: {problems[0]}",
            order_line(order)
            + f"\n- dosing as ordered: {_as_ordered(order)}\n\n"
            + "\n".join(f"- {p}" for p in problems)
            + f"\n\nLabel regimen: {knowledge.dose.starting_dose_mg:g} mg "
            f"({knowledge.dose.starting_dose_mg / knowledge.dose.capsule_mg:.0f} x "
            f"{knowledge.dose.capsule_mg:g} mg capsules) twice daily, reduced in "
            f"{knowledge.dose.reduction_step_mg:g} mg steps for eGFR decline.",
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
    rules = knowledge.dose
    dosage = order.dosage
    if dosage is None or not dosage.doses:
        if facts.hook == "order-select":
            return []
        return ["no structured dose (dose quantity in mg or capsules) on the order"]
    problems = []
    if dosage.doses_per_day is None:
        problems.append("frequency not stated in structured form")
    elif abs(dosage.doses_per_day - rules.doses_per_day) > 1e-9:
        problems.append(f"{dosage.doses_per_day:g} doses a day instead of twice daily")
    for amount in {d.mg for d in dosage.doses}:
        capsules = amount / rules.capsule_mg
        if (
            abs(capsules - round(capsules)) * rules.capsule_mg > rules.mg_tolerance
            or capsules < 0.5
        ):
            problems.append(
                f"{amount:g} mg is not a whole number of {rules.capsule_mg:g} mg "
                "capsules (capsules must not be opened or divided)"
            )
        if amount > rules.max_dose_mg + rules.mg_tolerance:
            problems.append(f"{amount:g} mg a dose exceeds the maximum {rules.max_dose_mg:g} mg")
    if facts.is_initiation:
        baseline = baseline_egfr(facts, knowledge)
        severe = knowledge.renal.severe_impairment_below
        start = rules.severe_renal_starting_dose_mg
        if (
            baseline is not None
            and baseline.value < severe
            and any(d.mg > start + rules.mg_tolerance for d in dosage.doses)
        ):
            problems.append(
                f"baseline eGFR {num(baseline.value)} < {severe:g}: start at {start:g} mg "
                "twice daily"
            )
    return problems


def treatment_duration(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Renewal past 24 weeks: reassess benefit; past one year: safety not established."""
    if not facts.is_renewal:
        return
    start = facts.course_start
    if start is None:
        yield NotChecked("start of the voclosporin course unknown")
        return
    days = days_between(start, facts.now)
    rules = knowledge.duration
    if days > rules.not_established_after_days:
        summary = f"Voclosporin for {days / 7:.0f} weeks: safety beyond one year not established"
        detail = (
            "Safety and efficacy of LUPKYNIS beyond one year have not been established: "
            "weigh continued treatment against response and nephrotoxicity."
        )
    elif days > rules.reassess_after_days:
        summary = f"Voclosporin for {days / 7:.0f} weeks: reassess benefit (24-week review)"
        detail = (
            "If the patient has not had therapeutic benefit by 24 weeks, consider "
            "discontinuing LUPKYNIS."
        )
    else:
        return
    yield Finding(
        "info", summary, f"Course started {when_text(start)} ({days:.0f} days ago).\n\n" + detail
    )
