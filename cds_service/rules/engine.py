"""Run every registered rule over the facts and stamp each finding with its rule id and source.

A rule that lacks data it ``needs`` is not run and is listed on the data-unavailable card; a rule
that raises is listed there too (and logged): a checker that could not check never looks like one
that found nothing. A result the chart simply does not hold (``MonitoringGap``: no potassium in
the window) is no failure: the gaps go on one info card, ``monitoring-gaps``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from cds_service.rules import (
    comedication,
    coverage,
    interactions,
    populations,
    regimen,
    renal,
    vitals,
)
from cds_service.rules.model import (
    SEVERITY,
    Finding,
    MonitoringGap,
    NotChecked,
    RuleSpec,
    card_text,
)
from fhir_mappings.categories import prefetch_key
from fhir_mappings.facts import SYSTEMIC_INTERACTION_ROLES, Medication, PatientFacts
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.vocabulary import INTERACTING_ROLES, Role
from fhir_mappings.vocabulary import DataCategory as D

log = logging.getLogger(__name__)

DATA_UNAVAILABLE = "data-unavailable"
MONITORING_GAPS = "monitoring-gaps"
INVOLVEMENT = "voclosporin-involvement"  # the label of "cannot tell" gaps, not a rule
_UNREADABLE_SHOWN = 20  # skipped resources listed one by one on the card, then a count
_MEDS = frozenset({D.MEDICATIONS})
# Interaction checks also read outside and OTC medications when the EHR offers them; without them
# they check the orders and say so ("checked the orders only").
_ALL_MEDS = _MEDS | {D.MEDICATION_STATEMENTS, D.MEDICATION_DISPENSES}
_RENAL = frozenset({D.EGFR, D.CREATININE, D.PATIENT})
_CONDITIONS = frozenset({D.CONDITIONS})

REGISTRY: tuple[RuleSpec, ...] = (
    RuleSpec("hypersensitivity", interactions.hypersensitivity, needs=frozenset({D.ALLERGIES})),
    RuleSpec("strong-cyp3a4-inhibitor", interactions.strong_cyp3a4_inhibitor, reads=_ALL_MEDS),
    RuleSpec("moderate-cyp3a4-inhibitor", interactions.moderate_cyp3a4_inhibitor, reads=_ALL_MEDS),
    RuleSpec("cyp3a4-inducer", interactions.cyp3a4_inducer, reads=_ALL_MEDS),
    RuleSpec("live-vaccine", interactions.live_vaccine, reads=_ALL_MEDS | {D.IMMUNIZATIONS}),
    RuleSpec("egfr-baseline-missing", renal.egfr_baseline_missing, needs=_RENAL),
    RuleSpec("egfr-baseline-low", renal.egfr_baseline_low, needs=_RENAL),
    RuleSpec("egfr-decline", renal.egfr_decline, needs=_RENAL | _MEDS),
    RuleSpec(
        "reinitiation-after-discontinuation",
        renal.reinitiation_after_discontinuation,
        needs=_RENAL | _MEDS,
    ),
    RuleSpec(
        "blood-pressure-high", vitals.blood_pressure_high, needs=frozenset({D.BLOOD_PRESSURE})
    ),
    RuleSpec(
        "blood-pressure-high-on-treatment",
        vitals.blood_pressure_high_on_treatment,
        needs=frozenset({D.BLOOD_PRESSURE}),
    ),
    RuleSpec(
        "blood-pressure-missing", vitals.blood_pressure_missing, needs=frozenset({D.BLOOD_PRESSURE})
    ),
    RuleSpec("cyclophosphamide", interactions.cyclophosphamide, reads=_ALL_MEDS),
    RuleSpec("pediatric", regimen.pediatric, needs=frozenset({D.PATIENT})),
    RuleSpec(
        "background-therapy-missing",
        regimen.background_therapy_missing,
        needs=_MEDS,
        reads=_ALL_MEDS,  # mycophenolate may be a dispense or a statement
    ),
    RuleSpec("hyperkalemia", vitals.hyperkalemia, needs=frozenset({D.POTASSIUM})),
    RuleSpec("nephrotoxic-comedication", comedication.nephrotoxic_comedication, reads=_ALL_MEDS),
    RuleSpec(
        "hyperkalemia-comedication",
        comedication.hyperkalemia_comedication,
        reads=_ALL_MEDS | {D.POTASSIUM},
    ),
    RuleSpec(
        "calcineurin-inhibitor-duplicate",
        interactions.calcineurin_inhibitor_duplicate,
        reads=_ALL_MEDS,
    ),
    RuleSpec("p-gp-substrate", interactions.p_gp_substrate, reads=_ALL_MEDS),
    RuleSpec("dose-check", regimen.dose_check, reads=_RENAL | _CONDITIONS),
    RuleSpec("treatment-duration", regimen.treatment_duration, needs=_MEDS),
    RuleSpec("hepatic-impairment", populations.hepatic_impairment, needs=_CONDITIONS),
    RuleSpec("end-stage-renal-disease", populations.end_stage_renal_disease, needs=_CONDITIONS),
    RuleSpec(
        "pregnancy-lactation",
        populations.pregnancy_lactation,
        reads=_CONDITIONS | {D.PREGNANCY_LACTATION},
    ),
    RuleSpec(
        "prior-authorization",
        coverage.prior_authorization,
        reads=frozenset({D.PATIENT, D.CONDITIONS, D.IMMUNIZATIONS, D.UPCR}) | _ALL_MEDS | _RENAL,
    ),
)
RULE_IDS: tuple[str, ...] = (
    *(spec.rule_id for spec in REGISTRY),
    MONITORING_GAPS,
    DATA_UNAVAILABLE,
)

_ORDER = {rule_id: n for n, rule_id in enumerate(RULE_IDS)}  # cards of one severity: registry order


@dataclass(frozen=True)
class Evaluation:
    findings: tuple[Finding, ...]
    rules_evaluated: tuple[str, ...]
    not_checked: tuple[NotChecked, ...]
    monitoring_gaps: tuple[MonitoringGap, ...] = ()


def _unknown_involvement(facts: PatientFacts) -> list[NotChecked]:
    """Why it cannot be told whether voclosporin is involved (empty: it can be told)."""
    gaps = [
        NotChecked(
            f"the drug in draft order `{m.reference}` could not be identified, so it is "
            "unknown whether it is voclosporin or interacts with it",
            INVOLVEMENT,
        )
        for m in facts.draft_orders
        if m.is_selected and not m.identified
    ]
    if D.MEDICATIONS in facts.unavailable and any(
        m.is_selected and _interacting_roles(m) for m in facts.draft_orders
    ):
        gaps.append(
            NotChecked(
                "an interacting drug is ordered but the medication list could "
                "not be read, so it is unknown whether the patient takes "
                "voclosporin",
                INVOLVEMENT,
            )
        )
    return gaps


def _interacting_roles(order: Medication) -> frozenset[Role]:
    """The order's roles that matter to voclosporin; a cream or eye drop keeps none of the
    systemic ones (knowledge "route and dose form"), so it raises no "cannot tell" gap."""
    roles = order.roles & INTERACTING_ROLES
    return roles - SYSTEMIC_INTERACTION_ROLES if order.is_non_systemic else roles


def evaluate(facts: PatientFacts, knowledge: Knowledge) -> Evaluation:
    """Run the registry; no voclosporin anywhere means no voclosporin cards."""
    if not facts.voclosporin_involved:
        unknown = _unknown_involvement(facts)
        if unknown:
            return _finish(facts, knowledge, [], unknown, [], ())
        return Evaluation((), (), ())
    findings: list[Finding] = []
    gaps: list[NotChecked] = []
    monitoring: list[MonitoringGap] = []
    unavailable = facts.unavailable
    citations = knowledge.rules
    for spec in REGISTRY:
        missing: list[str] = []
        if unavailable:
            absent = spec.wants & unavailable
            if absent:
                missing = sorted(prefetch_key(c) for c in absent)
                if spec.needs & absent:
                    reason = "not run: " + ", ".join(missing) + " unavailable"
                    gaps.append(NotChecked(reason, spec.rule_id))
                    continue
        try:
            for result in spec.check(facts, knowledge):
                if isinstance(result, Finding):
                    citation = citations.get(spec.rule_id)
                    findings.append(
                        result.stamped(spec.rule_id, citation.section if citation else "")
                    )
                elif isinstance(result, NotChecked):
                    gaps.append(replace(result, rule_id=spec.rule_id))
                elif isinstance(result, MonitoringGap):
                    monitoring.append(replace(result, rule_id=spec.rule_id))
                else:  # a broken rule: said as one below
                    raise TypeError(f"yielded a {type(result).__name__}, not a RuleResult")
        except Exception:  # a broken rule must surface as "could not check", not as silence
            log.exception("rule %s raised", spec.rule_id)
            gaps.append(NotChecked("internal error while checking (logged)", spec.rule_id))
            continue
        if missing:
            gaps.append(
                NotChecked(
                    "ran on what was available: " + ", ".join(missing) + " unavailable",
                    spec.rule_id,
                    partial=True,
                )
            )
    evaluated = (*[s.rule_id for s in REGISTRY], MONITORING_GAPS)
    return _finish(facts, knowledge, findings, gaps, monitoring, evaluated)


def _stamp(finding: Finding, rule_id: str, knowledge: Knowledge) -> Finding:
    citation = knowledge.rules.get(rule_id)
    return finding.stamped(rule_id, citation.section if citation else "")


def _finish(
    facts: PatientFacts,
    knowledge: Knowledge,
    findings: list[Finding],
    gaps: list[NotChecked],
    monitoring: list[MonitoringGap],
    evaluated: tuple[str, ...],
) -> Evaluation:
    unavailable_card = _data_unavailable(facts, gaps, knowledge)
    if unavailable_card is not None:
        findings.append(_stamp(unavailable_card, DATA_UNAVAILABLE, knowledge))
    near = _near_match_note(facts, knowledge)
    if near:
        findings[:] = [replace(f, detail=f.detail + near) for f in findings]
    if monitoring:
        findings.append(_stamp(_monitoring_gaps(monitoring, knowledge), MONITORING_GAPS, knowledge))
    findings.sort(key=lambda f: (SEVERITY[f.indicator], _ORDER.get(f.rule_id, 99)))
    return Evaluation(
        tuple(findings), (*evaluated, DATA_UNAVAILABLE), tuple(gaps), tuple(monitoring)
    )


def _near_match_note(facts: PatientFacts, knowledge: Knowledge) -> str:
    """Say on every card which order text was read as voclosporin though one letter off
    (knowledge "names as EHRs write them"); "" when every voclosporin name matched exactly."""
    near = [
        m
        for m in (*facts.draft_orders, *facts.medications)
        if m.matched_text is not None and m.is_voclosporin
    ]
    if not near:
        return ""
    text = card_text(knowledge, "data-unavailable")
    return "".join(text("near_match", text=m.matched_text, reference=m.reference) for m in near)


def _monitoring_gaps(monitoring: list[MonitoringGap], knowledge: Knowledge) -> Finding:
    """One info card for every result the chart lacks; the checks ran on what it holds."""
    text = card_text(knowledge, "monitoring-gaps")
    results = ", ".join(dict.fromkeys(gap.result for gap in monitoring))
    lines = "\n".join(text("line", rule=gap.rule_id, note=gap.note) for gap in monitoring)
    return Finding("info", text("summary", results=results), text("detail", lines=lines))


def _data_unavailable(
    facts: PatientFacts, gaps: list[NotChecked], knowledge: Knowledge
) -> Finding | None:
    if not gaps and not facts.unavailable_reasons and not facts.unreadable:
        return None
    text = card_text(knowledge, "data-unavailable")
    lines = []
    if facts.unavailable_reasons:
        lines.append(text("data_heading"))
        lines += [
            text("data", category=prefetch_key(c), reason=r) for c, r in facts.unavailable_reasons
        ]
    if gaps:
        lines.append(text("checks_heading"))
        lines += [text("check", rule=gap.rule_id, reason=gap.reason) for gap in gaps]
    if facts.unreadable:
        lines.append(text("skipped_heading"))
        lines += [
            text("skipped", reference=u.reference, reason=u.reason)
            for u in facts.unreadable[:_UNREADABLE_SHOWN]
        ]
        if len(facts.unreadable) > _UNREADABLE_SHOWN:
            lines.append(text("skipped_more", count=len(facts.unreadable) - _UNREADABLE_SHOWN))
    affected = sorted({gap.rule_id for gap in gaps if not gap.partial})
    incomplete = sorted({gap.rule_id for gap in gaps if gap.partial} - set(affected))
    if affected:
        summary = text("summary_checks", count=len(affected), rules=", ".join(affected))
    elif incomplete:
        summary = text("summary_incomplete", count=len(incomplete), rules=", ".join(incomplete))
    else:
        summary = text("summary_data")
    return Finding("warning", summary, text("detail", lines="\n".join(lines)))
