"""Which medications are current, treatment courses, re-initiation, and facts computed once.

Knowledge decisions, second round: "which medications are current", "outside and OTC
medications", "treatment course", "re-initiation after discontinuation".
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest

from cds_service.rules import regimen
from cds_service.rules.engine import evaluate
from cds_service.rules.model import RemoveOrder, ReplaceDosage
from fhir_mappings.build import build_facts
from fhir_mappings.facts import Dosage, DoseAmount, Medication, PatientFacts, is_current
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.supply import supply_until
from fhir_mappings.vocabulary import DataCategory as D
from fhir_mappings.vocabulary import Role
from tests.support.clinical import NOW, bid, egfr, facts, med, mmf, voclosporin

TODAY = NOW.date()


def day(offset: int) -> str:
    """An ISO date ``offset`` days from today (negative: in the past)."""
    return (TODAY + timedelta(days=offset)).isoformat()


def fired(f: PatientFacts, knowledge: Knowledge) -> dict[str, str]:
    """rule id -> indicator of the cards the engine would produce."""
    return {x.rule_id: x.indicator for x in evaluate(f, knowledge).findings}


# -- supply: the last covered day ----------------------------------------------------------------


def request(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "authoredOn": day(-10), **extra}


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (request(dispenseRequest={"validityPeriod": {"end": day(3)}}), day(3)),
        (
            request(dispenseRequest={"expectedSupplyDuration": {"value": 14, "unit": "days"}}),
            day(3),  # day -10 is day 1 of 14: the 14th is day 3
        ),
        (
            request(
                dispenseRequest={
                    "expectedSupplyDuration": {"value": 1, "unit": "wk"},
                    "numberOfRepeatsAllowed": 1,
                }
            ),
            day(3),  # 7 x (1 + 1) days
        ),
        (
            request(
                dispenseRequest={
                    "validityPeriod": {"end": day(20)},
                    "expectedSupplyDuration": {"value": 14, "unit": "d"},
                }
            ),
            day(20),  # the later end
        ),
        (
            {
                "resourceType": "MedicationDispense",
                "whenHandedOver": f"{day(-29)}T10:00:00Z",
                "daysSupply": {"value": 30, "unit": "day"},
            },
            day(0),
        ),
        (
            {"resourceType": "MedicationStatement", "effectivePeriod": {"end": day(-1)}},
            day(-1),
        ),
        (request(), None),
    ],
    ids=[
        "validity-end",
        "supply-14-days",
        "supply-with-repeat",
        "later-of-both",
        "dispense-days-supply",
        "statement-period-end",
        "nothing-stated",
    ],
)
def test_supply_until_is_the_last_covered_day(resource, expected):
    """Validity end, supply x (1 + repeats) from authoredOn, daysSupply from hand-over."""
    got = supply_until(resource)
    assert (got.isoformat() if got else None) == expected


# -- is_current: every status x intent -----------------------------------------------------------


def record(status: str | None, *, kind: str = "MedicationRequest", **kw: Any) -> Medication:
    return replace(
        med("clarithromycin", status=status or "x"), status=status, record_type=kind, **kw
    )


@pytest.mark.parametrize(
    ("status", "intent", "supply", "expected"),
    [
        ("active", "order", None, True),
        ("on-hold", "order", None, True),
        ("completed", "order", None, False),
        ("completed", "order", 0, True),  # the last covered day is today
        ("completed", "order", -1, False),  # the day after the last covered day
        ("completed", "order", 12, True),  # the clarithromycin: 12 days left
        ("unknown", "order", 5, True),
        ("unknown", "order", None, False),
        ("stopped", "order", 12, False),
        ("cancelled", "order", 12, False),
        ("entered-in-error", "order", 12, False),
        ("draft", "order", 12, False),
        ("active", "plan", None, True),
        ("on-hold", "plan", None, False),
        ("completed", "proposal", 12, False),
        ("active", "proposal", None, True),
        (None, "order", 12, False),
    ],
    ids=lambda v: str(v),
)
def test_medication_request_currency(status, intent, supply, expected):
    """Active/on-hold count; completed/unknown while supplied; plans only when active."""
    until = TODAY + timedelta(days=supply) if supply is not None else None
    assert is_current(record(status, intent=intent, supply_until=until), TODAY) is expected


@pytest.mark.parametrize(
    ("kind", "status", "expected"),
    [
        ("MedicationStatement", "active", True),
        ("MedicationStatement", "intended", True),
        ("MedicationStatement", "not-taken", False),
        ("MedicationStatement", "stopped", False),
        ("MedicationDispense", "in-progress", True),
        ("MedicationDispense", "declined", False),
        ("MedicationDispense", "completed", False),  # no days supply: over
    ],
    ids=lambda v: str(v),
)
def test_statement_and_dispense_currency(kind, status, expected):
    """Statements and dispenses follow their own status value sets."""
    assert is_current(record(status, kind=kind), TODAY) is expected


# -- treatment course ----------------------------------------------------------------------------


def order(start: int, *, status: str = "completed", until: int | None = None, n: int = 0):
    """A recorded voclosporin order authored ``start`` days from today."""
    return replace(
        voclosporin(draft=False, status=status, authored_days_ago=-start),
        reference=f"MedicationRequest/v{n}-{start}",
        supply_until=TODAY + timedelta(days=until) if until is not None else None,
    )


@pytest.mark.parametrize(
    ("second_start", "courses"),
    [(-300 + 29 + 1, 1), (-300 + 29 + 181, 1), (-300 + 29 + 182, 2)],
    ids=["touching", "gap-180", "gap-181"],
)
def test_course_gap_boundary(second_start, courses):
    """Spans that touch or leave <= 180 uncovered days are one course; 181 starts another."""
    first = order(-300, until=-300 + 29)
    second = order(second_start, status="active", n=1)
    f = facts(medications=(first, second))
    assert len(f.courses) == courses
    assert f.course_start == (first.authored_on if courses == 1 else second.authored_on)


def test_order_without_supply_spans_ninety_days(knowledge):
    """No stated supply: the payer's 90-day quantity period (seed 002) is the span."""
    assert knowledge.course.default_span_days == knowledge.prior_authorization.quantity_period_days
    first = order(-400)  # covers -400 .. -311
    f = facts(medications=(first, order(-311 + 181, n=1)))
    assert len(f.courses) == 1
    f = facts(medications=(first, order(-311 + 182, n=1)))
    assert len(f.courses) == 2


