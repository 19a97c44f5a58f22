"""Each voclosporin rule at its boundaries, over PatientFacts (no HTTP, no FHIR)."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from cds_service.rules.engine import DATA_UNAVAILABLE, MONITORING_GAPS, REGISTRY, evaluate
from cds_service.rules.model import (
    Finding,
    MonitoringGap,
    NotChecked,
    RemoveOrder,
    ReplaceDosage,
    RuleSpec,
    Suggestion,
)
from cds_service.rules.renal import decline_percent
from fhir_mappings.facts import Dosage, DoseAmount
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.vocabulary import DataCategory
from tests.support.clinical import (
    NOW,
    allergy_to_voclosporin,
    bid,
    bp,
    egfr,
    facts,
    live_vaccine_given,
    med,
    mmf,
    potassium,
    voclosporin,
)


def fired(f, knowledge: Knowledge) -> dict[str, str]:
    """rule id -> indicator of the cards the engine would produce."""
    return {finding.rule_id: finding.indicator for finding in evaluate(f, knowledge).findings}


def finding(f, knowledge: Knowledge, rule_id: str) -> Finding:
    return next(x for x in evaluate(f, knowledge).findings if x.rule_id == rule_id)


def test_baseline_patient_gets_only_prior_authorization(knowledge):
    """A well-prepared initiation raises only the informational prior-authorization card."""
    assert fired(facts(), knowledge) == {"prior-authorization": "info"}


def test_no_voclosporin_anywhere_means_no_cards(knowledge):
    """An order set with no voclosporin, for a patient not on it, gets no voclosporin cards."""
    f = facts(draft_orders=(med("ketoconazole 200 MG", "strong-cyp3a4-inhibitor", draft=True),))
    assert evaluate(f, knowledge).findings == ()


# -- renal --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fires"),
    [(44.9, True), (45.0, True), (45.1, False), (29.0, True)],
    ids=["44.9-low", "45-low", "45.1-ok", "29-severe"],
)
def test_egfr_baseline_low_boundary(knowledge, value, fires):
    """Baseline eGFR <= 45 warns (PI 2.2); 45.1 does not."""
    assert ("egfr-baseline-low" in fired(facts(egfr=(egfr(value, 5),)), knowledge)) is fires


def test_egfr_below_30_names_the_reduced_starting_dose(knowledge):
    """With eGFR < 30 the card gives the 15.8 mg BID start and dose-check flags 23.7 mg."""
    f = facts(egfr=(egfr(25, 5),))
    assert "15.8 mg twice daily" in finding(f, knowledge, "egfr-baseline-low").detail
    assert "start at 15.8" in finding(f, knowledge, "dose-check").detail


@pytest.mark.parametrize(
    ("days_ago", "fires"), [(29, False), (30, False), (31, True)], ids=["29d", "30d", "31d"]
)
def test_egfr_baseline_missing_window(knowledge, days_ago, fires):
    """An eGFR older than 30 days is no baseline."""
    result = fired(facts(egfr=(egfr(88, days_ago),)), knowledge)
    assert ("egfr-baseline-missing" in result) is fires


def test_computed_egfr_counts_as_baseline(knowledge):
    """A CKD-EPI eGFR computed from creatinine is a baseline (and the card says computed)."""
    f = facts(egfr=(egfr(40, 3, computed=True),))
    low = finding(f, knowledge, "egfr-baseline-low")
    assert "computed" in low.detail
    assert "egfr-baseline-missing" not in fired(f, knowledge)


def test_egfr_missing_is_not_claimed_when_labs_unavailable(knowledge):
    """A failed lab fetch gives a data-unavailable card, never 'no eGFR on file'."""
    f = facts(
        egfr=(),
        unavailable=frozenset({DataCategory.EGFR}),
        unavailable_reasons=((DataCategory.EGFR, "FHIR server error (HTTP 500)"),),
    )
    result = fired(f, knowledge)
    assert "egfr-baseline-missing" not in result
    card = finding(f, knowledge, DATA_UNAVAILABLE)
    assert "egfr-baseline-missing" in card.summary
    assert "HTTP 500" in card.detail


def renewal(baseline: float, current: float):
    """On voclosporin for 100 days, baseline before start, current on treatment."""
    return facts(
        medications=(mmf(), voclosporin(draft=False, authored_days_ago=100)),
        draft_orders=(voclosporin(),),
        egfr=(egfr(baseline, 105), egfr(current, 3)),
    )


@pytest.mark.parametrize(
    ("baseline", "current", "expected"),
    [
        (70, 56.0, None),  # exactly 20%: no change
        (72, 57.6, None),  # exactly 20% with float arithmetic
        (70, 55.9, "warning"),  # 20.1%
        (70, 49.1, "warning"),  # 29.9%
        (70, 49.0, "critical"),  # exactly 30%: discontinue
        (100, 59.9, "critical"),
        (100, 60.0, None),  # eGFR >= 60 is never a decline finding, whatever the drop
        (72, 54.0, "warning"),  # the ln-renewal-egfr-25pct chart
        (80, 52.0, "critical"),  # the ln-renewal-egfr-35pct chart
    ],
    ids=["20.0%", "20.0%-float", "20.1%", "29.9%", "30.0%", "40.1%", "60-not-below", "25%", "35%"],
)
def test_egfr_decline_boundaries(knowledge, baseline, current, expected):
    """PI 2.2 Table 1: > 20% and < 30% reduce (warning), >= 30% discontinue (critical)."""
    assert fired(renewal(baseline, current), knowledge).get("egfr-decline") == expected


def test_egfr_decline_reduce_suggests_full_resource_update(knowledge):
    """The reduce card proposes the draft order minus 7.9 mg per dose as a full resource."""
    card = finding(renewal(72, 54), knowledge, "egfr-decline")
    action = card.suggestions[0].actions[0]
    assert isinstance(action, ReplaceDosage)
    assert action.doses == ((15.8, None), (15.8, None))


def test_egfr_decline_discontinue_suggests_removing_draft(knowledge):
    """The discontinue card proposes deleting the draft voclosporin order."""
    card = finding(renewal(80, 52), knowledge, "egfr-decline")
    assert isinstance(card.suggestions[0].actions[0], RemoveOrder)


def test_egfr_decline_without_baseline_is_a_monitoring_gap(knowledge):
    """No eGFR before the course start: an info monitoring note, not a data-access warning."""
    f = replace(renewal(72, 54), egfr=(egfr(54, 3),))
    result = fired(f, knowledge)
    assert "egfr-decline" not in result
    assert DATA_UNAVAILABLE not in result
    assert result[MONITORING_GAPS] == "info"
    assert (
        "no usable eGFR on or before the course start"
        in finding(f, knowledge, MONITORING_GAPS).detail
    )


def test_unknown_course_start_is_could_not_check(knowledge):
    """Voclosporin orders without authoredOn: course unknown, on the data-unavailable card."""
    undated = replace(voclosporin(draft=False), authored_on=None)
    f = replace(renewal(72, 54), medications=(undated, mmf()))
    card = finding(f, knowledge, DATA_UNAVAILABLE)
    assert card.indicator == "warning"
    assert "egfr-decline: start of the voclosporin course unknown" in card.detail
    assert MONITORING_GAPS not in fired(f, knowledge)


def test_decline_percent_rounds_binary_noise():
    """72 -> 57.6 is exactly 20%, not 19.999999999999996%."""
    assert decline_percent(72, 57.6) == 20.0


# -- blood pressure and potassium --------------------------------------------------------------


@pytest.mark.parametrize(
    ("systolic", "diastolic", "fires"),
    [(165, 105, False), (165.1, 100, True), (150, 105.1, True), (170, 95, True)],
    ids=["165/105-passes", "165.1-systolic", "105.1-diastolic", "170/95"],
)
def test_blood_pressure_high_boundary(knowledge, systolic, diastolic, fires):
    """Do not initiate with BP > 165/105; exactly 165/105 passes (PI 2.2)."""
    result = fired(facts(blood_pressures=(bp(systolic, diastolic),)), knowledge)
    assert (result.get("blood-pressure-high") == "critical") is fires


def test_blood_pressure_missing_when_only_old_reading(knowledge):
    """A 40-day-old reading is no pre-initiation BP: warn, and do not judge the old value."""
    result = fired(facts(blood_pressures=(bp(190, 110, days_ago=40),)), knowledge)
    assert result.get("blood-pressure-missing") == "warning"
    assert "blood-pressure-high" not in result


def test_blood_pressure_rules_only_at_initiation(knowledge):
    """Renewal does not re-run the initiation BP gate."""
    f = replace(renewal(80, 79), blood_pressures=())
    assert "blood-pressure-missing" not in fired(f, knowledge)


@pytest.mark.parametrize(
    ("value", "high", "fires"),
    [(5.1, 5.1, False), (5.2, 5.1, True), (5.0, None, False), (5.01, None, True)],
    ids=["5.1-at-range", "5.2-above-range", "5.0-at-default", "5.01-above-default"],
)
def test_hyperkalemia_uses_reference_range_then_default(knowledge, value, high, fires):
    """Above the lab's reference high, else above the 5.0 mmol/L local default."""
    result = fired(facts(potassium=(potassium(value, high=high),)), knowledge)
    assert ("hyperkalemia" in result) is fires


