"""Drug and vaccine interactions with voclosporin, in both directions (PI 4, 5.9, 7)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from cds_service.rules.doses import regimen_of, rewrite
from cds_service.rules.model import (
    Finding,
    NotChecked,
    RuleResult,
    Suggestion,
    card_text,
    involved,
    names,
    on_treatment,
    order_line,
    remove_suggestions,
    subject_of,
    when_text,
)
from fhir_mappings.facts import Allergy, Medication, PatientFacts
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.vocabulary import Role


def _removals(facts: PatientFacts, partners: tuple[Medication, ...]) -> tuple[Suggestion, ...]:
    """Offer to drop the drafted partner, or the drafted voclosporin when the partner stays."""
    drafted_partners = tuple(p for p in partners if p.is_draft)
    if drafted_partners:
        return remove_suggestions(drafted_partners)
    return remove_suggestions(facts.draft_voclosporin)


def _serious(allergy: Allergy) -> bool:
    """Whether a record counts as the serious or severe hypersensitivity PI 4 contraindicates.

    Serious: type allergy, criticality high, or a severe reaction (decision "allergy severity").
    Mild: a low-criticality intolerance, or reactions that are all recorded as mild. Anything
    else (type, criticality and severity not stated, unable-to-assess, a moderate reaction on a
    record of unknown type) counts as serious: a record that does not say the reaction was mild
    cannot rule out the contraindication (conservative).
    """
    if allergy.kind == "allergy" or allergy.criticality == "high" or "severe" in allergy.severities:
        return True
    low_intolerance = allergy.kind == "intolerance" and allergy.criticality == "low"
    mild_reactions = bool(allergy.severities) and all(s == "mild" for s in allergy.severities)
    return not (low_intolerance or mild_reactions)


def hypersensitivity(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Allergy to voclosporin recorded while ordering it: contraindicated (PI 4, 5.8).

    Critical when any matching record is serious (``_serious``: unknown counts as serious); a
    warning naming the reaction when every record is a low-criticality intolerance or a mild
    reaction. Unknown allergy data is reported by the engine (this rule needs it).
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
            kind=a.kind or text("kind_not_stated"),
            criticality=a.criticality or not_stated,
            reactions=", ".join(a.reactions) or text("reaction_not_stated"),
            severities=", ".join(a.severities) or not_stated,
            verification=a.verification or not_stated,
            reference=a.reference,
        )
        for a in allergies
    ]
    cancel = remove_suggestions(facts.draft_voclosporin, text("cancel"))
    if any(_serious(a) for a in allergies):
        yield Finding(
            "critical", text("summary"), text("detail", allergies="\n".join(lines)), cancel
        )
        return
    reactions = ", ".join(dict.fromkeys(r for a in allergies for r in a.reactions))
    reactions = reactions or text("reaction_not_stated")
    yield Finding(
        "warning",
        text("summary_mild", reactions=reactions),
        text("detail_mild", reactions=reactions, allergies="\n".join(lines)),
        cancel,
        subject=",".join(sorted(a.reference for a in allergies)),
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
        text("detail", involved=involved(facts, partners)),
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
    # Already that regimen, or below it (7.9 mg BID after an eGFR reduction): never suggest more.
    already = drafted is not None and (
        drafted.matches((morning, evening), dose.mg_tolerance)
        or drafted.within((morning, evening), dose.mg_tolerance)
    )
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
        text("detail", regimen=regimen, involved=involved(facts, partners)),
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
        text("detail", moderate_note=note, involved=involved(facts, partners)),
        _removals(facts, partners),
        subject=subject_of(partners),
    )


def live_vaccine(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Live vaccine ordered with or during voclosporin, given shortly before starting, or given
    during the course (PI 5.9; payer renewal criterion: no live vaccines).

    Recorded immunizations are read for initiation (IDSA: live vaccines >= 4 weeks before
    immunosuppression) and on treatment (renewal, or another order for a patient on voclosporin):
    a live vaccine given on or after the course start is a warning to watch for vaccine-strain
    infection. A course whose start is unknown, with live vaccines on record, is said out loud
    (could not check), not read as "none given". Immunizations that could not be obtained are
    reported by the engine, not assumed absent.
    """
    ordered = facts.partners(Role.LIVE_VACCINE)
    text = card_text(knowledge, "live-vaccine")
    live = [i for i in facts.immunizations if i.live and i.when is not None]
    recent_given = []
    if facts.is_initiation:
        since = facts.now - timedelta(days=knowledge.live_vaccine_days_before_initiation)
        recent_given = [i for i in live if i.when is not None and i.when >= since]
    during = []
    start = facts.course_start
    if on_treatment(facts):
        if start is None and live:
            yield NotChecked(text("course_unknown"))
        elif start is not None:
            during = [i for i in live if i.when is not None and i.when >= start]
    given = recent_given or during
    if not ordered and not given:
        return
    lines = [order_line(o) for o in ordered]
    lines += [
        text("given", name=i.name, when=when_text(i.when), reference=i.reference) for i in given
    ]
    if ordered:
        summary = text("summary_ordered", vaccines=names(ordered))
    elif during:
        summary = text("summary_given_during")
    else:
        summary = text("summary_given")
    if during and not ordered:
        detail = text("detail_given_during", since=when_text(start), lines="\n".join(lines))
    else:
        detail = text("detail", lines="\n".join(lines))
    yield Finding(
        "warning",
        summary,
        detail,
        remove_suggestions(ordered),
        subject=",".join(sorted({subject_of(ordered), *(i.name.lower() for i in given)})),
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
        text("detail", involved=involved(facts, partners)),
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
                text("detail_local", partners=shown, sites=sites, involved=involved(facts, local)),
                subject=subject_of(local),
            )
        return
    yield Finding(
        "warning",
        text("summary", partners=names(partners)),
        text("detail", involved=involved(facts, partners)),
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
        text("detail", involved=involved(facts, partners)),
        subject=subject_of(partners),
    )
