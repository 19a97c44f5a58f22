"""Co-medication (PI 5.3, 5.6), on-treatment checks (K 1.21, PI 5.4, 5.9) and allergy severity
(PI 4, 5.8), over PatientFacts (no HTTP, no FHIR)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cds_service import close_app
from cds_service.rules.engine import DATA_UNAVAILABLE, MONITORING_GAPS, evaluate
from cds_service.rules.model import Finding, RemoveOrder
from fhir_mappings.facts import Allergy, PatientFacts
from fhir_mappings.knowledge import Knowledge, KnowledgeError, load_knowledge
from fhir_mappings.vocabulary import DataCategory
from tests.conftest import make_app
from tests.support.clinical import (
    bp,
    egfr,
    facts,
    live_vaccine_given,
    med,
    mmf,
    potassium,
    voclosporin,
)
from tests.test_mappings import facts_from


def fired(f: PatientFacts, knowledge: Knowledge) -> dict[str, str]:
    """rule id -> indicator of the cards the engine would produce."""
    return {x.rule_id: x.indicator for x in evaluate(f, knowledge).findings}


def finding(f: PatientFacts, knowledge: Knowledge, rule_id: str) -> Finding:
    return next(x for x in evaluate(f, knowledge).findings if x.rule_id == rule_id)


def on_voclosporin(*drafts, **overrides) -> PatientFacts:
    """A woman on voclosporin for 60 days (MMF too) for whom ``drafts`` are being ordered."""
    return facts(
        medications=(mmf(), voclosporin(draft=False, authored_days_ago=60)),
        draft_orders=drafts,
        **overrides,
    )


def renewal(**overrides) -> PatientFacts:
    """Renewing voclosporin after 60 days on it; baseline and current eGFR unremarkable."""
    return facts(
        medications=(mmf(), voclosporin(draft=False, authored_days_ago=60)),
        egfr=(egfr(90, 65), egfr(88, 5)),
        **overrides,
    )


IBUPROFEN = med("ibuprofen 400 MG Oral Tablet", "nephrotoxic", draft=True)
TRIMETHOPRIM = med("trimethoprim 100 MG Oral Tablet", "hyperkalemia-risk", draft=True)
LISINOPRIL = med("lisinopril 10 MG Oral Tablet", "ace-inhibitor-or-arb", draft=True)


# -- nephrotoxic co-medication (PI 5.3) --------------------------------------------------------


def test_nephrotoxic_drug_ordered_for_patient_on_voclosporin_warns(knowledge):
    """Ibuprofen ordered for a patient on voclosporin: monitor eGFR, offer to drop ibuprofen."""
    card = finding(on_voclosporin(IBUPROFEN), knowledge, "nephrotoxic-comedication")
    assert card.indicator == "warning"
    assert "ibuprofen" in card.summary
    assert "eGFR" in card.summary
    assert [a.order for s in card.suggestions for a in s.actions] == [IBUPROFEN]


def test_nephrotoxic_drug_active_when_ordering_voclosporin(knowledge):
    """An active nephrotoxic order meets a new voclosporin order; voclosporin is not removed."""
    active = med("gentamicin 80 MG Injection", "nephrotoxic")
    card = finding(facts(medications=(mmf(), active)), knowledge, "nephrotoxic-comedication")
    assert card.indicator == "warning"
    assert card.suggestions == ()


def test_nephrotoxic_drug_without_voclosporin_is_silent(knowledge):
    """No voclosporin anywhere: ibuprofen alone gets no card."""
    assert evaluate(facts(draft_orders=(IBUPROFEN,)), knowledge).findings == ()


# -- hyperkalemia co-medication (PI 5.6) -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "indicator"),
    [(5.1, "warning"), (4.9, "warning"), (4.89, "info"), (5.3, "warning"), (4.2, "info")],
    ids=["at-limit-5.1", "0.2-below", "0.21-below", "above", "normal"],
)
def test_hyperkalemia_drug_boundary(knowledge, value, indicator):
    """Trimethoprim: warning at the lab's limit or within 0.2 mmol/L below it, else info."""
    f = on_voclosporin(TRIMETHOPRIM, potassium=(potassium(value, high=5.1),))
    assert fired(f, knowledge)["hyperkalemia-comedication"] == indicator