def test_no_recent_potassium_is_a_monitoring_gap(knowledge):
    """No potassium in 30 days: one info monitoring note, no data-unavailable warning."""
    f = facts(potassium=(potassium(6.0, days_ago=45),))
    result = fired(f, knowledge)
    assert "hyperkalemia" not in result
    assert DATA_UNAVAILABLE not in result
    card = finding(f, knowledge, MONITORING_GAPS)
    assert card.indicator == "info"
    assert "potassium" in card.summary
    assert "hyperkalemia: no potassium result in the last 30 days" in card.detail


# -- interactions, both directions -------------------------------------------------------------


def test_strong_inhibitor_active_when_ordering_voclosporin(knowledge):
    """Ordering voclosporin for a patient on ketoconazole: contraindicated, remove the draft."""
    f = facts(medications=(mmf(), med("ketoconazole 200 MG", "strong-cyp3a4-inhibitor")))
    card = finding(f, knowledge, "strong-cyp3a4-inhibitor")
    assert card.indicator == "critical"
    assert card.suggestions[0].actions[0].order.is_voclosporin


def test_strong_inhibitor_ordered_for_patient_on_voclosporin(knowledge):
    """Ordering ketoconazole for a patient on voclosporin fires; the suggestion removes it."""
    keto = med("ketoconazole 200 MG", "strong-cyp3a4-inhibitor", draft=True)
    f = facts(
        medications=(mmf(), voclosporin(draft=False, authored_days_ago=30)), draft_orders=(keto,)
    )
    card = finding(f, knowledge, "strong-cyp3a4-inhibitor")
    assert card.suggestions[0].actions[0].order == keto
    # Initiation-only rules stay quiet when voclosporin itself is not being ordered.
    assert set(fired(f, knowledge)) == {"strong-cyp3a4-inhibitor"}


