"""FHIR R4 JSON -> PatientFacts: real Synthea charts and the awkward shapes EHRs send."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from fhir_mappings.build import build_facts
from fhir_mappings.codes import Coding
from fhir_mappings.egfr import ckd_epi_2021
from fhir_mappings.facts import PatientFacts
from fhir_mappings.readers import parse_datetime
from fhir_mappings.vocabulary import DataCategory as D
from tests.support.hooks import chart_resources
from tests.support.paths import SYNTHEA_DIR as SYNTHEA

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def synthea(name: str) -> list[dict[str, Any]]:
    path = next(SYNTHEA.glob(f"{name}_*.json"))
    return chart_resources(json.loads(path.read_text()))


def facts_from(terminology, resources, drafts=(), patient=None, **kw) -> PatientFacts:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    chart = {
        D.MEDICATIONS: by_type.get("MedicationRequest", []) + by_type.get("Medication", []),
        D.EGFR: by_type.get("Observation", []),
        D.CONDITIONS: by_type.get("Condition", []),
        D.IMMUNIZATIONS: by_type.get("Immunization", []),
        D.ALLERGIES: by_type.get("AllergyIntolerance", []),
    }
    patient = patient or (by_type.get("Patient") or [None])[0]
    return build_facts(
        terminology=terminology,
        now=NOW,
        patient_id="p1",
        patient=patient,
        chart=chart,
        draft_orders=list(drafts),
        selections=None,
        unavailable=kw.get("unavailable", {}),
    )


PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1971-05-01"}


def observation(code: str, value: float, unit: str, when: str = "2026-10-25", **extra):
    return {
        "resourceType": "Observation",
        "id": f"o-{code}-{value}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit},
        **extra,
    }


# -- Synthea: real data nobody on the team wrote -------------------------------------------------


def test_synthea_mdrd_egfr_creatinine_potassium_and_bp_panel(terminology):
    """Synthea's LOINC variants map: eGFR 33914-3, creatinine 38483-4, K 6298-4, BP 55284-4."""
    f = facts_from(terminology, synthea("Neva_Hyatt"))
    assert {m.code for m in f.egfr if not m.computed} == {"33914-3"}
    assert {m.code for m in f.creatinine} == {"38483-4"}
    assert {m.code for m in f.potassium} == {"6298-4"}
    assert f.blood_pressures
    assert all(bp.systolic is not None and bp.diastolic is not None for bp in f.blood_pressures)
    assert (f.sex, f.birth_date.isoformat()) == ("female", "1970-05-28")
    assert f.unreadable == ()


def test_synthea_live_zoster_vaccine_is_live(terminology):
    """CVX 121 (zoster live) in a real chart is recognised as a live vaccine."""
    f = facts_from(terminology, synthea("Tom_Goodwin"))
    assert any(i.live and "121" in {c.lstrip("0") for c in i.cvx_codes} for i in f.immunizations)


def test_synthea_child_live_vaccines(terminology):
    """MMR, varicella and rotavirus given to the child are all live."""
    f = facts_from(terminology, synthea("Junita_Labadie"))
    assert {i.name for i in f.immunizations if i.live} >= {"MMR", "varicella"}


def test_synthea_carbamazepine_is_a_strong_inducer(terminology):
    """A real RxNorm-coded order ('Carbamazepine[Tegretol]') is matched by name."""
    f = facts_from(terminology, synthea("Dirk_Kuhlman"))
    active = [m for m in f.current_medications if "strong-cyp3a4-inducer" in m.roles]
    assert [m.ingredients for m in active] == [frozenset({"carbamazepine"})]


# -- medications ---------------------------------------------------------------------------------


def draft(**concept) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "d1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        **concept,
    }


@pytest.mark.parametrize(
    "concept",
    [
        {"medicationCodeableConcept": {"text": "Lupkynis 7.9 mg capsule"}},
        {
            "medicationCodeableConcept": {
                "coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "75626-0001-01"}]
            }
        },
        {
            "medicationCodeableConcept": {
                "coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "75626000102"}]
            }
        },
        {
            "medicationReference": {"reference": "#m1"},
            "contained": [
                {
                    "resourceType": "Medication",
                    "id": "m1",
                    "code": {"text": "VOCLOSPORIN 7.9 MG CAPSULE"},
                }
            ],
        },
        {"medicationReference": {"reference": "Medication/vm", "display": "voclosporin"}},
    ],
    ids=["brand-text", "ndc-hyphen", "ndc-11", "contained", "reference-display"],
)
def test_voclosporin_identified_without_rxcui(terminology, concept):
    """Voclosporin is found by brand/ingredient name, NDC 75626-001, contained Medication."""
    f = facts_from(terminology, [PATIENT], drafts=[draft(**concept)])
    assert f.draft_orders[0].is_voclosporin