def test_renewal_when_previous_order_is_completed(knowledge):
    """A completed prescription that ended weeks ago: the draft continues the course."""
    previous = order(-120, until=-30)
    f = facts(
        medications=(mmf(), previous),
        egfr=(egfr(80, 125), egfr(52, 3)),
    )
    assert f.is_renewal
    assert f.course_start == previous.authored_on
    assert fired(f, knowledge)["egfr-decline"] == "critical"  # 35% below the course baseline


def test_restart_after_long_gap_is_a_new_course_with_a_new_baseline(knowledge):
    """A course that ended more than 180 days ago: a new start, not judged on the old baseline."""
    old = order(-900, until=-600)
    f = facts(medications=(mmf(), old), egfr=(egfr(95, 905), egfr(58, 5)))
    assert not f.is_renewal
    assert f.is_initiation
    assert f.course is None
    assert f.course_start is None
    assert "egfr-decline" not in fired(f, knowledge)


def test_current_order_keeps_its_course_running():
    """An active order authored long ago with no supply stated is current: the course is too."""
    f = facts(medications=(order(-400, status="active"),))
    assert f.course is not None
    assert f.course.current
    assert f.course.end == TODAY


def test_treatment_duration_counts_from_the_course_start(knowledge):
    """A renewal 200 days into a course is past the 24-week reassessment."""
    f = facts(medications=(mmf(), order(-200, until=-110), order(-110, status="active", n=1)))
    found = list(regimen.treatment_duration(f, knowledge))
    assert found
    assert "reassess" in found[0].summary.lower()


# -- re-initiation after discontinuation ---------------------------------------------------------