@pytest.mark.parametrize(
    ("value", "indicator"),
    [(5.0, "warning"), (4.8, "warning"), (4.79, "info")],
    ids=["at-default-5.0", "0.2-below-default", "0.21-below-default"],
)
def test_hyperkalemia_drug_uses_the_default_limit_without_a_range(knowledge, value, indicator):
    """No reference range: the local default 5.0 mmol/L is the limit (binary noise ignored)."""
    f = on_voclosporin(TRIMETHOPRIM, potassium=(potassium(value),))
    card = finding(f, knowledge, "hyperkalemia-comedication")
    assert card.indicator == indicator
    assert "local default" in card.detail


def test_hyperkalemia_drug_without_potassium_is_an_info_monitoring_note(knowledge):
    """No potassium in 30 days: the info card says so; no data-unavailable warning."""
    f = on_voclosporin(TRIMETHOPRIM, potassium=(potassium(5.4, days_ago=45),))
    result = fired(f, knowledge)
    assert result["hyperkalemia-comedication"] == "info"
    assert DATA_UNAVAILABLE not in result
    assert (
        "No potassium result in the last 30 days"
        in finding(f, knowledge, "hyperkalemia-comedication").detail
    )


def test_hyperkalemia_drug_with_potassium_unavailable_says_could_not_obtain(knowledge):
    """Potassium could not be fetched: info card saying so, and the data-unavailable warning."""
    f = on_voclosporin(TRIMETHOPRIM, potassium=(), unavailable=frozenset({DataCategory.POTASSIUM}))
    result = fired(f, knowledge)
    assert result["hyperkalemia-comedication"] == "info"
    assert result[DATA_UNAVAILABLE] == "warning"
    assert "could not be obtained" in finding(f, knowledge, "hyperkalemia-comedication").detail


@pytest.mark.parametrize(
    ("value", "fires"),
    [(5.1, True), (5.2, True), (4.9, False), (4.2, False)],
    ids=["at-limit", "above", "0.2-below", "normal"],
)
def test_ace_inhibitor_only_at_or_above_the_limit(knowledge, value, fires):
    """Lisinopril (standard LN care): a warning only when potassium is at or above the limit."""
    f = on_voclosporin(LISINOPRIL, potassium=(potassium(value, high=5.1),))
    result = fired(f, knowledge)
    assert (result.get("hyperkalemia-comedication") == "warning") is fires
    if not fires:
        assert result == {}


def test_ace_inhibitor_without_potassium_is_a_monitoring_gap(knowledge):
    """Lisinopril with no recent potassium: a monitoring note, not a card of its own."""
    f = on_voclosporin(LISINOPRIL, potassium=())
    result = fired(f, knowledge)
    assert "hyperkalemia-comedication" not in result
    assert DATA_UNAVAILABLE not in result
    card = finding(f, knowledge, MONITORING_GAPS)
    assert "hyperkalemia-comedication" in card.detail


def test_ace_inhibitor_beside_a_hyperkalemia_drug_is_named_but_not_flagged(knowledge):
    """Trimethoprim and lisinopril at normal potassium: info about trimethoprim only."""
    f = on_voclosporin(TRIMETHOPRIM, LISINOPRIL)
    card = finding(f, knowledge, "hyperkalemia-comedication")
    assert card.indicator == "info"
    assert "trimethoprim" in card.summary
    assert "lisinopril" not in card.summary
    assert "only at or above" in card.detail


def test_near_limit_is_local_policy(knowledge):
    """CDS_POTASSIUM_NEAR_LIMIT=0 warns only at or above the limit."""
    strict = knowledge.with_local_policy(potassium_near_limit=0)
    f = on_voclosporin(TRIMETHOPRIM, potassium=(potassium(5.0, high=5.1),))
    assert fired(f, knowledge)["hyperkalemia-comedication"] == "warning"
    assert fired(f, strict)["hyperkalemia-comedication"] == "info"
    with pytest.raises(KnowledgeError, match="zero or more"):
        knowledge.with_local_policy(potassium_near_limit=-0.1)


# -- on treatment: blood pressure (K 1.21, PI 5.4) ---------------------------------------------


@pytest.mark.parametrize(
    ("systolic", "diastolic", "fires"),
    [(165, 105, False), (166, 105, True), (165, 106, True), (178, 112, True)],
    ids=["165/105-passes", "166/105", "165/106", "178/112"],
)
def test_on_treatment_blood_pressure_boundary(knowledge, systolic, diastolic, fires):
    """Renewal with BP > 165/105 on the latest reading: critical, discontinue; 165/105 passes."""
    result = fired(renewal(blood_pressures=(bp(systolic, diastolic),)), knowledge)
    assert (result.get("blood-pressure-high-on-treatment") == "critical") is fires
    assert "blood-pressure-high" not in result


