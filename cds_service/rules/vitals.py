"""Blood pressure before initiation and during treatment, and potassium (PI 2.2, 5.4, 5.6)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from cds_service.rules.model import (
    Finding,
    MonitoringGap,
    RuleResult,
    card_text,
    describe,
    latest,
    num,
    on_treatment,
    recent,
    remove_suggestions,
    when_text,
)
from fhir_mappings.facts import BloodPressure, Measurement, PatientFacts
from fhir_mappings.knowledge import Knowledge


def _latest_parts(
    facts: PatientFacts, knowledge: Knowledge
) -> tuple[BloodPressure | None, BloodPressure | None]:
    """Latest reading with a systolic, and latest with a diastolic, inside the window."""
    window = recent(facts.blood_pressures, facts.now, knowledge.blood_pressure.max_age_days)
    systolic = latest(bp for bp in window if bp.systolic is not None)
    diastolic = latest(bp for bp in window if bp.diastolic is not None)
    return systolic, diastolic


def _high_reading(
    facts: PatientFacts, knowledge: Knowledge, text: Callable[..., str]
) -> tuple[str, str] | None:
    """(reading, readings) when the latest BP is above the gate; None when it passes or is absent.

    Above means > 165 systolic or > 105 diastolic (PI 2.2; K 1.21): exactly 165/105 passes.
    """
    limits = knowledge.blood_pressure
    systolic, diastolic = _latest_parts(facts, knowledge)
    high_sys = systolic is not None and (systolic.systolic or 0) > limits.systolic_max
    high_dia = diastolic is not None and (diastolic.diastolic or 0) > limits.diastolic_max
    if not (high_sys or high_dia):
        return None
    lines = [
        text(
            "part",
            part=part,
            value=num(getattr(bp, part) or 0),
            when=when_text(bp.when),
            source=bp.source,
        )
        for part, bp in (("systolic", systolic), ("diastolic", diastolic))
        if bp is not None
    ]
    return f"{_fmt(systolic, 'systolic')}/{_fmt(diastolic, 'diastolic')}", "\n".join(lines)


def blood_pressure_high(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Do not initiate with BP > 165/105 (PI 2.2); exactly 165/105 passes."""
    if facts.is_initiation:
        yield from _bp_gate(facts, knowledge, "blood-pressure-high")


def blood_pressure_high_on_treatment(
    facts: PatientFacts, knowledge: Knowledge
) -> Iterator[RuleResult]:
    """On treatment, BP > 165/105 on the latest reading: discontinue and treat BP (K 1.21, PI 5.4).

    Runs at renewal and when another drug is ordered for a patient on voclosporin. A reading older
    than the BP window is not "the latest reading" (same window as initiation); no recent reading
    is no finding here: the label asks for BP "as clinically indicated" after the first month.
    """
    if on_treatment(facts):
        yield from _bp_gate(facts, knowledge, "blood-pressure-high-on-treatment")


def _bp_gate(facts: PatientFacts, knowledge: Knowledge, rule_id: str) -> Iterator[RuleResult]:
    """The critical card of a BP gate (its wording is the rule's), offering to cancel drafts."""
    text = card_text(knowledge, rule_id)
    high = _high_reading(facts, knowledge, text)
    if high is None:
        return
    reading, readings = high
    yield Finding(
        "critical",
        text("summary", reading=reading),
        text("detail", readings=readings),
        remove_suggestions(facts.draft_voclosporin, text("cancel")),
    )


def _fmt(bp: BloodPressure | None, part: str) -> str:
    value = getattr(bp, part) if bp is not None else None
    return num(value) if value is not None else "?"


def blood_pressure_missing(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Initiation without a systolic and diastolic reading in the window: check BP first.

    A finding of its own (warning): PI 2.2 asks for BP before initiating, so its absence is the
    finding, not a monitoring gap. BP data that could not be obtained never reaches this rule
    (``needs``): that is the data-unavailable warning.
    """
    if not facts.is_initiation:
        return
    systolic, diastolic = _latest_parts(facts, knowledge)
    if systolic is not None and diastolic is not None:
        return
    text = card_text(knowledge, "blood-pressure-missing")
    older = latest(facts.blood_pressures)
    most_recent = (
        text(
            "most_recent",
            reading=f"{_fmt(older, 'systolic')}/{_fmt(older, 'diastolic')}",
            when=when_text(older.when),
            source=older.source,
        )
        if older is not None
        else ""
    )
    yield Finding("warning", text("summary"), text("detail", most_recent=most_recent))


def potassium_limit(result: Measurement, knowledge: Knowledge) -> tuple[float, str]:
    """The potassium upper limit and the template naming its basis (decision "potassium").

    The result's own reference-range high, else the configured local default.
    """
    if result.reference_high is not None:
        return result.reference_high, "basis_reference_range"
    return knowledge.potassium.default_high_mmol_l, "basis_local_default"


def hyperkalemia(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Latest potassium above the lab's reference high (else the local default) (PI 5.6).

    No potassium in the window is a monitoring gap (info note: "monitor serum potassium"), not
    a check that could not run: the data was obtained and holds no recent result. Potassium
    that could not be obtained never reaches this rule (``needs``): data-unavailable warning.
    """
    if not facts.ordering_voclosporin:
        return
    text = card_text(knowledge, "hyperkalemia")
    limits = knowledge.potassium
    result = latest(recent(facts.potassium, facts.now, limits.max_age_days))
    if result is None:
        yield MonitoringGap(text("gap_result"), text("no_result"))
        return
    high, basis = potassium_limit(result, knowledge)
    # A bound that rules hyperkalemia out ("<4.5") is fine; one that cannot ("<5.5" against a
    # 5.0 limit) warns, as an exact value above the limit does.
    if result.above(high) is False:
        return
    yield Finding(
        "warning",
        text("summary", value=result.shown, unit=result.unit, high=high),
        text("detail", measurement=describe(result), high=high, basis=text(basis)),
    )
