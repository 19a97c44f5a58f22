"""Lab values as labs send them: bounds, race-based eGFR, ties, retracted and absent results.

Knowledge sheet, "Decisions, second round": "lab values as labs send them" and "a card that found
nothing vs a check that could not run". FHIR JSON in, PatientFacts (and the cards) out.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cds_service.rules.engine import DATA_UNAVAILABLE, MONITORING_GAPS, evaluate
from cds_service.rules.model import decline_bounds
from fhir_mappings.facts import Measurement
from fhir_mappings.knowledge import Knowledge
from tests.support.clinical import egfr, facts, mmf, voclosporin
from tests.test_mappings import PATIENT, facts_from, observation

EGFR_UNIT = "mL/min/{1.73_m2}"


def fired(f, knowledge: Knowledge) -> dict[str, str]:
    """rule id -> indicator of the cards the engine would produce."""
    return {x.rule_id: x.indicator for x in evaluate(f, knowledge).findings}


def card(f, knowledge: Knowledge, rule_id: str):
    return next(x for x in evaluate(f, knowledge).findings if x.rule_id == rule_id)


def text_result(code: str, text: str, when: str = "2026-10-25", id_: str = "s1") -> dict[str, Any]:
    """An Observation whose value is a valueString, as many US labs send eGFR above 60."""
    obs = {**observation(code, 0, "x", when=when), "id": id_, "valueString": text}
    del obs["valueQuantity"]
    return obs


def bound(value: float, comparator: str, days_ago: float) -> Measurement:
    return replace(egfr(value, days_ago), comparator=comparator)


# -- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "comparator"),
    [
        (">60", 60.0, ">"),
        ("> 90 mL/min/1.73m2", 90.0, ">"),
        ("<15", 15.0, "<"),
        ("≥60", 60.0, ">="),
        ("52", 52.0, None),
    ],
    ids=[">60", ">90-with-unit", "<15", "≥60", "plain-52"],
)
def test_value_string_is_read_as_a_bound(terminology, text, value, comparator):
    """'>60' in valueString is a bound of 60 (comparator kept), not a number and not unreadable."""
    f = facts_from(terminology, [PATIENT, text_result("98979-8", text)])
    assert [(m.value, m.comparator) for m in f.egfr] == [(value, comparator)]
    assert f.unreadable == ()


def test_value_quantity_comparator_is_a_bound(terminology):
    """valueQuantity.comparator '>' makes the eGFR a bound; its shown value keeps the sign."""
    obs = observation("98979-8", 90, EGFR_UNIT)
    obs["valueQuantity"]["comparator"] = ">"
    f = facts_from(terminology, [PATIENT, obs])
    assert (f.egfr[0].comparator, f.egfr[0].shown) == (">", ">90")


def _absent_egfr() -> dict[str, Any]:
    absent = {**observation("98979-8", 0, EGFR_UNIT), "id": "s1"}
    del absent["valueQuantity"]
    absent["dataAbsentReason"] = {"coding": [{"code": "error"}]}
    return absent


@pytest.mark.parametrize(
    ("unusable", "reported"),
    [
        (text_result("98979-8", "see comment"), ["Observation/s1"]),
        (_absent_egfr(), []),
        ({**observation("98979-8", 20, EGFR_UNIT), "id": "s1", "status": "entered-in-error"}, []),
    ],
    ids=["unparseable-string", "data-absent-reason", "entered-in-error"],
)
def test_unusable_egfr_does_not_block_the_computed_one(terminology, unusable, reported):
    """An unusable eGFR of the day never hides the eGFR computed from that day's creatinine."""
    f = facts_from(terminology, [PATIENT, unusable, observation("2160-0", 1.1, "mg/dL")])
    assert [(m.computed, m.value) for m in f.egfr] == [(True, pytest.approx(59.2, abs=0.1))]
    assert [u.reference for u in f.unreadable] == reported


def test_entered_in_error_and_cancelled_never_count(terminology):
    """Retracted results are not read at all: not the latest, not unreadable, no day blocked."""
    wrong = observation("98979-8", 20, EGFR_UNIT, when="2026-10-30", status="entered-in-error")
    cancelled = {**observation("98979-8", 25, EGFR_UNIT, when="2026-10-30"), "id": "c1"}
    cancelled["status"] = "cancelled"
    older = observation("98979-8", 70, EGFR_UNIT, when="2026-10-20")
    f = facts_from(terminology, [PATIENT, wrong, cancelled, older])
    assert [m.value for m in f.egfr] == [70]
    assert f.unreadable == ()


