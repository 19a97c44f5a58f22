"""Blood pressure before initiation and potassium (PI 2.2, 5.4, 5.6)."""

from __future__ import annotations

from collections.abc import Iterator

from cds_service.rules.model import (
    Finding,
    NotChecked,
    Outcome,
    describe,
    latest,
    num,
    recent,
    remove_suggestions,
    when_text,
)
from fhir_mappings.facts import BloodPressure, PatientFacts
from fhir_mappings.knowledge import Knowledge


def _latest_parts(
    facts: PatientFacts, knowledge: Knowledge
) -> tuple[BloodPressure | None, BloodPressure | None]:
    """Latest reading with a systolic, and latest with a diastolic, inside the window."""
    window = recent(facts.blood_pressures, facts.now, knowledge.blood_pressure.max_age_days)
    systolic = latest(bp for bp in window if bp.systolic is not None)
    diastolic = latest(bp for bp in window if bp.diastolic is not None)
    return systolic, diastolic


def blood_pressure_high(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Do not initiate with BP > 165/105 (PI 2.2); exactly 165/105 passes."""
    if not facts.is_initiation:
        return
    limits = knowledge.blood_pressure
    systolic, diastolic = _latest_parts(facts, knowledge)
    high_sys = systolic is not None and (systolic.systolic or 0) > limits.systolic_max
    high_dia = diastolic is not None and (diastolic.diastolic or 0) > limits.diastolic_max
    if not (high_sys or high_dia):
        return
    lines = []
    if systolic is not None:
        lines.append(
            f"- systolic {num(systolic.systolic or 0)} mmHg on {when_text(systolic.when)} "
            f"(`{systolic.source}`)"
        )
    if diastolic is not None:
        lines.append(
            f"- diastolic {num(diastolic.diastolic or 0)} mmHg on {when_text(diastolic.when)} "
            f"(`{diastolic.source}`)"
        )
    reading = f"{_fmt(systolic, 'systolic')}/{_fmt(diastolic, 'diastolic')}"
    yield Finding(
        "critical",
        f"BP {reading} is above {limits.systolic_max:g}/{limits.diastolic_max:g}: do not start "
        "voclosporin",
        "Do not initiate LUPKYNIS with blood pressure > "
        f"{limits.systolic_max:g}/{limits.diastolic_max:g} mmHg or a hypertensive emergency.\n\n"
        + "\n".join(lines),
        remove_suggestions(facts.draft_voclosporin, "Do not start: cancel"),
    )


def _fmt(bp: BloodPressure | None, part: str) -> str:
    value = getattr(bp, part) if bp is not None else None
    return num(value) if value is not None else "?"


def blood_pressure_missing(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Initiation without a systolic and diastolic reading in the window: check BP first."""
    if not facts.is_initiation:
        return
    systolic, diastolic = _latest_parts(facts, knowledge)
    if systolic is not None and diastolic is not None:
        return
    days = knowledge.blood_pressure.max_age_days
    older = latest(facts.blood_pressures)
    detail = f"No complete blood-pressure reading in the last {days} days."
    if older is not None:
        detail += (
            f"\n\nMost recent: {_fmt(older, 'systolic')}/{_fmt(older, 'diastolic')} mmHg "
            f"on {when_text(older.when)} (`{older.source}`)."
        )
    yield Finding(
        "warning",
        f"No blood pressure in the last {days} days: check BP before starting voclosporin",
        detail + "\n\nLUPKYNIS must not be started with BP > 165/105 mmHg; measure it first.",
    )


def hyperkalemia(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Latest potassium above the lab's reference high (else the local default) (PI 5.6)."""
    if not facts.ordering_voclosporin:
        return
    limits = knowledge.potassium
    result = latest(recent(facts.potassium, facts.now, limits.max_age_days))
    if result is None:
        yield NotChecked(f"no potassium result in the last {limits.max_age_days} days")
        return
    high = result.reference_high
    basis = "the result's reference range"
    if high is None:
        high, basis = limits.default_high_mmol_l, "the local default (no reference range sent)"
    if result.value <= high:
        return
    yield Finding(
        "warning",
        f"Potassium {num(result.value)} {result.unit} is above {high:g}: hyperkalemia risk with "
        "voclosporin",
        f"Latest potassium {describe(result)}; upper limit {high:g} from {basis}.\n\n"
        "LUPKYNIS can cause hyperkalemia, more so with other drugs that raise potassium: "
        "monitor serum potassium.",
    )