def test_order_select_ignores_unselected_partner(knowledge):
    """order-select: a voclosporin draft not selected now meets only the selected orders."""
    keto = med("ketoconazole 200 MG", "strong-cyp3a4-inhibitor", draft=True, selected=True)
    f = facts(order_entry_complete=False, draft_orders=(voclosporin(selected=False), keto))
    assert "strong-cyp3a4-inhibitor" in fired(f, knowledge)
    lisinopril = med("lisinopril 10 MG", draft=True, selected=True)
    f2 = facts(order_entry_complete=False, draft_orders=(voclosporin(selected=False), lisinopril))
    assert fired(f2, knowledge) == {}


def test_moderate_inhibitor_suggests_15_8_am_7_9_pm(knowledge):
    """Moderate CYP3A4 inhibitor: update the draft to 15.8 mg AM + 7.9 mg PM."""
    f = facts(medications=(mmf(), med("diltiazem 120 MG", "moderate-cyp3a4-inhibitor")))
    card = finding(f, knowledge, "moderate-cyp3a4-inhibitor")
    assert card.indicator == "warning"
    action = card.suggestions[0].actions[0]
    assert action.doses == ((15.8, "MORN"), (7.9, "EVE"))


def test_moderate_inhibitor_with_dose_already_reduced_is_info(knowledge):
    """A draft already at 15.8 AM + 7.9 PM gets an info card and no suggestion."""
    reduced = Dosage((DoseAmount(15.8, "MORN"), DoseAmount(7.9, "EVE")), 2.0, "")
    f = facts(
        draft_orders=(voclosporin(dosage=reduced),),
        medications=(mmf(), med("verapamil 80 MG", "moderate-cyp3a4-inhibitor")),
    )
    card = finding(f, knowledge, "moderate-cyp3a4-inhibitor")
    assert (card.indicator, card.suggestions) == ("info", ())