def stopped_course(*readings: tuple[float, int]) -> PatientFacts:
    """A course authored 150 days ago, stopped; eGFR readings as (value, days ago)."""
    stopped = order(-150, status="stopped")
    return facts(
        medications=(mmf(), stopped),
        draft_orders=(replace(voclosporin(), dosage=bid(7.9)),),
        egfr=tuple(egfr(value, ago) for value, ago in readings),
    )


@pytest.mark.parametrize(
    ("latest", "expected"),
    [(79.9, "warning"), (80.0, None), (85.0, None)],
    ids=["79.9%", "80.0%", "85%"],
)
def test_reinitiation_needs_egfr_back_to_eighty_percent(knowledge, latest, expected):
    """After a stop for a >= 30% decline, re-start only once eGFR is >= 80% of baseline."""
    f = stopped_course((100, 155), (55, 60), (latest, 2))
    assert fired(f, knowledge).get("reinitiation-after-discontinuation") == expected


def test_reinitiation_not_recovered_suggests_cancelling(knowledge):
    """eGFR still low: the card offers to take the draft out."""
    f = stopped_course((100, 155), (55, 60), (62, 2))
    card = next(
        x
        for x in evaluate(f, knowledge).findings
        if x.rule_id == "reinitiation-after-discontinuation"
    )
    assert isinstance(card.suggestions[0].actions[0], RemoveOrder)


def test_reinitiation_dose_above_seven_point_nine_suggests_it(knowledge):
    """eGFR recovered but the draft restarts at 23.7 mg: suggest 7.9 mg twice daily."""
    f = replace(stopped_course((100, 155), (55, 60), (90, 2)), draft_orders=(voclosporin(),))
    card = next(
        x
        for x in evaluate(f, knowledge).findings
        if x.rule_id == "reinitiation-after-discontinuation"
    )
    action = card.suggestions[0].actions[0]
    assert isinstance(action, ReplaceDosage)
    assert action.doses == ((7.9, None), (7.9, None))


@pytest.mark.parametrize(
    "readings",
    [((100, 155), (75, 60), (72, 2)), ((100, 155), (62, 2))],
    ids=["decline-25%-only", "eGFR-above-60"],
)
def test_no_reinitiation_check_without_a_discontinuation_decline(knowledge, readings):
    """A stop without a >= 30% decline to < 60 on record is not an eGFR discontinuation."""
    f = stopped_course(*readings)
    assert "reinitiation-after-discontinuation" not in fired(f, knowledge)


def test_reinitiation_applies_only_after_a_stopped_course(knowledge):
    """A completed (not stopped) course with a low eGFR is the decline rule's business."""
    f = replace(
        stopped_course((100, 155), (55, 60), (60, 2)), medications=(mmf(), order(-150, n=2))
    )
    assert "reinitiation-after-discontinuation" not in fired(f, knowledge)


# -- outside and OTC medications through the mapping --------------------------------------------


def chart_facts(terminology, chart, drafts=()) -> PatientFacts:
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-01-01"}
    return build_facts(
        terminology=terminology,
        now=NOW,
        patient_id="p1",
        patient=patient,
        chart=chart,
        draft_orders=list(drafts),
        selections=None,
        unavailable={},
    )


LUPKYNIS_DRAFT = {
    "resourceType": "MedicationRequest",
    "id": "draft-v",
    "status": "draft",
    "intent": "order",
    "subject": {"reference": "Patient/p1"},
    "medicationCodeableConcept": {"text": "LUPKYNIS 7.9 mg capsule"},
    "authoredOn": day(0),
}


def test_medication_statement_of_st_johns_wort_is_current(terminology, knowledge):
    """A patient-reported St John's wort (MedicationStatement) meets a voclosporin draft."""
    statement = {
        "resourceType": "MedicationStatement",
        "id": "ms-1",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "St. John's Wort 300 mg capsule"},
        "effectivePeriod": {"start": day(-40)},
    }
    f = chart_facts(terminology, {D.MEDICATION_STATEMENTS: [statement]}, [LUPKYNIS_DRAFT])
    assert [m.record_type for m in f.current_medications] == ["MedicationStatement"]
    assert f.unreadable == ()  # a valid R4 MedicationStatement
    assert fired(f, knowledge)["cyp3a4-inducer"] == "warning"


