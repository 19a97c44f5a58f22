"""Drug and vaccine interactions with voclosporin, in both directions (PI 4, 5.9, 7)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from cds_service.rules.model import (
    Finding,
    Outcome,
    ReplaceDosage,
    Suggestion,
    names,
    order_line,
    remove_suggestions,
    when_text,
)
from fhir_mappings.facts import Medication, PatientFacts
from fhir_mappings.knowledge import Knowledge


def _involved(facts: PatientFacts, partners: tuple[Medication, ...]) -> str:
    lines = [order_line(o) for o in (*facts.draft_voclosporin, *partners)]
    if not facts.ordering_voclosporin:
        lines.insert(0, "- the patient already takes voclosporin (LUPKYNIS)")
    return "\n".join(lines)


def _removals(facts: PatientFacts, partners: tuple[Medication, ...]) -> tuple[Suggestion, ...]:
    """Offer to drop the drafted partner, or the drafted voclosporin when the partner stays."""
    drafted_partners = tuple(p for p in partners if p.is_draft)
    if drafted_partners:
        return remove_suggestions(drafted_partners)
    return remove_suggestions(facts.draft_voclosporin)


def hypersensitivity(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Allergy to voclosporin recorded while ordering it: contraindicated (PI 4, 5.8).

    Unknown allergy data is reported by the engine (this rule needs it).
    """
    if not facts.ordering_voclosporin:
        return
    allergies = [a for a in facts.allergies if a.to_voclosporin]
    if not allergies:
        return
    lines = [
        f"- {a.substance}: criticality {a.criticality or 'not stated'}, reaction severity "
        f"{', '.join(a.severities) or 'not stated'}, verification {a.verification or 'not stated'}"
        f" (`{a.reference}`)"
        for a in allergies
    ]
    yield Finding(
        "critical",
        "Recorded allergy to voclosporin: LUPKYNIS is contraindicated",
        "LUPKYNIS is contraindicated after a serious or severe hypersensitivity reaction to "
        "voclosporin or its excipients.\n\n" + "\n".join(lines),
        remove_suggestions(facts.draft_voclosporin, "Cancel"),
    )