@pytest.mark.parametrize(
    ("role", "rule_id", "indicator"),
    [
        ("strong-cyp3a4-inducer", "cyp3a4-inducer", "warning"),
        ("moderate-cyp3a4-inducer", "cyp3a4-inducer", "warning"),
        ("cyclophosphamide", "cyclophosphamide", "warning"),
        ("calcineurin-inhibitor", "calcineurin-inhibitor-duplicate", "warning"),
        ("p-gp-substrate", "p-gp-substrate", "info"),
    ],
)
def test_interaction_rules_fire_both_ways(knowledge, role, rule_id, indicator):
    """Each interaction fires when voclosporin is ordered and when the partner is ordered."""
    partner_active = facts(medications=(mmf(), med("partner drug", role)))
    assert fired(partner_active, knowledge).get(rule_id) == indicator
    partner_drafted = facts(
        medications=(mmf(), voclosporin(draft=False, authored_days_ago=9)),
        draft_orders=(med("partner drug", role, draft=True),),
    )
    assert fired(partner_drafted, knowledge).get(rule_id) == indicator


def test_moderate_inducer_card_says_label_wording_unverified(knowledge):
    """Moderate inducers are flagged conservatively and the card says why."""
    f = facts(medications=(mmf(), med("modafinil 100 MG", "moderate-cyp3a4-inducer")))
    assert "not verified" in finding(f, knowledge, "cyp3a4-inducer").detail


@pytest.mark.parametrize(
    ("days_ago", "fires"), [(27, True), (28, True), (29, False)], ids=["27d", "28d", "29d"]
)
def test_live_vaccine_given_before_initiation(knowledge, days_ago, fires):
    """A live vaccine in the 28 days before starting warns (IDSA: >= 4 weeks before)."""
    f = facts(immunizations=(live_vaccine_given(days_ago),))
    assert ("live-vaccine" in fired(f, knowledge)) is fires


def test_live_vaccine_ordered_for_patient_on_voclosporin(knowledge):
    """Ordering a live vaccine while on voclosporin warns and offers to remove the order."""
    vaccine = med("MMR vaccine", "live-vaccine", draft=True)
    f = facts(
        medications=(mmf(), voclosporin(draft=False, authored_days_ago=50)), draft_orders=(vaccine,)
    )
    card = finding(f, knowledge, "live-vaccine")
    assert card.suggestions[0].actions[0].order == vaccine