def test_on_treatment_blood_pressure_when_another_drug_is_ordered(knowledge):
    """A patient on voclosporin with BP 178/112 gets the card when any drug is ordered."""
    amoxicillin = med("amoxicillin 500 MG Oral Capsule", draft=True)
    f = on_voclosporin(amoxicillin, blood_pressures=(bp(178, 112),))
    card = finding(f, knowledge, "blood-pressure-high-on-treatment")
    assert card.indicator == "critical"
    assert "discontinue" in card.summary
    assert card.suggestions == ()


def test_on_treatment_blood_pressure_reads_the_latest_reading(knowledge):
    """An older high reading followed by a normal one: no card."""
    readings = (bp(178, 112, days_ago=10), bp(130, 80, days_ago=2))
    assert "blood-pressure-high-on-treatment" not in fired(
        renewal(blood_pressures=readings), knowledge
    )


def test_on_treatment_blood_pressure_suggests_cancelling_the_renewal(knowledge):
    """At renewal the card offers to cancel the drafted voclosporin."""
    card = finding(
        renewal(blood_pressures=(bp(178, 112),)), knowledge, "blood-pressure-high-on-treatment"
    )
    assert isinstance(card.suggestions[0].actions[0], RemoveOrder)


def test_on_treatment_blood_pressure_not_at_initiation(knowledge):
    """Initiation keeps its own gate (blood-pressure-high), not the on-treatment card."""
    result = fired(facts(blood_pressures=(bp(178, 112),)), knowledge)
    assert result["blood-pressure-high"] == "critical"
    assert "blood-pressure-high-on-treatment" not in result


# -- on treatment: live vaccine given during the course (PI 5.9) -------------------------------


@pytest.mark.parametrize(
    ("days_ago", "fires"), [(30, True), (60, True), (61, False)], ids=["30d", "start-day", "before"]
)
def test_live_vaccine_given_during_the_course(knowledge, days_ago, fires):
    """Renewal after a live vaccine given on or after the course start (60 days ago): warning."""
    f = renewal(immunizations=(live_vaccine_given(days_ago),))
    result = fired(f, knowledge)
    assert (result.get("live-vaccine") == "warning") is fires
    if fires:
        assert "vaccine-strain" in finding(f, knowledge, "live-vaccine").summary


def test_live_vaccine_during_the_course_when_another_drug_is_ordered(knowledge):
    """A patient on voclosporin who had MMR 20 days ago: warning on any new order."""
    amoxicillin = med("amoxicillin 500 MG Oral Capsule", draft=True)
    f = on_voclosporin(amoxicillin, immunizations=(live_vaccine_given(20),))
    assert fired(f, knowledge)["live-vaccine"] == "warning"


def test_live_vaccine_with_unknown_course_start_is_could_not_check(knowledge):
    """Course start unknown and a live vaccine on record: said out loud, not read as none."""
    f = facts(
        medications=(mmf(), voclosporin(draft=False)),
        immunizations=(live_vaccine_given(20),),
    )
    result = evaluate(f, knowledge)
    assert any(
        g.rule_id == "live-vaccine" and "course is unknown" in g.reason for g in result.not_checked
    )


# -- allergy severity (PI 4, 5.8) --------------------------------------------------------------


def allergy(
    kind: str | None,
    criticality: str | None,
    severities: tuple[str, ...] = (),
    reactions: tuple[str, ...] = (),
) -> Allergy:
    return Allergy(
        "AllergyIntolerance/a1",
        "voclosporin",
        True,
        criticality,
        severities,
        "confirmed",
        "active",
        kind=kind,
        reactions=reactions,
    )


@pytest.mark.parametrize(
    ("record", "indicator"),
    [
        (allergy("allergy", "high", ("severe",), ("Anaphylaxis",)), "critical"),
        (allergy("allergy", "low", ("mild",), ("Rash",)), "critical"),
        (allergy("intolerance", "high"), "critical"),
        (allergy("intolerance", "low", ("severe",)), "critical"),
        (allergy("intolerance", "low", (), ("Nausea",)), "warning"),
        (allergy("intolerance", "low", ("moderate",), ("Nausea",)), "warning"),
        (allergy(None, None, ("mild",), ("Itching",)), "warning"),
        (allergy(None, None), "critical"),
        (allergy("intolerance", None), "critical"),
        (allergy("intolerance", "unable-to-assess"), "critical"),
        (allergy(None, "low"), "critical"),
        (allergy(None, None, ("moderate",)), "critical"),
    ],
    ids=[
        "severe-allergy",
        "allergy-type",
        "high-criticality",
        "severe-reaction",
        "low-intolerance",
        "low-intolerance-moderate",
        "mild-reaction",
        "nothing-stated",
        "intolerance-criticality-unknown",
        "unable-to-assess",
        "low-type-unknown",
        "moderate-type-unknown",
    ],
)
def test_hypersensitivity_severity(knowledge, record, indicator):
    """Critical for an allergy, high criticality, a severe reaction or unknown; else a warning."""
    assert fired(facts(allergies=(record,)), knowledge)["hypersensitivity"] == indicator