def test_referenced_medication_resource_is_resolved(terminology):
    """medicationReference to a Medication in the same search result is followed."""
    medication = {
        "resourceType": "Medication",
        "id": "k1",
        "code": {"text": "Ketoconazole 200 MG Oral Tablet"},
    }
    order = {
        **draft(medicationReference={"reference": "Medication/k1"}),
        "id": "a1",
        "status": "active",
    }
    f = facts_from(terminology, [PATIENT, medication, order])
    assert "strong-cyp3a4-inhibitor" in f.medications[0].roles


def test_ingredient_word_boundaries(terminology):
    """'levoketoconazole' is not read as 'ketoconazole' twice, and substrings never match."""
    match = terminology.match_medication([], ["Levoketoconazole 150 MG"])
    assert match.ingredients == frozenset({"levoketoconazole"})
    assert terminology.match_medication([], ["Tacrolimusoid"]).roles == frozenset()


def test_dosage_in_capsules_and_bid_code(terminology):
    """3 capsules with timing code BID read as 23.7 mg twice a day."""
    dosage = {
        "timing": {"code": {"coding": [{"code": "BID"}]}},
        "doseAndRate": [{"doseQuantity": {"value": 3, "unit": "capsule"}}],
    }
    order = draft(medicationCodeableConcept={"text": "LUPKYNIS"}, dosageInstruction=[dosage])
    f = facts_from(terminology, [PATIENT], drafts=[order])
    assert [d.mg for d in f.draft_orders[0].dosage.doses] == [23.7, 23.7]
    assert f.draft_orders[0].dosage.doses_per_day == 2


def test_recorded_orders_read_what_currency_needs_and_doses_only_where_a_rule_reads_them(
    terminology,
):
    """A recorded order carries its intent, start and supply; its dose is read for a voclosporin
    record (and every draft) but not for another drug: no dose rule reads it."""
    dosage = {
        "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
        "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
    }
    supply = {"expectedSupplyDuration": {"value": 30, "unit": "days"}}

    def recorded(id_: str, text: str) -> dict[str, Any]:
        return {
            **draft(medicationCodeableConcept={"text": text}, dosageInstruction=[dosage]),
            "id": id_,
            "status": "completed",
            "authoredOn": "2026-10-20",
            "dispenseRequest": supply,
        }

    lisinopril = recorded("r1", "lisinopril 10 MG Oral Tablet")
    lupkynis = recorded("r2", "LUPKYNIS 7.9 mg capsule")
    f = facts_from(terminology, [PATIENT, lisinopril, lupkynis])
    by_ref = {m.reference: m for m in f.medications}
    for m in by_ref.values():
        assert (m.intent, m.record_type) == ("order", "MedicationRequest")
        assert (m.authored_on.date().isoformat(), m.supply_until.isoformat()) == (
            "2026-10-20",
            "2026-11-18",
        )
    assert by_ref["MedicationRequest/r1"].dosage is None
    assert [d.mg for d in by_ref["MedicationRequest/r2"].dosage.doses] == [10, 10]


# -- observations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "value", "unit", "mg_dl"),
    [
        ("2160-0", 1.1, "mg/dL", 1.1),
        ("14682-9", 97.24, "umol/L", 1.1),
        ("14682-9", 97.24, "µmol/L", 1.1),
    ],
    ids=["mg/dL", "umol/L", "µmol/L"],
)
def test_creatinine_units_and_computed_egfr(terminology, code, value, unit, mg_dl):
    """Creatinine in mg/dL or umol/L gives the same CKD-EPI 2021 eGFR, marked computed."""
    f = facts_from(terminology, [PATIENT, observation(code, value, unit)])
    assert f.creatinine[0].value == pytest.approx(mg_dl, rel=1e-3)
    computed = f.egfr[-1]
    assert computed.computed
    assert "CKD-EPI 2021" in computed.method
    # 142 x (1.1/0.7)^-1.200 x 0.9938^55.48 x 1.012 = 59.2 (woman aged 55.48 on the draw date)
    assert computed.value == pytest.approx(59.2, abs=0.1)


def test_ckd_epi_2021_worked_example(knowledge):
    """Female, 55 y, Scr 0.9 mg/dL -> eGFR about 76 (NKF worked check)."""
    assert ckd_epi_2021(0.9, 55, True, knowledge.ckd_epi) == pytest.approx(76, abs=1)


def test_measured_egfr_wins_on_the_same_day(terminology):
    """No computed eGFR is added for a day that has a measured one."""
    f = facts_from(
        terminology,
        [
            PATIENT,
            observation("98979-8", 70, "mL/min/{1.73_m2}"),
            observation("2160-0", 1.0, "mg/dL"),
        ],
    )
    assert [m.computed for m in f.egfr] == [False]