def test_hypersensitivity_is_critical(knowledge):
    """A recorded allergy to voclosporin contraindicates ordering it."""
    result = fired(facts(allergies=(allergy_to_voclosporin(),)), knowledge)
    assert result["hypersensitivity"] == "critical"


# -- regimen ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("birth_year", "fires"), [(2009, True), (2008, False)], ids=["17y", "18y"])
def test_pediatric_boundary(knowledge, birth_year, fires):
    """Under 18 warns (PI 8.4); 18 does not."""
    from datetime import date

    f = facts(birth_date=date(birth_year, 5, 1))
    assert ("pediatric" in fired(f, knowledge)) is fires


def test_unknown_age_is_reported(knowledge):
    """No birth date: the pediatric check says it could not run."""
    f = facts(birth_date=None)
    assert "patient birth date unknown" in finding(f, knowledge, DATA_UNAVAILABLE).detail


def test_background_therapy_missing(knowledge):
    """No mycophenolate active or drafted: info card."""
    assert fired(facts(medications=()), knowledge).get("background-therapy-missing") == "info"


@pytest.mark.parametrize(
    ("dosage", "problem"),
    [
        (bid(23.7), None),
        (bid(15.8), None),
        (bid(31.6), "exceeds the maximum"),
        (bid(20.0), "not a whole number"),
        (Dosage((DoseAmount(23.7),) * 3, 3.0, ""), "3 doses a day"),
        (Dosage((DoseAmount(23.7),), None, ""), "frequency not stated"),
    ],
    ids=["23.7-bid", "15.8-bid", "31.6-bid", "20-bid", "tid", "no-frequency"],
)
def test_dose_check(knowledge, dosage, problem):
    """Whole 7.9 mg capsules, twice daily, at most 23.7 mg per dose."""
    f = facts(draft_orders=(voclosporin(dosage=dosage),))
    if problem is None:
        assert "dose-check" not in fired(f, knowledge)
    else:
        assert problem in finding(f, knowledge, "dose-check").detail


def test_dose_check_missing_dose_only_at_sign(knowledge):
    """order-select may come before the dose; order-sign without one is flagged."""
    no_dose = Dosage((), None, "")
    assert "dose-check" not in fired(
        facts(order_entry_complete=False, draft_orders=(voclosporin(dosage=no_dose),)), knowledge
    )
    assert "dose-check" in fired(facts(draft_orders=(voclosporin(dosage=no_dose),)), knowledge)


@pytest.mark.parametrize(
    ("days", "expected"),
    [(168, None), (169, "reassess benefit"), (365, "reassess benefit"), (366, "beyond one year")],
    ids=["24w", "24w+1d", "365d", "366d"],
)
def test_treatment_duration(knowledge, days, expected):
    """Renewal past 24 weeks: reassess; past a year: safety not established."""
    f = facts(
        medications=(mmf(), voclosporin(draft=False, authored_days_ago=days)),
        egfr=(egfr(90, days + 3), egfr(88, 5)),
    )
    result = [x for x in evaluate(f, knowledge).findings if x.rule_id == "treatment-duration"]
    if expected is None:
        assert result == []
    else:
        assert expected in result[0].summary


def test_prior_authorization_counts_criteria(knowledge):
    """Each payer criterion is met / not met / unknown (attestations, unstated supply)."""
    card = finding(facts(), knowledge, "prior-authorization")
    assert "7 of 10 criteria met, 0 not met, 3 to confirm" in card.summary
    teen = finding(
        facts(birth_date=NOW.date().replace(year=2012), medications=()),
        knowledge,
        "prior-authorization",
    )
    assert "| Age 18 or older | **not met**" in teen.detail
    assert "| Background immunosuppression (e.g. MMF, corticosteroids) | **not met**" in teen.detail


# -- engine -----------------------------------------------------------------------------------


