"""Special populations: hepatic impairment, ESRD and dialysis, pregnancy and lactation.

LUPKYNIS PI 2.4 / 8.6 / 8.7 and 8.1 / 8.2 (knowledge 1.17, 1.18, 4; decisions "hepatic
impairment", "severe renal impairment, ESRD, dialysis", "pregnancy and lactation"). Each rule fires
when voclosporin is ordered (initiation or renewal) and reads conditions that are current (not
inactive, resolved or in remission) plus, for pregnancy and lactation, the latest status answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from cds_service.rules.model import (
    Finding,
    RuleResult,
    card_text,
    remove_suggestions,
    when_text,
)
from fhir_mappings.facts import Condition, PatientFacts
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.vocabulary import ConditionKind

# Child-Pugh classes in rising severity (knowledge 1.18: A mild, B moderate, C severe).
_MILD_OR_MODERATE = ("A", "B")
_SEVERE = "C"
_BY_SEVERITY = (*_MILD_OR_MODERATE, _SEVERE)


def current_conditions(facts: PatientFacts, *kinds: ConditionKind) -> list[Condition]:
    """Current conditions (and status answers) of any of ``kinds``, in chart order."""
    return [c for c in facts.conditions if c.is_current and c.kinds.intersection(kinds)]


def child_pugh_class(conditions: Iterable[Condition]) -> str | None:
    """The most severe Child-Pugh class any of the conditions states; None when none states one.

    The worst stated class decides: a chart saying "Child-Pugh B" on one problem and "class C"
    on another is treated as C (not recommended), never averaged into B.
    """
    stated = [c.child_pugh_class for c in conditions if c.child_pugh_class in _BY_SEVERITY]
    return max(stated, key=_BY_SEVERITY.index) if stated else None


def hepatic_dose_class(facts: PatientFacts) -> str | None:
    """The Child-Pugh class (A or B) when the 15.8 mg BID hepatic dose applies, else None.

    For ``dose-check``: class C is not recommended at all (its own card), an unknown class gives
    no dose to compare with (the hepatic card asks for the class).
    """
    found = child_pugh_class(current_conditions(facts, ConditionKind.HEPATIC_IMPAIRMENT))
    return found if found in _MILD_OR_MODERATE else None


def esrd_or_dialysis(facts: PatientFacts) -> bool:
    """ESRD or dialysis is on record: the severe-renal 15.8 mg start does not apply (not studied,
    knowledge 1.17), so ``egfr-baseline-low`` and ``dose-check`` do not advise it."""
    kinds = (ConditionKind.END_STAGE_RENAL_DISEASE, ConditionKind.DIALYSIS)
    return bool(current_conditions(facts, *kinds))


def _lines(conditions: Iterable[Condition], knowledge: Knowledge, rule_id: str) -> str:
    text = card_text(knowledge, rule_id)
    return "\n".join(
        text("condition", name=c.name, reference=c.reference)
        if c.observed_on is None
        else text("observation", name=c.name, reference=c.reference, when=when_text(c.observed_on))
        for c in conditions
    )


def hepatic_impairment(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Cirrhosis or hepatic failure on record while ordering voclosporin (knowledge 1.18).

    - Child-Pugh C (severe): warning, LUPKYNIS is not recommended. Warning, not critical: the
      label says "not recommended", which this service grades as a warning wherever the label
      uses it (cyclophosphamide, PI 1; baseline eGFR <= 45, PI 2.2); critical is kept for
      contraindications (PI 4) and the BP gate the label words "do not initiate".
    - Child-Pugh A or B: info with the label dose, 15.8 mg twice daily; ``dose-check`` warns when
      the drafted dose is higher.
    - Class not stated: warning asking for it, since C would make the order not recommended.

    Conditions that could not be obtained never reach this rule (``needs``).
    """
    if not facts.ordering_voclosporin:
        return
    conditions = current_conditions(facts, ConditionKind.HEPATIC_IMPAIRMENT)
    if not conditions:
        return
    text = card_text(knowledge, "hepatic-impairment")
    found = child_pugh_class(conditions)
    lines = _lines(conditions, knowledge, "hepatic-impairment")
    if found == _SEVERE:
        yield Finding(
            "warning",
            text("summary_severe"),
            text("detail_severe", conditions=lines),
            remove_suggestions(facts.draft_voclosporin, text("cancel")),
            subject=found,
        )
    elif found in _MILD_OR_MODERATE:
        yield Finding(
            "info",
            text("summary_mild_moderate", child_pugh=found),
            text("detail_mild_moderate", conditions=lines, child_pugh=found),
            subject=found,
        )
    else:
        yield Finding(
            "warning",
            text("summary_unknown"),
            text("detail_unknown", conditions=lines),
            subject="unknown",
        )


def end_stage_renal_disease(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """ESRD or dialysis on record while ordering voclosporin: use is not studied (knowledge 1.17).

    Warning: the label gives no dose for ESRD with or without hemodialysis (pharmacokinetics
    unknown), so a clinician must decide. For a patient on dialysis no eGFR is computed from
    creatinine (the mapping skips it); the card says so when creatinine is all the chart has.
    Conditions that could not be obtained never reach this rule (``needs``).
    """
    if not facts.ordering_voclosporin:
        return
    kinds = (ConditionKind.END_STAGE_RENAL_DISEASE, ConditionKind.DIALYSIS)
    conditions = current_conditions(facts, *kinds)
    if not conditions:
        return
    text = card_text(knowledge, "end-stage-renal-disease")
    dialysis = any(ConditionKind.DIALYSIS in c.kinds for c in conditions)
    measured = any(not m.computed for m in facts.egfr)
    not_computed = text("not_computed") if dialysis and facts.creatinine and not measured else ""
    yield Finding(
        "warning",
        text("summary_dialysis" if dialysis else "summary"),
        text(
            "detail",
            conditions=_lines(conditions, knowledge, "end-stage-renal-disease"),
            not_computed=not_computed,
        ),
    )


def pregnancy_lactation(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Pregnancy or lactation on record while ordering voclosporin: warning (knowledge 4).

    Read from current Conditions and from the latest pregnancy-status and breastfeeding-status
    answers (a newer "not pregnant" supersedes an older "pregnant"; an active pregnancy Condition
    still counts). An "unknown" answer, or none, gives no card: the label asks for no test.
    Data that could not be obtained is named on the data-unavailable card (``reads``), never
    read as "not pregnant".
    """
    if not facts.ordering_voclosporin:
        return
    pregnancy = current_conditions(facts, ConditionKind.PREGNANCY)
    lactation = current_conditions(facts, ConditionKind.LACTATION)
    if not pregnancy and not lactation:
        return
    text = card_text(knowledge, "pregnancy-lactation")
    rule_id = "pregnancy-lactation"
    parts = []
    if pregnancy:
        parts.append(text("pregnancy", conditions=_lines(pregnancy, knowledge, rule_id)))
    if lactation:
        parts.append(text("lactation", conditions=_lines(lactation, knowledge, rule_id)))
    if pregnancy and lactation:
        summary, subject = text("summary_both"), "pregnancy,lactation"
    elif pregnancy:
        summary, subject = text("summary_pregnancy"), "pregnancy"
    else:
        summary, subject = text("summary_lactation"), "lactation"
    yield Finding("warning", summary, "\n\n".join(parts), subject=subject)