def test_mild_intolerance_warning_names_the_reaction(knowledge):
    """The warning names the recorded reaction and says it is not the contraindication."""
    record = allergy("intolerance", "low", ("mild",), ("Nausea",))
    card = finding(facts(allergies=(record,)), knowledge, "hypersensitivity")
    assert "Nausea" in card.summary
    assert card.indicator == "warning"
    assert "not the" in card.detail


def test_any_serious_record_makes_it_critical(knowledge):
    """A mild intolerance beside a severe allergy record: critical."""
    records = (
        allergy("intolerance", "low", ("mild",), ("Nausea",)),
        replace(allergy("allergy", "high", ("severe",)), reference="AllergyIntolerance/a2"),
    )
    assert fired(facts(allergies=records), knowledge)["hypersensitivity"] == "critical"


def test_near_limit_is_read_from_rules_toml():
    """The 0.2 mmol/L margin is data (rules.toml [potassium].near_limit_mmol_l)."""
    assert load_knowledge().potassium.near_limit_mmol_l == pytest.approx(0.2)


# -- mapping: the lists and the allergy record as EHRs send them -------------------------------


@pytest.mark.parametrize(
    ("text", "role"),
    [
        ("Ibuprofen 600 MG Oral Tablet", "nephrotoxic"),
        ("Gentamicin 80 MG/2ML Injection", "nephrotoxic"),
        ("Amphotericin B liposome 50 MG Injection", "nephrotoxic"),
        ("Piperacillin-tazobactam 4.5 G IV", "nephrotoxic"),
        ("diclofenac sodium 1% topical gel", "nephrotoxic"),
        ("Sulfamethoxazole 800 MG / Trimethoprim 160 MG Oral Tablet", "hyperkalemia-risk"),
        ("Spironolactone 25 MG Oral Tablet", "hyperkalemia-risk"),
        ("Potassium Chloride 20 MEQ ER Tablet", "hyperkalemia-risk"),
        ("Lisinopril 10 MG Oral Tablet", "ace-inhibitor-or-arb"),
        ("Losartan Potassium 50 MG Oral Tablet", "ace-inhibitor-or-arb"),
    ],
    ids=[
        "ibuprofen",
        "gentamicin",
        "amphotericin",
        "pip-tazo",
        "diclofenac-gel",
        "co-trimoxazole",
        "spironolactone",
        "kcl",
        "lisinopril",
        "losartan-potassium",
    ],
)
def test_comedication_lists_match_order_texts(terminology, text, role):
    """Order texts as prescribers write them carry the list's role (whole-word terms)."""
    assert role in terminology.match_medication([], [text]).roles


def test_ace_inhibitors_are_not_on_the_nephrotoxic_list(terminology):
    """Lisinopril and losartan (NINJA list) are read only as ACE inhibitor/ARB (team decision)."""
    for text in ("Lisinopril 10 MG Oral Tablet", "Losartan Potassium 50 MG Oral Tablet"):
        assert terminology.match_medication([], [text]).roles == {"ace-inhibitor-or-arb"}


def _allergy_resource(**extra):
    return {
        "resourceType": "AllergyIntolerance",
        "id": "a1",
        "patient": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"text": "voclosporin"},
        **extra,
    }


def test_allergy_type_and_reactions_are_read(terminology):
    """type, criticality, reaction manifestation and severity reach the facts."""
    resource = _allergy_resource(
        type="intolerance",
        criticality="low",
        reaction=[
            {
                "manifestation": [{"coding": [{"display": "Nausea"}], "text": "Nausea"}],
                "severity": "mild",
            },
            {"description": "stomach upset after the first dose"},
        ],
    )
    (record,) = facts_from(terminology, [resource]).allergies
    assert (record.kind, record.criticality, record.severities) == ("intolerance", "low", ("mild",))
    assert record.reactions == ("Nausea", "stomach upset after the first dose")


