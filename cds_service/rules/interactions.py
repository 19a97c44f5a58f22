"""Drug and vaccine interactions with voclosporin, in both directions (PI 4, 5.9, 7)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from cds_service.rules.doses import regimen_of, rewrite
from cds_service.rules.model import (
    Finding,
    RuleResult,
    Suggestion,
    card_text,
    names,
    order_line,
    remove_suggestions,
    subject_of,
    when_text,
)
from fhir_mappings.facts import Medication, PatientFacts
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.vocabulary import Role


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


def hypersensitivity(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Allergy to voclosporin recorded while ordering it: contraindicated (PI 4, 5.8).

    Unknown allergy data is reported by the engine (this rule needs it).
    """
    if not facts.ordering_voclosporin:
        return
    allergies = [a for a in facts.allergies if a.to_voclosporin]
    if not allergies:
        return
    text = card_text(knowledge, "hypersensitivity")
    not_stated = text("not_stated")
    lines = [
        text(
            "allergy",
            substance=a.substance,
            criticality=a.criticality or not_stated,
            severities=", ".join(a.severities) or not_stated,
            verification=a.verification or not_stated,
            reference=a.reference,
        )
        for a in allergies
    ]
    yield Finding(
        "critical",
        text("summary"),
        text("detail", allergies="\n".join(lines)),
        remove_suggestions(facts.draft_voclosporin, text("cancel")),
    )