def test_data_absent_reason_is_no_result_not_unreadable(terminology):
    """A result with dataAbsentReason is passed over silently; the older value is used."""
    absent = {**observation("2823-3", 0, "mmol/L", when="2026-10-30"), "id": "k-absent"}
    del absent["valueQuantity"]
    absent["dataAbsentReason"] = {"coding": [{"code": "error"}], "text": "haemolysed"}
    f = facts_from(terminology, [PATIENT, absent, observation("2823-3", 4.4, "mmol/L")])
    assert [m.value for m in f.potassium] == [4.4]
    assert f.unreadable == ()


def test_data_absent_reason_alone_is_a_monitoring_gap(terminology, knowledge):
    """Only an absent potassium on file: the hyperkalemia check says 'no result' at info."""
    absent = {**observation("2823-3", 0, "mmol/L"), "id": "k-absent"}
    del absent["valueQuantity"]
    absent["dataAbsentReason"] = {"coding": [{"code": "not-performed"}]}
    mapped = facts_from(terminology, [PATIENT, absent])
    f = replace(facts(), potassium=mapped.potassium, unreadable=mapped.unreadable)
    result = fired(f, knowledge)
    assert result.get(MONITORING_GAPS) == "info"
    assert DATA_UNAVAILABLE not in result
    assert "potassium" in card(f, knowledge, MONITORING_GAPS).summary


def test_creatinine_bound_gives_an_egfr_bound_the_other_way(terminology):
    """Creatinine '<0.5' proves eGFR above the value computed at 0.5 (eGFR falls as Scr rises)."""
    obs = observation("2160-0", 0.5, "mg/dL")
    obs["valueQuantity"]["comparator"] = "<"
    f = facts_from(terminology, [PATIENT, obs])
    assert (f.egfr[0].computed, f.egfr[0].comparator) == (True, ">")


# -- race-based codes and ties ------------------------------------------------------------------


def _pair(first: tuple[str, float], second: tuple[str, float]) -> list[dict[str, Any]]:
    """Two eGFR results from one draw (same instant), in the given entry order."""
    return [
        {**observation(code, value, EGFR_UNIT, when="2026-10-25T08:00:00Z"), "id": f"e{n}"}
        for n, (code, value) in enumerate((first, second))
    ]


@pytest.mark.parametrize(
    "order",
    [(("48642-3", 43), ("48643-1", 52)), (("48643-1", 52), ("48642-3", 43))],
    ids=["43-first", "52-first"],
)
def test_race_based_pair_from_one_draw_gives_the_lower(terminology, order):
    """MDRD 'non-black' 43 and 'black' 52 from the same blood: 43, whatever the entry order."""
    f = facts_from(terminology, [PATIENT, *_pair(*order)])
    assert [m.value for m in f.egfr] == [43]
    assert "race-based" in f.egfr[0].method


def test_race_based_yields_to_a_same_day_creatinine(terminology):
    """With a same-day creatinine, the race-free CKD-EPI 2021 eGFR is used, not the race pair."""
    resources = [*_pair(("88294-4", 43), ("88293-6", 52)), observation("2160-0", 1.1, "mg/dL")]
    f = facts_from(terminology, [PATIENT, *resources])
    assert [m.computed for m in f.egfr] == [True]


def test_race_based_yields_to_a_race_free_result(terminology):
    """A race-free eGFR of the same day wins over the race-based pair."""
    resources = [*_pair(("48642-3", 43), ("48643-1", 52)), observation("98979-8", 61, EGFR_UNIT)]
    f = facts_from(terminology, [PATIENT, *resources])
    assert [(m.code, m.value) for m in f.egfr] == [("98979-8", 61)]


def test_race_based_is_used_when_nothing_else_exists(terminology):
    """A lone race-based result is still a result (better than none), and says so."""
    f = facts_from(terminology, [PATIENT, observation("88294-4", 58, EGFR_UNIT)])
    assert [m.value for m in f.egfr] == [58]


@pytest.mark.parametrize("reverse", [False, True], ids=["as-listed", "reversed"])
def test_ties_at_one_time_follow_the_stated_order(terminology, reverse):
    """Two race-free eGFRs at one instant: exact before bound, then the lower; never entry order."""
    same = "2026-10-25T08:00:00Z"
    results = [
        {**observation("98979-8", 64, EGFR_UNIT, when=same), "id": "a"},
        {**observation("62238-1", 58, EGFR_UNIT, when=same), "id": "b"},
        {**text_result("98980-6", ">60", when=same, id_="c")},
    ]
    f = facts_from(terminology, [PATIENT, *(reversed(results) if reverse else results)])
    assert [m.value for m in f.egfr] == [58]