def test_allergy_without_type_is_unknown_not_intolerance(terminology):
    """No type and no criticality: both None (the rule treats that as serious)."""
    (record,) = facts_from(terminology, [_allergy_resource()]).allergies
    assert (record.kind, record.criticality, record.reactions) == (None, None, ())


def test_voclosporin_drafted_in_the_session_is_not_on_treatment(knowledge):
    """Selecting another drug beside an unselected voclosporin draft: no on-treatment BP card."""
    drafts = (
        voclosporin(selected=False),
        med("amoxicillin 500 MG Oral Capsule", draft=True),
    )
    f = facts(draft_orders=drafts, blood_pressures=(bp(178, 112),))
    assert "blood-pressure-high-on-treatment" not in fired(f, knowledge)


def test_near_limit_setting_reaches_the_service(tmp_path):
    """CDS_POTASSIUM_NEAR_LIMIT is applied at start-up (and a negative value stops it)."""
    app = make_app(tmp_path, CDS_POTASSIUM_NEAR_LIMIT=0.5)
    try:
        assert app.extensions["cds_service"].knowledge.potassium.near_limit_mmol_l == 0.5
    finally:
        close_app(app)
    with pytest.raises(KnowledgeError):
        make_app(tmp_path, CDS_POTASSIUM_NEAR_LIMIT=-1.0)


# -- route: nephrotoxicity and hyperkalemia are systemic effects --------------------------------


@pytest.mark.parametrize(
    ("name", "role", "rule_id"),
    [
        ("tobramycin 0.3% ophthalmic solution", "nephrotoxic", "nephrotoxic-comedication"),
        ("diclofenac sodium 1% topical gel", "nephrotoxic", "nephrotoxic-comedication"),
        (
            "trimethoprim / polymyxin B ophthalmic solution",
            "hyperkalemia-risk",
            "hyperkalemia-comedication",
        ),
    ],
    ids=["tobramycin-eye-drops", "diclofenac-gel", "trimethoprim-eye-drops"],
)
def test_non_systemic_products_do_not_fire_systemic_effect_rules(knowledge, name, role, rule_id):
    """An eye drop or a gel does not fire nephrotoxic or hyperkalemia co-medication cards."""
    local = med(name, role, draft=True, exposure="non-systemic")
    assert local.is_non_systemic
    assert rule_id not in fired(on_voclosporin(local), knowledge)
    systemic = med(name, role, draft=True, exposure="systemic")
    assert rule_id in fired(on_voclosporin(systemic), knowledge)


@pytest.mark.parametrize(
    ("comparator", "value", "warns"),
    [("<", 4.5, False), ("<", 5.5, True), (">", 5.0, True), (None, 5.0, False)],
    ids=["below-4.5-rules-it-out", "below-5.5-cannot-tell", "above-5.0", "exactly-5.0"],
)
def test_potassium_reported_as_a_bound(knowledge, comparator, value, warns):
    """A potassium bound that rules hyperkalemia out passes; one that cannot tell warns."""
    result = replace(potassium(value, high=5.0), comparator=comparator)
    assert ("hyperkalemia" in fired(facts(potassium=(result,)), knowledge)) is warns


def test_on_treatment_bp_fires_beside_an_unselected_voclosporin_draft(knowledge):
    """On voclosporin, ibuprofen selected, a voclosporin draft not selected, BP 180/110: the
    on-treatment BP card still fires (a draft beside a current order is no initiation)."""
    unselected = voclosporin(selected=False)
    f = on_voclosporin(IBUPROFEN, unselected, blood_pressures=(bp(180, 110),))
    assert fired(f, knowledge)["blood-pressure-high-on-treatment"] == "critical"


@pytest.mark.parametrize(
    ("comparator", "value", "partner", "expected"),
    [
        ("<", 5.0, LISINOPRIL, None),
        (">", 4.0, LISINOPRIL, "warning"),
        ("<", 4.8, TRIMETHOPRIM, "info"),
        ("<", 4.9, TRIMETHOPRIM, "warning"),
    ],
    ids=["lt-5.0-rules-out-limit", "gt-4.0-cannot-rule-out", "lt-4.8-rules-out-near", "lt-4.9"],
)
def test_comedication_reads_potassium_bounds(knowledge, comparator, value, partner, expected):
    """A potassium bound counts as at (or near) the 5.0 limit unless it rules that out."""
    result = replace(potassium(value, high=5.0), comparator=comparator)
    f = on_voclosporin(partner, potassium=(result,))
    assert fired(f, knowledge).get("hyperkalemia-comedication") == expected
