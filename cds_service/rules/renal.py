"""Baseline and on-treatment eGFR (PI 2.2, Table 1; knowledge 1.9-1.14)."""

from __future__ import annotations

from collections.abc import Iterator

from cds_service.rules.model import (
    Finding,
    NotChecked,
    Outcome,
    ReplaceDosage,
    Suggestion,
    describe,
    latest,
    num,
    recent,
    remove_suggestions,
    when_text,
)
from fhir_mappings.facts import Measurement, Medication, PatientFacts
from fhir_mappings.knowledge import Knowledge


def baseline_egfr(facts: PatientFacts, knowledge: Knowledge) -> Measurement | None:
    """The latest eGFR (measured or computed) within the baseline window."""
    return latest(recent(facts.egfr, facts.now, knowledge.renal.baseline_max_age_days))


def egfr_baseline_missing(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Initiation needs an accurate baseline eGFR; none within the window is a warning.

    Only runs when eGFR and creatinine data were obtained: a fetch failure is not "missing".
    """
    if not facts.is_initiation or baseline_egfr(facts, knowledge) is not None:
        return
    days = knowledge.renal.baseline_max_age_days
    older = latest(facts.egfr)
    detail = f"No eGFR (measured, or computed from creatinine) in the last {days} days."
    if older is not None:
        detail += f"\n\nMost recent eGFR: {describe(older)}."
    if facts.creatinine and (facts.sex is None or facts.birth_date is None):
        detail += "\n\neGFR could not be computed from creatinine: patient sex or age unknown."
    yield Finding(
        "warning",
        f"No baseline eGFR in the last {days} days: check eGFR before starting voclosporin",
        detail + "\n\nEstablish an accurate baseline eGFR before initiating LUPKYNIS.",
    )


def egfr_baseline_low(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Baseline eGFR <= 45: not recommended unless benefit exceeds risk (PI 2.2)."""
    if not facts.is_initiation:
        return
    baseline = baseline_egfr(facts, knowledge)
    renal = knowledge.renal
    if baseline is None or baseline.value > renal.baseline_low_max:
        return
    detail = (
        f"Baseline eGFR {describe(baseline)}.\n\nLUPKYNIS is not recommended with a baseline "
        f"eGFR <= {renal.baseline_low_max:g} mL/min/1.73m2 unless the benefit exceeds the risk "
        "(risk of acute and chronic nephrotoxicity)."
    )
    if baseline.value < renal.severe_impairment_below:
        detail += (
            f" With eGFR < {renal.severe_impairment_below:g}, the starting dose is "
            f"{knowledge.dose.severe_renal_starting_dose_mg:g} mg twice daily."
        )
    yield Finding(
        "warning",
        f"Baseline eGFR {num(baseline.value)} is <= {renal.baseline_low_max:g}: voclosporin not "
        "recommended unless benefit exceeds risk",
        detail,
    )


def decline_percent(baseline: float, current: float) -> float:
    """Decline from baseline in percent, rounded so that 72 -> 57.6 is exactly 20.0."""
    if baseline <= 0:
        raise ValueError("a baseline eGFR must be positive")
    return round((baseline - current) / baseline * 100, 6)


def egfr_decline(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Renewal: eGFR < 60 and > 20% below baseline -> reduce; >= 30% -> discontinue (PI 2.2).

    Baseline: the latest eGFR on or before the course start. Without a baseline or an
    on-treatment eGFR the decline cannot be assessed: said on the data-unavailable card.
    """
    if not facts.is_renewal:
        return
    start = facts.course_start
    if start is None:
        yield NotChecked("start of the voclosporin course unknown, so no pre-treatment eGFR")
        return
    # By calendar day: an eGFR drawn on the day the course starts is its baseline.
    before = [m for m in facts.egfr if m.when is not None and m.when.date() <= start.date()]
    after = [m for m in facts.egfr if m.when is not None and m.when.date() > start.date()]
    baseline, current = latest(before), latest(after)
    if baseline is None or baseline.value <= 0:
        yield NotChecked(f"no usable eGFR on or before the course start ({when_text(start)})")
        return
    if current is None:
        yield NotChecked(f"no eGFR since the course started ({when_text(start)})")
        return
    renal = knowledge.renal
    if not recent([current], facts.now, renal.monitoring_max_age_days):
        # Judged below on the old value all the same: a decline it shows is still real.
        yield NotChecked(
            f"latest on-treatment eGFR is from {when_text(current.when)}, older than "
            f"{renal.monitoring_max_age_days} days (label: assess every 4 weeks)"
        )
    decline = decline_percent(baseline.value, current.value)
    if (
        current.value >= renal.decline_applies_below
        or decline <= renal.decline_reduce_above_percent
    ):
        return
    detail = (
        f"- baseline (before starting {when_text(start)}): {describe(baseline)}\n"
        f"- latest: {describe(current)}\n- decline: {decline:.1f}%"
    )
    if decline >= renal.decline_discontinue_from_percent:
        yield Finding(
            "critical",
            f"eGFR down {decline:.0f}% from baseline (now {num(current.value)}): discontinue "
            "voclosporin",
            detail + "\n\neGFR < 60 and reduced >= 30% from baseline: discontinue LUPKYNIS and "
            "reassess eGFR within two weeks; consider re-starting at 7.9 mg twice daily only if "
            "eGFR returns to >= 80% of baseline.",
            remove_suggestions(facts.draft_voclosporin, "Discontinue: cancel"),
        )
        return
    yield Finding(
        "warning",
        f"eGFR down {decline:.0f}% from baseline (now {num(current.value)}): reduce voclosporin by "
        f"{knowledge.dose.reduction_step_mg:g} mg twice daily",
        detail + "\n\neGFR < 60 and reduced > 20% and < 30% from baseline: reduce LUPKYNIS by "
        f"{knowledge.dose.reduction_step_mg:g} mg twice daily and reassess eGFR within two weeks.",
        _reduction_suggestions(facts.draft_voclosporin, knowledge),
    )


def _reduction_suggestions(
    orders: tuple[Medication, ...], knowledge: Knowledge
) -> tuple[Suggestion, ...]:
    """Each draft dose minus one capsule per administration, when that leaves a dose."""
    suggestions = []
    step = knowledge.dose.reduction_step_mg
    for order in orders:
        if not order.can_be_changed or order.dosage is None or not order.dosage.doses:
            continue
        reduced = tuple((round(d.mg - step, 2), d.when) for d in order.dosage.doses)
        if any(mg <= 0 for mg, _ in reduced):
            continue
        text = " + ".join(f"{mg:g} mg" for mg, _ in reduced) + " per day"
        suggestions.append(
            Suggestion(
                f"Reduce {order.name} to {text}",
                (ReplaceDosage(order, reduced, text),),
                is_recommended=True,
            )
        )
    return tuple(suggestions)
