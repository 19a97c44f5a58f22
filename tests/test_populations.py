"""Special populations (rules/populations.py and their mapping): hepatic impairment, ESRD and
dialysis, pregnancy and lactation, and the severe-renal starting dose at its boundary."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from cds_service.rules.engine import DATA_UNAVAILABLE, evaluate
from cds_service.rules.model import Finding, RemoveOrder
from fhir_mappings.build import build_facts
from fhir_mappings.clinical import child_pugh_class
from fhir_mappings.facts import Condition, Measurement, PatientFacts
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.vocabulary import ConditionKind as CK
from fhir_mappings.vocabulary import DataCategory as D
from tests.support.clinical import NOW, ago, bid, egfr, facts, voclosporin

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"


def fired(f: PatientFacts, knowledge: Knowledge) -> dict[str, str]:
    """rule id -> indicator of the cards the engine would produce."""
    return {finding.rule_id: finding.indicator for finding in evaluate(f, knowledge).findings}


def finding(f: PatientFacts, knowledge: Knowledge, rule_id: str) -> Finding:
    return next(x for x in evaluate(f, knowledge).findings if x.rule_id == rule_id)


def condition(
    kind: CK, name: str = "", child_pugh: str | None = None, status: str | None = "active"
) -> Condition:
    return Condition(f"Condition/{kind}", name or str(kind), frozenset({kind}), status, child_pugh)


def with_conditions(*extra: Condition, **overrides: Any) -> PatientFacts:
    """The baseline patient (lupus nephritis, clean labs, LUPKYNIS 23.7 mg BID) plus conditions."""
    base = facts(**overrides)
    return facts(conditions=(*base.conditions, *extra), **overrides)


# -- hepatic impairment (knowledge 1.18) --------------------------------------------------------


@pytest.mark.parametrize(
    ("child_pugh", "indicator"),
    [("A", "info"), ("B", "info"), ("C", "warning"), (None, "warning")],
    ids=["child-pugh-A", "child-pugh-B", "child-pugh-C", "class-unknown"],
)
def test_hepatic_impairment_by_child_pugh_class(knowledge, child_pugh, indicator):
    """A/B: info with the 15.8 mg BID dose; C: not recommended (warning); unknown: ask."""
    f = with_conditions(condition(CK.HEPATIC_IMPAIRMENT, "Cirrhosis", child_pugh))
    card = finding(f, knowledge, "hepatic-impairment")
    assert card.indicator == indicator
    if child_pugh in ("A", "B"):
        assert f"Child-Pugh {child_pugh}" in card.summary
        assert "15.8 mg twice daily" in card.summary
    elif child_pugh == "C":
        assert "not recommended" in card.summary
        assert [type(a) for s in card.suggestions for a in s.actions] == [RemoveOrder]
    else:
        assert "Child-Pugh class unknown" in card.summary
        assert "class C: LUPKYNIS is not recommended" in card.detail


@pytest.mark.parametrize(
    ("child_pugh", "mg", "flagged"),
    [("A", 23.7, True), ("B", 23.7, True), ("B", 15.8, False), ("C", 23.7, False)],
    ids=["A-23.7", "B-23.7", "B-15.8", "C-not-a-dose"],
)
def test_dose_check_hepatic_dose(knowledge, child_pugh, mg, flagged):
    """Child-Pugh A/B above 15.8 mg BID is a dose-check problem; C has its own card, no dose."""
    f = with_conditions(
        condition(CK.HEPATIC_IMPAIRMENT, "Cirrhosis", child_pugh),
        draft_orders=(voclosporin(dosage=bid(mg)),),
    )
    dose = [x for x in evaluate(f, knowledge).findings if x.rule_id == "dose-check"]
    assert bool(dose) is flagged
    if flagged:
        assert f"Child-Pugh {child_pugh}: the label dose is 15.8 mg" in dose[0].detail


def test_worst_stated_class_decides(knowledge):
    """B on one problem and C on another is C (not recommended), never averaged."""
    f = with_conditions(
        condition(CK.HEPATIC_IMPAIRMENT, "Cirrhosis", "B"),
        condition(CK.HEPATIC_IMPAIRMENT, "Hepatic failure", "C"),
    )
    assert "Child-Pugh C" in finding(f, knowledge, "hepatic-impairment").summary


def test_resolved_hepatic_condition_is_not_current(knowledge):
    """A condition recorded as resolved does not fire."""
    f = with_conditions(condition(CK.HEPATIC_IMPAIRMENT, "Cirrhosis", "C", status="resolved"))
    assert "hepatic-impairment" not in fired(f, knowledge)


def test_hepatic_rule_needs_conditions(knowledge):
    """Conditions that could not be obtained: could not check, never 'no hepatic impairment'."""
    f = facts(unavailable=frozenset({D.CONDITIONS}))
    result = evaluate(f, knowledge)
    assert "hepatic-impairment" not in {x.rule_id for x in result.findings}
    assert {g.rule_id for g in result.not_checked} >= {
        "hepatic-impairment",
        "end-stage-renal-disease",
        "pregnancy-lactation",
    }
    assert DATA_UNAVAILABLE in {x.rule_id for x in result.findings}


def test_populations_rules_quiet_when_not_ordering_voclosporin(knowledge):
    """Another drug ordered for a patient not on voclosporin: no special-population card."""
    f = with_conditions(
        condition(CK.HEPATIC_IMPAIRMENT, child_pugh="C"),
        condition(CK.DIALYSIS),
        condition(CK.PREGNANCY),
        draft_orders=(),
    )
    assert evaluate(f, knowledge).findings == ()


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (["Liver cirrhosis", "Child-Pugh class B"], "B"),
        (["Cirrhosis, Child-Pugh C"], "C"),
        (["Child\u2013Turcotte\u2013Pugh grade a"], "A"),
        (["Cirrhosis", "class C"], "C"),
        (["Cirrhosis of liver"], None),
        (["Child-Pugh B", "Child-Pugh C"], None),
        (["Child-Pugh score 7"], None),
    ],
    ids=["stage-B", "text-C", "en-dash-A", "bare-class-C", "none", "disagree", "score-not-read"],
)
def test_child_pugh_class_from_text(texts, expected):
    """The class is read from text or stage; a disagreement or a bare score is not guessed."""
    assert child_pugh_class(texts) == expected


# -- ESRD and dialysis (knowledge 1.17) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "summary"),
    [(CK.END_STAGE_RENAL_DISEASE, "End-stage renal disease"), (CK.DIALYSIS, "Dialysis")],
    ids=["esrd", "dialysis"],
)
def test_esrd_or_dialysis_is_not_studied(knowledge, kind, summary):
    """ESRD or dialysis on record while ordering: warning that use is not studied."""
    card = finding(with_conditions(condition(kind)), knowledge, "end-stage-renal-disease")
    assert card.indicator == "warning"
    assert card.summary.startswith(summary)
    assert "not been studied" in card.summary


def test_dialysis_with_creatinine_only_says_no_egfr_was_computed(knowledge):
    """Creatinine but no measured eGFR on dialysis: the card says none was computed."""
    creatinine = Measurement(6.2, "mg/dL", ago(5), "Observation/cr", "2160-0")
    f = with_conditions(condition(CK.DIALYSIS), egfr=(), creatinine=(creatinine,))
    assert "No eGFR was computed" in finding(f, knowledge, "end-stage-renal-disease").detail
    # The ESRD card says it; a second card asking for a baseline eGFR would contradict it.
    assert "egfr-baseline-missing" not in fired(f, knowledge)


def test_no_severe_renal_start_advised_for_esrd_or_dialysis(knowledge):
    """Measured eGFR 8 on dialysis: no '15.8 mg start' advice; the ESRD card says not studied."""
    f = with_conditions(condition(CK.DIALYSIS), egfr=(egfr(8, 5),))
    cards = fired(f, knowledge)
    assert cards["end-stage-renal-disease"] == "warning"
    assert "15.8" not in finding(f, knowledge, "egfr-baseline-low").detail
    assert "dose-check" not in cards


# -- severe renal impairment at baseline: eGFR < 30 (knowledge 1.17) -----------------------------


@pytest.mark.parametrize(
    ("value", "severe"), [(29.9, True), (30.0, False)], ids=["29.9-severe", "30-not-severe"]
)
def test_severe_renal_starting_dose_boundary(knowledge, value, severe):
    """Baseline eGFR < 30 names the 15.8 mg BID start and flags 23.7 mg; exactly 30 does not."""
    f = facts(egfr=(egfr(value, 5),))
    assert ("15.8 mg twice daily" in finding(f, knowledge, "egfr-baseline-low").detail) is severe
    dose = [x for x in evaluate(f, knowledge).findings if x.rule_id == "dose-check"]
    assert bool(dose) is severe


# -- pregnancy and lactation (knowledge 4) ------------------------------------------------------


@pytest.mark.parametrize(
    ("kinds", "summary"),
    [
        ((CK.PREGNANCY,), "Pregnancy on record"),
        ((CK.LACTATION,), "Lactation on record"),
        ((CK.PREGNANCY, CK.LACTATION), "Pregnancy and lactation on record"),
    ],
    ids=["pregnancy", "lactation", "both"],
)
def test_pregnancy_or_lactation_warns(knowledge, kinds, summary):
    """Pregnancy or lactation on record while ordering voclosporin: a warning."""
    f = with_conditions(*(condition(k) for k in kinds))
    card = finding(f, knowledge, "pregnancy-lactation")
    assert card.indicator == "warning"
    assert card.summary.startswith(summary)
    if CK.PREGNANCY in kinds:
        assert "alcohol" in card.detail
        assert "mycophenolate" in card.detail


@pytest.mark.parametrize(
    "kind", [CK.NOT_PREGNANT, CK.PREGNANCY_UNKNOWN], ids=["not-pregnant", "unknown"]
)
def test_negative_or_unknown_pregnancy_answer_gives_no_card(knowledge, kind):
    """A 'not pregnant' or 'unknown' answer is no finding (the label asks for no test)."""
    assert "pregnancy-lactation" not in fired(with_conditions(condition(kind)), knowledge)


def test_pregnancy_status_not_obtained_is_named(knowledge):
    """Pregnancy-status data that could not be obtained is named, not read as 'not pregnant'."""
    f = facts(unavailable=frozenset({D.PREGNANCY_LACTATION}))
    result = evaluate(f, knowledge)
    gaps = [g for g in result.not_checked if g.rule_id == "pregnancy-lactation"]
    assert gaps
    assert "pregnancyLactation" in gaps[0].reason
    assert DATA_UNAVAILABLE in {x.rule_id for x in result.findings}


# -- mapping: FHIR resources -> facts -----------------------------------------------------------

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1986-05-01"}


def build(terminology, conditions=(), observations=(), statuses=()) -> PatientFacts:
    return build_facts(
        terminology=terminology,
        now=NOW,
        patient_id="p1",
        patient=PATIENT,
        chart={
            D.CONDITIONS: list(conditions),
            D.CREATININE: list(observations),
            D.PREGNANCY_LACTATION: list(statuses),
        },
        draft_orders=[],
        selections=None,
        unavailable={},
    )


def fhir_condition(system: str, code: str, n: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": f"c{n}",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        **extra,
    }


def status_observation(
    loinc: str, system: str, code: str, days_ago: int, n: int = 1, status: str = "final"
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"s{n}",
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": (NOW - timedelta(days=days_ago)).isoformat(),
        "valueCodeableConcept": {"coding": [{"system": system, "code": code}]},
    }


# Every code row this change added to conditions.csv, with the kind a clinician expects.
NEW_CODE_ROWS = [
    *((ICD, c, CK.HEPATIC_IMPAIRMENT) for c in ("K70.30", "K70.31", "K70.40", "K70.41")),
    *((ICD, c, CK.HEPATIC_IMPAIRMENT) for c in ("K71.7", "K72.00", "K72.01", "K72.10")),
    *((ICD, c, CK.HEPATIC_IMPAIRMENT) for c in ("K72.11", "K72.90", "K72.91", "K74.3")),
    *((ICD, c, CK.HEPATIC_IMPAIRMENT) for c in ("K74.4", "K74.5", "K74.60", "K74.69")),
    *((SCT, c, CK.HEPATIC_IMPAIRMENT) for c in ("19943007", "123717006", "266468003")),
    *((SCT, c, CK.HEPATIC_IMPAIRMENT) for c in ("420054005", "425413006", "831000119103")),
    *((SCT, c, CK.HEPATIC_IMPAIRMENT) for c in ("109819003", "59927004", "197270009")),
    (ICD, "N18.6", CK.END_STAGE_RENAL_DISEASE),
    (SCT, "46177005", CK.END_STAGE_RENAL_DISEASE),
    (SCT, "236434000", CK.END_STAGE_RENAL_DISEASE),
    (SCT, "236435004", CK.DIALYSIS),
    (SCT, "714152005", CK.DIALYSIS),
    (ICD, "Z99.2", CK.DIALYSIS),
    *((SCT, c, CK.PREGNANCY) for c in ("77386006", "72892002", "47200007", "237239003")),
    *((SCT, c, CK.PREGNANCY) for c in ("57630001", "59466002", "41587001", "65147003")),
    *((SCT, c, CK.PREGNANCY) for c in ("169560008", "169561007")),
    (LOINC, "LA15173-0", CK.PREGNANCY),
    (LOINC, "LA26683-5", CK.NOT_PREGNANT),
    (SCT, "60001007", CK.NOT_PREGNANT),
    (LOINC, "LA4489-6", CK.PREGNANCY_UNKNOWN),
    (SCT, "261665006", CK.PREGNANCY_UNKNOWN),
    *((SCT, c, CK.LACTATION) for c in ("1260078007", "1258999009", "1258998001")),
    *((SCT, c, CK.LACTATION) for c in ("866041003", "69840006", "225604004", "82374005")),
    (ICD, "Z39.1", CK.LACTATION),
]


@pytest.mark.parametrize(
    ("system", "code", "kind"), NEW_CODE_ROWS, ids=[f"{c}-{k}" for _, c, k in NEW_CODE_ROWS]
)
def test_new_condition_code_maps_to_its_kind(terminology, system, code, kind):
    """Each new conditions.csv row: a Condition coded with it carries that kind."""
    f = build(terminology, conditions=[fhir_condition(system, code)])
    assert [c.kinds for c in f.conditions] == [frozenset({kind})]


def test_child_pugh_class_read_from_condition_stage(terminology):
    """The class comes from the stage summary of a hepatic condition."""
    staged = fhir_condition(ICD, "K74.60", stage=[{"summary": {"text": "Child-Pugh class B"}}])
    f = build(terminology, conditions=[staged])
    assert [c.child_pugh_class for c in f.conditions] == ["B"]


def test_child_pugh_text_on_other_conditions_is_not_read(terminology):
    """Only hepatic conditions carry a class (a lupus nephritis "class C" text is not one)."""
    ln = fhir_condition(ICD, "M32.14", stage=[{"summary": {"text": "class C"}}])
    assert [c.child_pugh_class for c in build(terminology, conditions=[ln]).conditions] == [None]


@pytest.mark.parametrize(
    ("system", "code", "kind"),
    [
        (LOINC, "LA15173-0", CK.PREGNANCY),
        (LOINC, "LA26683-5", CK.NOT_PREGNANT),
        (LOINC, "LA4489-6", CK.PREGNANCY_UNKNOWN),
        (SCT, "77386006", CK.PREGNANCY),
    ],
    ids=["LA15173-0-pregnant", "LA26683-5-not-pregnant", "LA4489-6-unknown", "sct-pregnant"],
)
def test_pregnancy_status_answer_codes(terminology, knowledge, system, code, kind):
    """LOINC 82810-3 answers: positive, negative and unknown are read as such."""
    f = build(terminology, statuses=[status_observation("82810-3", system, code, 3)])
    assert [c.kinds for c in f.conditions] == [frozenset({kind})]
    assert [c.observed_on for c in f.conditions] == [NOW - timedelta(days=3)]
    f = facts(conditions=f.conditions)
    assert ("pregnancy-lactation" in fired(f, knowledge)) is (kind is CK.PREGNANCY)


def test_newer_pregnancy_status_supersedes_older(terminology):
    """'Not pregnant' last week after 'pregnant' last year: the latest answer is the status."""
    f = build(
        terminology,
        statuses=[
            status_observation("82810-3", LOINC, "LA15173-0", 300, n=1),
            status_observation("82810-3", LOINC, "LA26683-5", 7, n=2),
        ],
    )
    assert [c.kinds for c in f.conditions] == [frozenset({CK.NOT_PREGNANT})]


def test_unrecognised_or_erroneous_answers_are_skipped(terminology):
    """An unknown answer code is reported and the older answer read; entered-in-error is none."""
    f = build(
        terminology,
        statuses=[
            status_observation("82810-3", LOINC, "LA15173-0", 30, n=1),
            status_observation("82810-3", "urn:local", "Y", 5, n=2),
            status_observation("82810-3", LOINC, "LA26683-5", 1, n=3, status="entered-in-error"),
        ],
    )
    assert [c.kinds for c in f.conditions] == [frozenset({CK.PREGNANCY})]
    assert [u.reference for u in f.unreadable] == ["Observation/s2"]


def test_status_without_an_answer_is_no_result(terminology):
    """A status Observation with dataAbsentReason and no answer is no result, not 'unreadable'."""
    absent = status_observation("82810-3", LOINC, "LA26683-5", 1, n=2)
    del absent["valueCodeableConcept"]
    absent["dataAbsentReason"] = {"text": "asked but declined"}
    f = build(terminology, statuses=[status_observation("82810-3", LOINC, "LA15173-0", 20), absent])
    assert [c.kinds for c in f.conditions] == [frozenset({CK.PREGNANCY})]
    assert f.unreadable == ()


def test_breastfeeding_status_answer_is_lactation(terminology):
    """LOINC 63895-7 answered with a lactation code (866041003) is lactation."""
    f = build(terminology, statuses=[status_observation("63895-7", SCT, "866041003", 2)])
    assert [c.kinds for c in f.conditions] == [frozenset({CK.LACTATION})]


def creatinine(value: float = 6.2) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "cr1",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "2160-0"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": (NOW - timedelta(days=5)).isoformat(),
        "valueQuantity": {"value": value, "unit": "mg/dL"},
    }


@pytest.mark.parametrize(
    ("code", "computed"),
    [("Z99.2", False), ("N18.6", True), ("K74.60", True)],
    ids=["dialysis-none", "esrd-untreated-computed", "other-condition-computed"],
)
def test_no_egfr_computed_for_dialysis_patient(terminology, code, computed):
    """Creatinine only: eGFR is computed from it, except for a patient on dialysis."""
    f = build(terminology, conditions=[fhir_condition(ICD, code)], observations=[creatinine()])
    assert f.creatinine
    assert bool(f.egfr) is computed


def test_resolved_dialysis_does_not_stop_the_computation(terminology):
    """Dialysis recorded as resolved (a transplant since): eGFR is computed again."""
    resolved = fhir_condition(ICD, "Z99.2")
    resolved["clinicalStatus"]["coding"][0]["code"] = "resolved"
    f = build(terminology, conditions=[resolved], observations=[creatinine(1.1)])
    assert [m.computed for m in f.egfr] == [True]