@pytest.mark.parametrize("reverse", [False, True], ids=["as-listed", "reversed"])
def test_potassium_ties_take_the_higher(terminology, reverse):
    """Two potassium results at one instant: the higher one (the one that would warn)."""
    same = "2026-10-25T08:00:00Z"
    results = [
        {**observation("2823-3", 4.1, "mmol/L", when=same), "id": "k1"},
        {**observation("6298-4", 5.6, "mmol/L", when=same), "id": "k2"},
    ]
    f = facts_from(terminology, [PATIENT, *(reversed(results) if reverse else results)])
    assert [m.value for m in f.potassium] == [5.6]


# -- the rules on bounds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "comparator", "expected"),
    [
        (60, ">", None),
        (45, ">", None),
        (45, ">=", "warning"),
        (45, "<", "warning"),
        (15, "<", "warning"),
        (50, "<", "warning"),
    ],
    ids=[">60-passes", ">45-passes", ">=45-not-shown-above", "<45-low", "<15-low", "<50-undecided"],
)
def test_baseline_low_gate_with_bounds(knowledge, value, comparator, expected):
    """'>60' proves the baseline is above 45; '<45' fails; a bound that cannot tell warns."""
    f = facts(egfr=(bound(value, comparator, 5),))
    assert fired(f, knowledge).get("egfr-baseline-low") == expected


def test_baseline_below_15_names_the_severe_start(knowledge):
    """'<15' proves eGFR < 30: the card gives the reduced starting dose, showing '<15'."""
    low = card(facts(egfr=(bound(15, "<", 5),)), knowledge, "egfr-baseline-low")
    assert "<15" in low.summary
    assert "15.8 mg twice daily" in low.detail


def test_undecided_bound_says_not_shown_above(knowledge):
    """'<50' is neither above nor below 45: the warning says it is not shown to be above 45."""
    low = card(facts(egfr=(bound(50, "<", 5),)), knowledge, "egfr-baseline-low")
    assert "reported as <50: not shown to be above 45" in low.summary


def renewal(baseline: Measurement, current: Measurement):
    """On voclosporin for 100 days, baseline before the start, current on treatment."""
    return facts(
        medications=(mmf(), voclosporin(draft=False, authored_days_ago=100)),
        draft_orders=(voclosporin(),),
        egfr=(baseline, current),
    )


@pytest.mark.parametrize(
    ("baseline", "current", "expected"),
    [
        (bound(60, ">", 105), bound(60, ">", 3), None),
        (bound(60, ">", 105), egfr(61, 3), None),
        (bound(60, ">", 105), egfr(52, 3), "gap"),
        (bound(60, ">", 105), egfr(42, 3), "critical"),
        (egfr(72, 105), bound(60, ">", 3), None),
    ],
    ids=[">60-to->60", ">60-to-61", ">60-to-52-no-percentage", ">60-to-42-over-30%", "72-to->60"],
)
def test_decline_with_bounds(knowledge, baseline, current, expected):
    """'>60' is >= 60 (no decline); with a bound there is no percentage, only its limits."""
    result = fired(renewal(baseline, current), knowledge)
    got = result.get("egfr-decline") or ("gap" if MONITORING_GAPS in result else None)
    assert got == expected


def test_decline_from_a_bound_baseline_says_no_percentage(knowledge):
    """Baseline '>60', now 52: the info note says why no decline percentage can be given."""
    f = renewal(bound(60, ">", 105), egfr(52, 3))
    note = card(f, knowledge, MONITORING_GAPS).detail
    assert "reported as >60" in note
    assert "no decline percentage" in note
    assert "more than 13.3%" in note


def test_decline_over_30_from_a_bound_baseline_says_more_than(knowledge):
    """Baseline '>60', now 42: more than 30% down, so discontinue; the card says 'more than'."""
    stop = card(renewal(bound(60, ">", 105), egfr(42, 3)), knowledge, "egfr-decline")
    assert "down more than 30.0%" in stop.summary
    assert "no exact percentage" in stop.detail