def test_engine_orders_cards_most_severe_first(knowledge):
    """critical before warning before info."""
    f = facts(blood_pressures=(bp(170, 90),), egfr=(egfr(40, 3),))
    indicators = [x.indicator for x in evaluate(f, knowledge).findings]
    assert indicators == sorted(indicators, key=["critical", "warning", "info"].index)


def test_engine_stamps_rule_id_and_citation(knowledge):
    """Every finding carries its rule id and the label section from the data."""
    card = finding(facts(egfr=(egfr(40, 3),)), knowledge, "egfr-baseline-low")
    assert card.citation == knowledge.rules["egfr-baseline-low"].section


def test_stamping_keeps_every_other_field_of_a_finding():
    """``Finding.stamped`` is ``replace`` of rule id and citation: no field is lost on the way."""
    original = Finding(
        "warning",
        "summary",
        "detail",
        (Suggestion("label", (RemoveOrder(voclosporin()),), is_recommended=True),),
        rule_id="from-the-rule",
        citation="old",
        subject="subject",
        quieted=True,
    )
    # A new Finding field must be added to ``stamped`` (and here) or this test fails.
    assert [f.name for f in fields(Finding)] == [
        "indicator", "summary", "detail", "suggestions", "rule_id", "citation", "subject",
        "quieted",
    ]  # fmt: skip
    stamped = original.stamped("egfr-decline", "PI 2.2")
    assert stamped == replace(original, rule_id="egfr-decline", citation="PI 2.2")


def test_rule_yielding_something_else_becomes_could_not_check(knowledge, monkeypatch):
    """A rule that yields what is not a RuleResult is a broken rule, said on the card."""

    def confused(f, k):
        yield "a string"

    import cds_service.rules.engine as engine

    monkeypatch.setattr(engine, "REGISTRY", (RuleSpec("hyperkalemia", confused),))
    result = evaluate(facts(), knowledge)
    card = next(x for x in result.findings if x.rule_id == DATA_UNAVAILABLE)
    assert "hyperkalemia: internal error" in card.detail
    assert [x.rule_id for x in result.findings] == [DATA_UNAVAILABLE]


def test_rule_that_raises_becomes_could_not_check(knowledge, monkeypatch):
    """A broken rule is reported on the data-unavailable card, never silent."""

    def broken(f, k):
        raise ZeroDivisionError("boom")
        yield  # pragma: no cover

    import cds_service.rules.engine as engine

    monkeypatch.setattr(engine, "REGISTRY", (RuleSpec("hyperkalemia", broken),))
    result = evaluate(facts(), knowledge)
    card = next(x for x in result.findings if x.rule_id == DATA_UNAVAILABLE)
    assert "hyperkalemia: internal error" in card.detail


def test_interacting_order_with_unreadable_med_list_is_reported(knowledge):
    """Ketoconazole ordered, med list unavailable: unknown whether on voclosporin, said so."""
    f = facts(
        draft_orders=(med("ketoconazole 200 MG", "strong-cyp3a4-inhibitor", draft=True),),
        medications=(),
        unavailable=frozenset({DataCategory.MEDICATIONS}),
    )
    result = evaluate(f, knowledge)
    assert [x.rule_id for x in result.findings] == [DATA_UNAVAILABLE]
    assert "unknown whether the patient takes voclosporin" in result.findings[0].detail


def test_every_registered_rule_has_a_citation(knowledge):
    """Rule ids, citations in rules.toml and the registry stay in step."""
    assert {spec.rule_id for spec in REGISTRY} | {MONITORING_GAPS, DATA_UNAVAILABLE} == set(
        knowledge.rules
    )


def test_not_checked_carries_rule_id(knowledge):
    """NotChecked outcomes are stamped with the rule that produced them."""
    result = evaluate(facts(birth_date=None), knowledge)
    assert NotChecked("patient birth date unknown", "pediatric") in result.not_checked