def test_dispense_with_days_supply_left_is_current(terminology):
    """A completed dispense whose days supply still covers today is in force."""
    dispense = {
        "resourceType": "MedicationDispense",
        "id": "md-1",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "clarithromycin 500 MG Oral Tablet"},
        "whenHandedOver": f"{day(-2)}T09:00:00Z",
        "daysSupply": {"value": 14, "unit": "day"},
    }
    f = chart_facts(terminology, {D.MEDICATION_DISPENSES: [dispense]}, [LUPKYNIS_DRAFT])
    assert [m.reference for m in f.current_medications] == ["MedicationDispense/md-1"]
    assert f.unreadable == ()
    assert f.current_medications[0].supply_until == date.fromisoformat(day(11))


def test_statement_of_voclosporin_makes_the_patient_on_it(terminology):
    """An outside voclosporin (MedicationStatement) counts as taking it: a new interacting
    draft is checked against it."""
    statement = {
        "resourceType": "MedicationStatement",
        "id": "ms-v",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "voclosporin 7.9 mg"},
        "effectivePeriod": {"start": day(-30)},
    }
    keto = {
        **LUPKYNIS_DRAFT,
        "id": "draft-k",
        "medicationCodeableConcept": {"text": "ketoconazole 200 MG Oral Tablet"},
    }
    f = chart_facts(terminology, {D.MEDICATION_STATEMENTS: [statement]}, [keto])
    assert f.takes_voclosporin
    assert f.voclosporin_involved


# -- computed once (issue 13) --------------------------------------------------------------------


def test_many_drafts_evaluate_in_linear_time(knowledge, monkeypatch):
    """2,000 drafts: the derived collections are computed once, not once per draft."""
    import fhir_mappings.facts as facts_module

    calls = {"current": 0, "is_voclosporin": 0}
    original = facts_module.is_current

    def counting(medication: Medication, today: date) -> bool:
        calls["current"] += 1
        return original(medication, today)

    def is_voclosporin(medication: Medication) -> bool:
        calls["is_voclosporin"] += 1
        return Role.VOCLOSPORIN in medication.roles

    monkeypatch.setattr(facts_module, "is_current", counting)
    monkeypatch.setattr(Medication, "is_voclosporin", property(is_voclosporin))
    drafts = tuple(
        replace(voclosporin(), reference=f"MedicationRequest/d{n}", draft_index=n)
        for n in range(2000)
    )
    meds = (mmf(), order(-60, status="active"), med("ketoconazole", "strong-cyp3a4-inhibitor"))
    f = facts(draft_orders=drafts, medications=meds)
    evaluate(f, knowledge)
    # Once per recorded medication for current_medications and once per course record:
    # independent of the number of drafts.
    assert 0 < calls["current"] <= 4 * len(meds)
    # Each draft is asked whether it is voclosporin a bounded number of times (quadratic: ~4e6).
    assert calls["is_voclosporin"] <= 20 * len(drafts)


def test_course_policy_is_local_policy(knowledge):
    """CDS_COURSE_MAX_GAP_DAYS / CDS_COURSE_DEFAULT_SPAN_DAYS replace the rules.toml values."""
    site = knowledge.with_local_policy(course_max_gap_days=30, course_default_span_days=60)
    assert (site.course.max_gap_days, site.course.default_span_days) == (30, 60)
    first, second = order(-300, until=-200), order(-150, status="active", n=1)  # gap 49 days
    assert len(facts(medications=(first, second)).courses) == 1
    assert len(facts(medications=(first, second), course_rules=site.course).courses) == 2
    with pytest.raises(ValueError, match="0 or more"):
        knowledge.with_local_policy(course_max_gap_days=-1)


def test_facts_without_course_policy_cannot_tell_courses():
    """PatientFacts built without rules.toml [course] refuse to guess a course (the engine then
    reports "could not check" for the rules that need one)."""
    f = facts(course_rules=None, medications=(order(-30, status="active"),))
    with pytest.raises(ValueError, match="course_rules"):
        _ = f.courses