def strong_cyp3a4_inhibitor(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Strong CYP3A4 inhibitor with voclosporin: contraindicated (PI 4, 7)."""
    partners = facts.partners("strong-cyp3a4-inhibitor")
    if not partners:
        return
    yield Finding(
        "critical",
        f"Contraindicated: voclosporin with strong CYP3A4 inhibitor {names(partners)}",
        "Strong CYP3A4 inhibitors raise voclosporin exposure (ketoconazole: AUC x18) and the "
        "risk of acute and chronic nephrotoxicity; the combination is contraindicated.\n\n"
        + _involved(facts, partners),
        _removals(facts, partners),
    )


def moderate_cyp3a4_inhibitor(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Moderate CYP3A4 inhibitor: reduce voclosporin to 15.8 mg AM + 7.9 mg PM (PI 2, 7).

    Cyclosporine is a moderate inhibitor too, but a second calcineurin inhibitor is not to be
    co-administered at any dose: the duplicate card speaks for it, not a dose change here.
    """
    partners = tuple(
        m
        for m in facts.partners("moderate-cyp3a4-inhibitor")
        if not m.has_role("calcineurin-inhibitor")
    )
    if not partners:
        return
    dose = knowledge.dose
    morning, evening = dose.moderate_inhibitor_morning_mg, dose.moderate_inhibitor_evening_mg
    regimen = f"{morning:g} mg in the morning and {evening:g} mg in the evening"
    suggestions = tuple(
        Suggestion(
            f"Change {order.name} to {regimen}",
            (ReplaceDosage(order, ((morning, "MORN"), (evening, "EVE")), regimen),),
            is_recommended=True,
        )
        for order in facts.draft_voclosporin
        if order.can_be_changed and not _has_regimen(order, (morning, evening), dose.mg_tolerance)
    )
    already = facts.ordering_voclosporin and all(
        _has_regimen(order, (morning, evening), dose.mg_tolerance)
        for order in facts.draft_voclosporin
    )
    if already:
        summary = f"Moderate CYP3A4 inhibitor {names(partners)}: voclosporin dose already reduced"
    else:
        summary = (
            f"Moderate CYP3A4 inhibitor {names(partners)}: reduce voclosporin to "
            f"{morning:g} mg AM + {evening:g} mg PM"
        )
    yield Finding(
        "info" if already else "warning",
        summary,
        f"With a moderate CYP3A4 inhibitor the label dose of LUPKYNIS is {regimen} "
        "(verapamil raised voclosporin AUC 2.7x).\n\n" + _involved(facts, partners),
        suggestions,
    )


def _has_regimen(order: Medication, regimen: tuple[float, ...], tolerance: float) -> bool:
    if order.dosage is None or len(order.dosage.doses) != len(regimen):
        return False
    return all(abs(d.mg - r) <= tolerance for d, r in zip(order.dosage.doses, regimen, strict=True))


def cyp3a4_inducer(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Strong CYP3A4 inducers: avoid (PI 7); moderate ones warned too (team decision)."""
    strong = facts.partners("strong-cyp3a4-inducer")
    moderate = tuple(m for m in facts.partners("moderate-cyp3a4-inducer") if m not in strong)
    if not strong and not moderate:
        return
    partners = strong + moderate
    detail = (
        "CYP3A4 inducers lower voclosporin exposure and may make it ineffective. The label says "
        "to avoid strong inducers."
    )
    if moderate:
        detail += (
            f" Moderate inducers ({names(moderate)}) are flagged conservatively: whether the US "
            "label names moderate inducers is not verified."
        )
    kind = "strong" if strong else "moderate"
    yield Finding(
        "warning",
        f"Avoid voclosporin with {kind} CYP3A4 inducer {names(partners)}",
        detail + "\n\n" + _involved(facts, partners),
        _removals(facts, partners),
    )


def live_vaccine(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Live vaccine ordered with or during voclosporin, or given shortly before starting (PI 5.9).

    Recorded immunizations are read only for initiation (IDSA: live vaccines >= 4 weeks before
    immunosuppression); their absence from the chart is reported by the engine, not assumed.
    """
    ordered = facts.partners("live-vaccine")
    window = knowledge.live_vaccine_days_before_initiation
    recent_given = []
    if facts.is_initiation:
        since = facts.now - timedelta(days=window)
        recent_given = [
            i for i in facts.immunizations if i.live and i.when is not None and i.when >= since
        ]
    if not ordered and not recent_given:
        return
    lines = [order_line(o) for o in ordered]
    lines += [f"- {i.name} given {when_text(i.when)} (`{i.reference}`)" for i in recent_given]
    if ordered:
        summary = f"Live vaccine {names(ordered)} with voclosporin: avoid live vaccines"
    else:
        summary = f"Live vaccine given in the last {window} days: delay starting voclosporin?"
    yield Finding(
        "warning",
        summary,
        "Avoid live vaccines during LUPKYNIS treatment (immunosuppression: risk of vaccine "
        f"infection). Live vaccines should be given at least {window} days before "
        "immunosuppression starts.\n\n" + "\n".join(lines),
        remove_suggestions(ordered),
    )


def cyclophosphamide(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """With cyclophosphamide: not recommended (PI 1, limitation of use)."""
    partners = facts.partners("cyclophosphamide")
    if not partners:
        return
    yield Finding(
        "warning",
        "Voclosporin with cyclophosphamide is not recommended (safety not established)",
        "Safety and efficacy of LUPKYNIS in combination with cyclophosphamide have not been "
        "established; use is not recommended.\n\n" + _involved(facts, partners),
        _removals(facts, partners),
    )


def calcineurin_inhibitor_duplicate(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """Tacrolimus or cyclosporine with voclosporin: therapeutic duplication (local rule)."""
    partners = facts.partners("calcineurin-inhibitor")
    if not partners:
        return
    yield Finding(
        "warning",
        f"Two calcineurin inhibitors: voclosporin with {names(partners)}",
        "Voclosporin is a calcineurin inhibitor; a second one duplicates therapy and adds "
        "nephrotoxicity. (Local rule: the US label has no statement on this combination.)\n\n"
        + _involved(facts, partners),
        _removals(facts, partners),
    )


def p_gp_substrate(facts: PatientFacts, knowledge: Knowledge) -> Iterator[Outcome]:
    """P-gp substrates (digoxin): voclosporin raises their levels (PI 7; Ling 2014)."""
    partners = facts.partners("p-gp-substrate")
    if not partners:
        return
    yield Finding(
        "info",
        f"Voclosporin inhibits P-gp: monitor {names(partners)} levels",
        "Voclosporin is a P-gp inhibitor (digoxin Cmax +50%, AUC +25%). For P-gp substrates "
        "where small concentration changes can cause serious toxicity, reduce the substrate's "
        "dose per its label and monitor.\n\n" + _involved(facts, partners),
    )