def test_unknown_creatinine_unit_is_reported_not_guessed(terminology):
    """A creatinine in mmol/L is skipped and listed, never silently misread."""
    f = facts_from(terminology, [PATIENT, observation("2160-0", 0.09, "mmol/L")])
    assert f.creatinine == ()
    assert "not recognised" in f.unreadable[0].reason


def test_bp_as_separate_observations(terminology):
    """Systolic 8480-6 and diastolic 8462-4 sent separately are both read."""
    f = facts_from(
        terminology,
        [PATIENT, observation("8480-6", 150, "mm[Hg]"), observation("8462-4", 95, "mm[Hg]")],
    )
    assert {(bp.systolic, bp.diastolic) for bp in f.blood_pressures} == {(None, 95), (150, None)}


@pytest.mark.parametrize("reverse", [False, True], ids=["as-listed", "reversed"])
def test_bp_parts_at_one_instant_come_in_one_order(terminology, reverse):
    """A lone systolic and a lone diastolic taken at one instant: the systolic reading first,
    whatever the chart's order (the order must not follow hashes, which vary by process)."""
    parts = [observation("8462-4", 95, "mm[Hg]"), observation("8480-6", 150, "mm[Hg]")]
    f = facts_from(terminology, [PATIENT, *(reversed(parts) if reverse else parts)])
    assert [(bp.systolic, bp.diastolic) for bp in f.blood_pressures] == [(150, None), (None, 95)]


def test_entered_in_error_and_missing_values(terminology):
    """entered-in-error results are ignored; a result without a number is reported."""
    wrong = observation("98979-8", 20, "mL/min", status="entered-in-error")
    textual = {**observation("98979-8", 0, "x"), "id": "t1", "valueString": "see comment"}
    del textual["valueQuantity"]
    f = facts_from(terminology, [PATIENT, wrong, textual])
    assert f.egfr == ()
    assert [u.reference for u in f.unreadable] == ["Observation/t1"]


def test_comparator_is_kept_in_method(terminology):
    """'>90' eGFR keeps its comparator visible on the card."""
    obs = observation("98979-8", 90, "mL/min/{1.73_m2}")
    obs["valueQuantity"]["comparator"] = ">"
    f = facts_from(terminology, [PATIENT, obs])
    assert "'>90'" in f.egfr[0].method


def test_invalid_latest_result_is_used_and_reported(terminology):
    """The latest potassium failing R4 validation is still read, and named on the card."""
    bad = observation("2823-3", 6.5, "mmol/L", when="2026-10-30")
    bad["status"] = 17
    good = observation("2823-3", 4.5, "mmol/L", when="2026-10-25")
    f = facts_from(terminology, [PATIENT, bad, good])
    assert [m.value for m in f.potassium] == [6.5]
    assert "invalid FHIR R4 Observation" in f.unreadable[0].reason


def test_invalid_voclosporin_order_and_allergy_still_count(terminology):
    """An active voclosporin order or a voclosporin allergy that fails validation is kept."""
    order = {
        **draft(medicationCodeableConcept={"text": "LUPKYNIS 7.9 mg"}),
        "id": "v1",
        "status": "active",
        "authoredOn": "2026-02-30",
    }
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "a1",
        "code": {"text": "voclosporin"},
        "patient": {"reference": "Patient/p1"},
        "reaction": "severe",  # read by the allergy mapping: must be a list of reactions
    }
    f = facts_from(terminology, [PATIENT, order, allergy])
    assert [m.is_voclosporin for m in f.medications] == [True]
    assert len(f.allergies) == 1
    assert {u.reference for u in f.unreadable} == {"MedicationRequest/v1", "AllergyIntolerance/a1"}


def test_invalid_element_no_rule_reads_is_not_reported(terminology):
    """The gate validates the elements the mappings read: a bad onsetDateTime on an allergy is
    not what the allergy check reads, so the allergy counts and is not named unreadable."""
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "a1",
        "code": {"text": "voclosporin"},
        "patient": {"reference": "Patient/p1"},
        "onsetDateTime": "yesterday",
    }
    f = facts_from(terminology, [PATIENT, allergy])
    assert len(f.allergies) == 1
    assert f.unreadable == ()


def test_future_dated_result_is_not_the_latest(terminology):
    """A result dated next year is reported, and today's one is used."""
    future = observation("2823-3", 3.1, "mmol/L", when="2027-06-01")
    today = observation("2823-3", 5.9, "mmol/L", when="2026-10-31")
    f = facts_from(terminology, [PATIENT, future, today])
    assert [m.value for m in f.potassium] == [5.9]
    assert "dated in the future" in f.unreadable[0].reason