def test_missing_statements_make_checks_incomplete_not_skipped(knowledge):
    """Without medicationStatements the interaction checks run on the orders and say so; the
    card does not claim they could not run."""
    missing = D.MEDICATION_STATEMENTS
    f = facts(
        unavailable=frozenset({missing}),
        unavailable_reasons=((missing, "not prefetched; FHIR server not usable"),),
    )
    card = next(x for x in evaluate(f, knowledge).findings if x.rule_id == "data-unavailable")
    assert re.match(r"\d+ voclosporin check\(s\) ran on incomplete data: ", card.summary)
    assert "cyp3a4-inducer: ran on what was available: medicationStatements unavailable" in (
        card.detail
    )
    assert "could not run" not in card.summary


def test_reinitiation_rewrites_the_whole_split_regimen(knowledge):
    """AM 7.9 mg + PM 15.8 mg drafts: one suggestion for both; accepting it is 7.9 mg BID,
    never a third dose beside the AM draft (review finding)."""
    am = replace(
        voclosporin(dosage=Dosage((DoseAmount(7.9, "MORN", "morning"),), 1.0, "7.9 mg AM")),
        reference="MedicationRequest/am",
    )
    pm = replace(
        voclosporin(dosage=Dosage((DoseAmount(15.8, "EVE", "evening"),), 1.0, "15.8 mg PM")),
        reference="MedicationRequest/pm",
    )
    f = replace(stopped_course((100, 155), (55, 60), (90, 2)), draft_orders=(am, pm))
    card = next(
        x
        for x in evaluate(f, knowledge).findings
        if x.rule_id == "reinitiation-after-discontinuation"
    )
    actions = card.suggestions[0].actions
    changed = {a.order.reference for a in actions}
    assert changed == {"MedicationRequest/am", "MedicationRequest/pm"}
    kept = [a for a in actions if isinstance(a, ReplaceDosage)]
    assert sum(mg for a in kept for mg, _ in a.doses) == pytest.approx(15.8)


@pytest.mark.parametrize(
    ("comparator", "value", "expected"),
    [(">", 80.0, None), ("<", 79.0, "warning"), (">", 70.0, "info")],
    ids=["above-80-recovered", "below-79-not-recovered", "above-70-cannot-tell"],
)
def test_reinitiation_reads_a_latest_egfr_bound(knowledge, comparator, value, expected):
    """The latest eGFR reported as a bound decides when it lies wholly on one side of 80% of
    the baseline; otherwise a monitoring note asks for an exact result."""
    f = stopped_course((100, 155), (55, 60))
    f = replace(f, egfr=(*f.egfr, replace(egfr(value, 2), comparator=comparator)))
    got = fired(f, knowledge)
    assert got.get("reinitiation-after-discontinuation") == (
        expected if expected != "info" else None
    )
    if expected == "info":
        assert got.get("monitoring-gaps") == "info"


def test_prior_prescription_does_not_bridge_a_long_gap(knowledge):
    """A draft naming the priorPrescription of a course stopped 500 days ago is a new start:
    the initiation checks run (decision "treatment course"; review finding)."""
    old = order(-560, status="stopped", until=-500)
    draft = replace(voclosporin(), renews_prior=True)
    f = facts(medications=(mmf(), old), draft_orders=(draft,), egfr=(egfr(88, 5),))
    assert f.course is None
    assert not f.is_renewal
    assert f.is_initiation
    # Without any course on record the order's own word still counts.
    assert facts(medications=(mmf(),), draft_orders=(draft,)).is_renewal


@pytest.mark.parametrize(
    ("current", "gap"),
    [(60.0, False), (59.9, True)],
    ids=["60-no-decline-possible", "59.9-needs-the-baseline"],
)
def test_missing_baseline_matters_only_below_sixty(knowledge, current, gap):
    """Renewal without a pre-treatment eGFR: a recent eGFR >= 60 can never be a decline finding
    (decisions, first round), so no monitoring note asks for the baseline; below 60 it does."""
    f = facts(medications=(mmf(), order(-60, status="active")), egfr=(egfr(current, 5),))
    assert f.is_renewal
    assert ("monitoring-gaps" in fired(f, knowledge)) is gap