def test_monitoring_gap_carries_rule_id(knowledge):
    """MonitoringGap outcomes are stamped with the rule that produced them."""
    result = evaluate(facts(potassium=()), knowledge)
    assert (
        MonitoringGap("potassium", "no potassium result in the last 30 days", "hyperkalemia")
        in result.monitoring_gaps
    )
    assert result.not_checked == ()


def test_cyclosporine_gets_the_duplicate_card_not_a_dose_change(knowledge):
    """Cyclosporine is a CNI first: no 'reduce voclosporin' suggestion that invites co-use."""
    f = facts(
        medications=(
            mmf(),
            med("cyclosporine 100 MG", "moderate-cyp3a4-inhibitor", "calcineurin-inhibitor"),
        )
    )
    result = fired(f, knowledge)
    assert result["calcineurin-inhibitor-duplicate"] == "warning"
    assert "moderate-cyp3a4-inhibitor" not in result


def test_unidentified_draft_is_said_out_loud(knowledge):
    """A selected draft whose drug cannot be told: data-unavailable, not an empty answer."""
    unknown = replace(med("(unidentified medication)", draft=True), identified=False)
    result = evaluate(facts(draft_orders=(unknown,), medications=()), knowledge)
    assert [x.rule_id for x in result.findings] == [DATA_UNAVAILABLE]
    assert "could not be identified" in result.findings[0].detail


def test_stale_on_treatment_egfr_is_reported_and_still_judged(knowledge):
    """Renewal with a 60-day-old eGFR: a monitoring note (not current); a 35% fall still fires."""
    f = replace(renewal(80, 52), egfr=(egfr(80, 105), egfr(52, 60)))
    result = evaluate(f, knowledge)
    indicators = {x.rule_id: x.indicator for x in result.findings}
    assert indicators["egfr-decline"] == "critical"
    assert DATA_UNAVAILABLE not in indicators
    card = next(x for x in result.findings if x.rule_id == MONITORING_GAPS)
    assert "older than 28 days" in card.detail


def test_same_day_baseline_counts(knowledge):
    """An eGFR drawn the day the course starts is its baseline (compared by calendar day)."""
    start = voclosporin(draft=False, authored_days_ago=100)
    f = facts(
        medications=(mmf(), replace(start, authored_on=start.authored_on.replace(hour=0))),
        egfr=(replace(egfr(80, 100), when=start.authored_on.replace(hour=9)), egfr(52, 3)),
    )
    assert fired(f, knowledge)["egfr-decline"] == "critical"


@pytest.mark.parametrize(
    ("category", "criterion"),
    [
        (DataCategory.CONDITIONS, "Diagnosis of lupus nephritis"),
        (DataCategory.IMMUNIZATIONS, "Not given with live vaccines"),
    ],
)
def test_prior_authorization_unknown_when_data_unavailable(knowledge, category, criterion):
    """A payer criterion whose data could not be read is 'unknown', never met / not met."""
    f = facts(conditions=(), unavailable=frozenset({category}))
    card = finding(f, knowledge, "prior-authorization")
    assert f"| {criterion} | **unknown**" in card.detail


def test_prior_prescription_makes_a_renewal_and_old_orders_set_the_course_start(knowledge):
    """A draft naming its priorPrescription is a renewal; a completed order starts the course."""
    old = voclosporin(draft=False, status="completed", authored_days_ago=200)
    current = voclosporin(draft=False, authored_days_ago=60, ref="MedicationRequest/v-now")
    f = facts(medications=(mmf(), old, current), egfr=(egfr(90, 205), egfr(80, 65), egfr(52, 3)))
    # Baseline is the eGFR before the first order (90), not before the current one (80).
    assert fired(f, knowledge)["egfr-decline"] == "critical"
    renewal_only = replace(voclosporin(), renews_prior=True)
    assert facts(draft_orders=(renewal_only,)).is_renewal