def test_zero_creatinine_is_reported_not_a_crash(terminology):
    """Creatinine 0 cannot give an eGFR: reported, no exception."""
    f = facts_from(terminology, [PATIENT, observation("2160-0", 0, "mg/dL")])
    assert [m for m in f.egfr if m.computed] == []
    assert "not a positive number" in f.unreadable[0].reason


def test_jynneos_is_not_live_despite_its_name(terminology):
    """CVX 206 decides (non-replicating), even though its CDC name says 'live'."""
    match = terminology.match_medication(
        [
            Coding(
                "http://hl7.org/fhir/sid/cvx",
                "206",
                "Vaccinia, smallpox Mpox vaccine live, PF, SQ or ID injection",
            )
        ],
        [],
    )
    assert not match.is_live_vaccine
    assert terminology.match_medication([], ["zoster vaccine live"]).is_live_vaccine


def test_only_results_the_rules_read_are_validated(terminology, monkeypatch):
    """Of 200 eGFR results only the latest is validated (the hot path stays cheap)."""
    import fhir_mappings.mapper as mapper

    calls = []
    real = mapper.validation_problem
    monkeypatch.setattr(
        mapper, "validation_problem", lambda r: calls.append(r["resourceType"]) or real(r)
    )
    results = [
        observation(
            "98979-8",
            60 + i % 30,
            "mL/min/{1.73_m2}",
            when=f"2026-{1 + i % 9:02d}-{1 + i % 28:02d}",
        )
        for i in range(200)
    ]
    for n, r in enumerate(results):
        r["id"] = f"e{n}"
    f = facts_from(terminology, [PATIENT, *results])
    assert len(f.egfr) == 1
    assert calls.count("Observation") == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026", "2026-01-01T00:00:00+00:00"),
        ("2026-03", "2026-03-01T00:00:00+00:00"),
        ("2026-03-04T10:00:00-05:00", "2026-03-04T15:00:00+00:00"),
        ("2026-03-04T10:00:00Z", "2026-03-04T10:00:00+00:00"),
        (" 2026-03-04T10:00:00.250+00:00 ", "2026-03-04T10:00:00.250000+00:00"),
        ("2026-03-04T10:00:00", "2026-03-04T10:00:00+00:00"),
        ("0001-01-01T00:30:00+01:00", None),
        ("nonsense", None),
    ],
)
def test_partial_dates(text, expected):
    """FHIR partial dates and offsets become aware UTC datetimes."""
    parsed = parse_datetime(text)
    assert (parsed.isoformat() if parsed else None) == expected


def test_allergy_refuted_is_ignored(terminology):
    """A refuted voclosporin allergy does not count."""
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "a1",
        "patient": {"reference": "Patient/p1"},
        "code": {"text": "voclosporin"},
        "verificationStatus": {"coding": [{"code": "refuted"}]},
    }
    assert facts_from(terminology, [PATIENT, allergy]).allergies == ()


def test_draft_without_a_medication_element_is_no_order(terminology):
    """The Sandbox's draft before a drug is picked is skipped; an unreadable one is kept."""
    empty = {"resourceType": "MedicationRequest", "id": "empty", "status": "draft"}
    unreadable = {**empty, "id": "unreadable", "intent": "order", "medicationCodeableConcept": {}}
    f = facts_from(terminology, [], drafts=[empty, unreadable])
    assert [(m.reference, m.identified) for m in f.draft_orders] == [
        ("MedicationRequest/unreadable", False)
    ]
    assert all("empty" not in u.reference for u in f.unreadable)


def test_courses_kept_by_build_facts_are_the_computed_ones(terminology):
    """build_facts hands PatientFacts the courses it read its anchors from (computed once a
    call): they are the courses ``treatment_courses`` gives for the same medications."""
    from fhir_mappings.facts import treatment_courses

    recorded = {
        **draft(medicationCodeableConcept={"text": "lisinopril 10 MG Oral Tablet"}),
        "id": "r1",
        "status": "active",
    }
    on_voclosporin = {
        **draft(medicationCodeableConcept={"text": "Lupkynis 7.9 mg capsule"}),
        "id": "r2",
        "status": "active",
        "authoredOn": "2026-09-01",
    }
    f = facts_from(
        terminology,
        [
            PATIENT,
            recorded,
            on_voclosporin,
            observation("2160-0", 1.1, "mg/dL", when="2026-10-20"),
            observation("98979-8", 52, "mL/min/{1.73_m2}", when="2026-10-25"),
        ],
        drafts=[draft(medicationCodeableConcept={"text": "Lupkynis 7.9 mg capsule"})],
    )
    assert (len(f.medications), len(f.draft_orders), len(f.courses)) == (2, 1, 1)
    assert f.courses == treatment_courses(f.medications, f.now, f.course_rules)