@pytest.mark.parametrize(
    ("baseline", "current", "expected"),
    [
        (egfr(72, 1), egfr(54, 0), (25.0, 25.0)),
        (bound(60, ">", 1), egfr(42, 0), (30.0, None)),
        (egfr(80, 1), bound(60, ">", 0), (None, 25.0)),
        (bound(60, ">", 1), bound(60, ">", 0), (None, None)),
    ],
    ids=["exact", "bound-baseline", "bound-current", "both-bounds"],
)
def test_decline_bounds(baseline, current, expected):
    """The least and most decline two results allow (None: no limit on that side)."""
    assert decline_bounds(baseline, current) == expected


# -- times as labs send them: offsets, one instant in two zones, UTC days -------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["as-listed", "reversed"])
def test_latest_is_the_latest_instant_whatever_the_offsets(terminology, reverse):
    """The latest eGFR is the latest instant: a result written on the 25th at -05:00 (the 26th,
    04:30 UTC) is newer than one written on the 26th at +01:00 (the 26th, 01:00 UTC)."""
    results = [
        {**observation("98979-8", 50, EGFR_UNIT, when="2026-10-25T23:30:00-05:00"), "id": "a"},
        {**observation("98979-8", 70, EGFR_UNIT, when="2026-10-26T02:00:00+01:00"), "id": "b"},
    ]
    f = facts_from(terminology, [PATIENT, *(reversed(results) if reverse else results)])
    assert [(m.value, m.source) for m in f.egfr] == [(50, "Observation/a")]


@pytest.mark.parametrize("reverse", [False, True], ids=["as-listed", "reversed"])
def test_one_instant_written_in_two_zones_is_one_draw(terminology, reverse):
    """10:00+02:00 and 08:00Z are one instant: a tie, so the lower eGFR, whatever the order."""
    results = [
        {**observation("98979-8", 64, EGFR_UNIT, when="2026-10-25T10:00:00+02:00"), "id": "a"},
        {**observation("62238-1", 58, EGFR_UNIT, when="2026-10-25T08:00:00Z"), "id": "b"},
    ]
    f = facts_from(terminology, [PATIENT, *(reversed(results) if reverse else results)])
    assert [m.value for m in f.egfr] == [58]


def _voclosporin_order(status: str, authored: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": f"v-{status}",
        "status": status,
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "LUPKYNIS 7.9 mg capsule"},
        "authoredOn": authored,
        "dispenseRequest": {"expectedSupplyDuration": {"value": 30, "unit": "days"}},
    }


def test_baseline_is_the_latest_on_the_course_start_day_in_utc(terminology):
    """The baseline is read by UTC day: 01:00+03:00 on 2 June is 1 June (the start day) in UTC
    and counts; 22:00-05:00 on 1 June is 2 June in UTC and does not."""
    results = [
        {**observation("98979-8", 90, EGFR_UNIT, when="2026-06-02T01:00:00+03:00"), "id": "x"},
        {**observation("98979-8", 80, EGFR_UNIT, when="2026-06-01T22:00:00-05:00"), "id": "y"},
        {**observation("98979-8", 70, EGFR_UNIT, when="2026-10-25T09:00:00Z"), "id": "z"},
    ]
    order = _voclosporin_order("active", "2026-06-01")
    f = facts_from(terminology, [PATIENT, order, *results])
    assert [m.value for m in f.egfr] == [90, 70]


def test_after_a_stopped_course_every_day_since_its_start_is_read(terminology):
    """After a stopped course the rules get the eGFR of every day since it started (measured, or
    computed from that day's creatinine), plus the baseline; older days only as the baseline."""
    order = _voclosporin_order("stopped", "2026-06-01")
    results = [
        {**observation("98979-8", 95, EGFR_UNIT, when="2026-05-20T09:00:00Z"), "id": "e0"},
        {**observation("98979-8", 99, EGFR_UNIT, when="2026-05-10T09:00:00Z"), "id": "e00"},
        {**observation("98979-8", 88, EGFR_UNIT, when="2026-07-01T09:00:00Z"), "id": "e1"},
        {**observation("2160-0", 1.4, "mg/dL", when="2026-08-01T09:00:00Z"), "id": "c2"},
        {**observation("98979-8", 61, EGFR_UNIT, when="2026-09-01T09:00:00+02:00"), "id": "e3"},
    ]
    f = facts_from(terminology, [PATIENT, order, *results])
    assert [(m.source, m.computed) for m in f.egfr] == [
        ("Observation/e0", False),
        ("Observation/e1", False),
        ("Observation/c2", True),
        ("Observation/e3", False),
    ]
