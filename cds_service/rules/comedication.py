"""Co-medication that adds to a voclosporin risk: nephrotoxic drugs (PI 5.3) and drugs that
raise potassium (PI 5.6).

Both rules read ``facts.partners(role)``: the orders that would be taken together with
voclosporin (ordering voclosporin meets every drafted and active order; a patient on voclosporin
meets the newly written ones), so route handling there (topical products are not systemic
partners) applies here too.
"""

from __future__ import annotations

from collections.abc import Iterator

from cds_service.rules.model import (
    Finding,
    MonitoringGap,
    RuleResult,
    card_text,
    describe,
    involved,
    latest,
    names,
    recent,
    remove_suggestions,
    subject_of,
)
from cds_service.rules.vitals import potassium_limit
from fhir_mappings.facts import PatientFacts
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.vocabulary import DataCategory, Role

# Potassium differences are compared to the micro-mmol/L: 5.0 - 4.8 is 0.2 here, not
# 0.20000000000000018 (no lab reports potassium to more than two decimals).
_MMOL_DECIMALS = 6


def nephrotoxic_comedication(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Another nephrotoxic drug with or during voclosporin: warn and monitor eGFR (PI 5.3).

    The list is ``drugs.csv`` role ``nephrotoxic`` (the NINJA list and NSAIDs, each row cited).
    Offers to remove a drafted partner, never the voclosporin: the label asks for monitoring,
    not avoidance.
    """
    partners = facts.partners(Role.NEPHROTOXIC)
    if not partners:
        return
    text = card_text(knowledge, "nephrotoxic-comedication")
    yield Finding(
        "warning",
        text("summary", partners=names(partners)),
        text("detail", involved=involved(facts, partners)),
        remove_suggestions(p for p in partners if p.is_draft),
        subject=subject_of(partners),
    )


def hyperkalemia_comedication(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """A drug that raises potassium with or during voclosporin (PI 5.6; decision table).

    ``hyperkalemia-risk`` drugs (trimethoprim, potassium-sparing diuretics, potassium salts...):
    info, a warning when the latest potassium is at or above the limit or within
    ``potassium.near_limit_mmol_l`` below it (local policy). ``ace-inhibitor-or-arb`` (standard
    lupus nephritis care): only when potassium is at or above the limit. The limit is the
    result's reference high, else the local default (``vitals.potassium_limit``, as
    ``hyperkalemia``). No potassium in the window is a monitoring gap (on the info card, or a
    monitoring-gaps note for ACE inhibitors and ARBs alone); potassium that could not be obtained
    is named on the card, and the engine reports it on the data-unavailable card (the rule reads
    it).
    """
    risk = facts.partners(Role.HYPERKALEMIA_RISK)
    raas = tuple(m for m in facts.partners(Role.ACE_INHIBITOR_OR_ARB) if m not in risk)
    if not risk and not raas:
        return
    text = card_text(knowledge, "hyperkalemia-comedication")
    limits = knowledge.potassium
    result = latest(recent(facts.potassium, facts.now, limits.max_age_days))
    at_limit = near_limit = False
    if result is not None:
        high, basis = potassium_limit(result, knowledge)
        # A bound ("<5.0", ">4.0") counts as at or near the limit unless it rules that out.
        near = round(high - limits.near_limit_mmol_l, _MMOL_DECIMALS)
        at_limit = result.below(high) is not True
        near_limit = result.below(near) is not True
        potassium = text(
            "potassium_line", measurement=describe(result), high=high, basis=text(basis)
        )
    elif DataCategory.POTASSIUM in facts.unavailable:
        potassium = text("not_obtained")
    else:
        potassium = text("no_result")
    flagged = (*risk, *raas) if at_limit else risk
    if not flagged:
        if result is None and DataCategory.POTASSIUM not in facts.unavailable:
            yield MonitoringGap(text("gap_result"), text("gap_note", raas=names(raas)))
        return
    unflagged_raas = () if at_limit else raas
    raas_note = text("raas_note", raas=names(unflagged_raas)) if unflagged_raas else ""
    detail = text("detail", latest=potassium, raas=raas_note, involved=involved(facts, flagged))
    if result is not None and near_limit:
        summary = text(
            "summary_near",
            partners=names(flagged),
            value=result.shown,
            unit=result.unit,
            high=potassium_limit(result, knowledge)[0],
        )
        yield Finding("warning", summary, detail, subject=subject_of(flagged))
        return
    yield Finding(
        "info", text("summary", partners=names(flagged)), detail, subject=subject_of(flagged)
    )