def strong_cyp3a4_inhibitor(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Strong CYP3A4 inhibitor with voclosporin: contraindicated (PI 4, 7)."""
    partners = facts.partners(Role.STRONG_CYP3A4_INHIBITOR)
    if not partners:
        return
    text = card_text(knowledge, "strong-cyp3a4-inhibitor")
    yield Finding(
        "critical",
        text("summary", partners=names(partners)),
        text("detail", involved=_involved(facts, partners)),
        _removals(facts, partners),
        subject=subject_of(partners),
    )


def moderate_cyp3a4_inhibitor(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Moderate CYP3A4 inhibitor: reduce voclosporin to 15.8 mg AM + 7.9 mg PM (PI 2, 7).

    Cyclosporine is a moderate inhibitor too, but a second calcineurin inhibitor is not to be
    co-administered at any dose: the duplicate card speaks for it, not a dose change here.
    """
    partners = tuple(
        m
        for m in facts.partners(Role.MODERATE_CYP3A4_INHIBITOR)
        if not m.has_role(Role.CALCINEURIN_INHIBITOR)
    )
    if not partners:
        return
    text = card_text(knowledge, "moderate-cyp3a4-inhibitor")
    dose = knowledge.dose
    morning, evening = dose.moderate_inhibitor_morning_mg, dose.moderate_inhibitor_evening_mg
    regimen = text("regimen")
    # Every voclosporin draft of the session is one regimen: an AM and a PM draft together.
    drafted = regimen_of(facts.draft_orders, knowledge)
    already = drafted is not None and drafted.matches((morning, evening), dose.mg_tolerance)
    suggestions: tuple[Suggestion, ...] = ()
    if drafted is not None and not already:
        actions = rewrite(drafted, ((morning, "MORN"), (evening, "EVE")), regimen, knowledge)
        if actions:
            suggestions = (
                Suggestion(
                    text("suggestion", order=names(drafted.orders), regimen=regimen),
                    actions,
                    is_recommended=True,
                ),
            )
    summary = text("summary_already_reduced" if already else "summary", partners=names(partners))
    yield Finding(
        "info" if already else "warning",
        summary,
        text("detail", regimen=regimen, involved=_involved(facts, partners)),
        suggestions,
        subject=subject_of(partners),
    )


def cyp3a4_inducer(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Strong CYP3A4 inducers: avoid (PI 7); moderate ones warned too (team decision)."""
    strong = facts.partners(Role.STRONG_CYP3A4_INDUCER)
    moderate = tuple(m for m in facts.partners(Role.MODERATE_CYP3A4_INDUCER) if m not in strong)
    if not strong and not moderate:
        return
    partners = strong + moderate
    text = card_text(knowledge, "cyp3a4-inducer")
    note = text("moderate_note", moderate=names(moderate)) if moderate else ""
    yield Finding(
        "warning",
        text("summary_strong" if strong else "summary_moderate", partners=names(partners)),
        text("detail", moderate_note=note, involved=_involved(facts, partners)),
        _removals(facts, partners),
        subject=subject_of(partners),
    )


def live_vaccine(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Live vaccine ordered with or during voclosporin, or given shortly before starting (PI 5.9).

    Recorded immunizations are read only for initiation (IDSA: live vaccines >= 4 weeks before
    immunosuppression); their absence from the chart is reported by the engine, not assumed.
    """
    ordered = facts.partners(Role.LIVE_VACCINE)
    window = knowledge.live_vaccine_days_before_initiation
    recent_given = []
    if facts.is_initiation:
        since = facts.now - timedelta(days=window)
        recent_given = [
            i for i in facts.immunizations if i.live and i.when is not None and i.when >= since
        ]
    if not ordered and not recent_given:
        return
    text = card_text(knowledge, "live-vaccine")
    lines = [order_line(o) for o in ordered]
    lines += [
        text("given", name=i.name, when=when_text(i.when), reference=i.reference)
        for i in recent_given
    ]
    summary = text("summary_ordered", vaccines=names(ordered)) if ordered else text("summary_given")
    yield Finding(
        "warning",
        summary,
        text("detail", lines="\n".join(lines)),
        remove_suggestions(ordered),
        subject=",".join(sorted({subject_of(ordered), *(i.name.lower() for i in recent_given)})),
    )


def cyclophosphamide(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """With cyclophosphamide: not recommended (PI 1, limitation of use)."""
    partners = facts.partners(Role.CYCLOPHOSPHAMIDE)
    if not partners:
        return
    text = card_text(knowledge, "cyclophosphamide")
    yield Finding(
        "warning",
        text("summary"),
        text("detail", involved=_involved(facts, partners)),
        _removals(facts, partners),
        subject=subject_of(partners),
    )


def calcineurin_inhibitor_duplicate(
    facts: PatientFacts, knowledge: Knowledge
) -> Iterator[RuleResult]:
    """Tacrolimus or cyclosporine with voclosporin: therapeutic duplication (local rule).

    A topical or ophthalmic one (tacrolimus ointment, cyclosporine eye drops) is no systemic
    duplicate: at most an info note on total immunosuppression (knowledge "route and dose form").
    """
    partners = facts.partners(Role.CALCINEURIN_INHIBITOR)
    text = card_text(knowledge, "calcineurin-inhibitor-duplicate")
    if not partners:
        local = facts.partners(Role.CALCINEURIN_INHIBITOR, include_non_systemic=True)
        if local:
            sites = ", ".join(sorted({m.exposure_site or "" for m in local} - {""}))
            shown = names(local)
            yield Finding(
                "info",
                text("summary_local", partners=shown, sites=sites),
                text("detail_local", partners=shown, sites=sites, involved=_involved(facts, local)),
                subject=subject_of(local),
            )
        return
    yield Finding(
        "warning",
        text("summary", partners=names(partners)),
        text("detail", involved=_involved(facts, partners)),
        _removals(facts, partners),
        subject=subject_of(partners),
    )


def p_gp_substrate(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """P-gp substrates (digoxin): voclosporin raises their levels (PI 7; Ling 2014)."""
    partners = facts.partners(Role.P_GP_SUBSTRATE)
    if not partners:
        return
    text = card_text(knowledge, "p-gp-substrate")
    yield Finding(
        "info",
        text("summary", partners=names(partners)),
        text("detail", involved=_involved(facts, partners)),
        subject=subject_of(partners),
    )
