"""Doses as EHRs write them, split AM/PM drafts as one regimen, and dose suggestions that are
safe to accept (knowledge "Decisions, second round": dose suggestions; K 1.4-1.6, 1.13, 3a)."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.dosage import Dosage as FhirDosage

from cds_service.cards import build_cards
from cds_service.rules.doses import regimen_of
from cds_service.rules.engine import evaluate
from fhir_mappings.build import build_facts
from fhir_mappings.dosage import dosage
from fhir_mappings.facts import PatientFacts
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.vocabulary import DataCategory as D

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
UCUM = "http://unitsofmeasure.org"
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1980-03-02"}
MMF = {
    "resourceType": "MedicationRequest",
    "id": "mmf",
    "status": "active",
    "intent": "order",
    "subject": {"reference": "Patient/p1"},
    "medicationCodeableConcept": {"text": "mycophenolate mofetil 500 MG Oral Tablet"},
}
DILTIAZEM = {**MMF, "id": "dilt", "medicationCodeableConcept": {"text": "diltiazem 120 MG"}}


def day(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat()


def egfr(value: float, days_ago: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"egfr-{days_ago}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": day(days_ago),
        "valueQuantity": {"value": value, "unit": "mL/min/{1.73_m2}"},
    }


def instruction(value: float, unit: str, timing: dict[str, Any]) -> dict[str, Any]:
    return {"timing": timing, "doseAndRate": [{"doseQuantity": {"value": value, **unit_of(unit)}}]}


def unit_of(unit: str) -> dict[str, str]:
    """A unit as EHRs send it: UCUM annotations as system + code, other spellings as unit."""
    return (
        {"system": UCUM, "code": unit} if unit.startswith("{") or unit == "mg" else {"unit": unit}
    )


def voclosporin_draft(draft_id: str, *instructions: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": draft_id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": NOW.date().isoformat(),
        "medicationCodeableConcept": {"text": "LUPKYNIS 7.9 mg oral capsule"},
        "dosageInstruction": list(instructions),
    }


CODE = {
    "BID": {"code": {"coding": [{"code": "BID"}]}},
    "AM": {"code": {"coding": [{"code": "AM"}]}},
    "PM": {"code": {"coding": [{"code": "PM"}]}},
    "EVE": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "when": ["EVE"]}},
}


def facts_for(
    terminology: Any,
    drafts: list[dict[str, Any]],
    medications: list[dict[str, Any]] = (),  # type: ignore[assignment]
    egfrs: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> PatientFacts:
    return build_facts(
        terminology=terminology,
        now=NOW,
        patient_id="p1",
        patient=PATIENT,
        chart={
            D.MEDICATIONS: [MMF, *medications],
            D.EGFR: [egfr(88, 3), *egfrs] if not egfrs else list(egfrs),
            D.CONDITIONS: [],
            D.IMMUNIZATIONS: [],
            D.ALLERGIES: [],
        },
        draft_orders=drafts,
        selections=None,
        unavailable={},
    )


# -- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "value", "mg"),
    [
        ("mg", 23.7, 23.7),
        ("{capsule}", 3, 23.7),
        ("{capsules}", 2, 15.8),
        ("{cap}", 1, 7.9),
        ("{pill}", 3, 23.7),
        ("capsule", 3, 23.7),
        ("Capsules", 2, 15.8),
        ("cap", 1, 7.9),
        ("caps", 3, 23.7),
    ],
    ids=lambda v: str(v),
)
def test_dose_units_read_as_7_9_mg_capsules(knowledge: Knowledge, unit, value, mg):
    """Each unit synonym (dose_units.csv) is mg or a count of 7.9 mg voclosporin capsules."""
    read = dosage(
        voclosporin_draft("d", instruction(value, unit, CODE["BID"])),
        knowledge.dose_vocabulary,
        7.9,
    )
    assert read is not None
    assert [d.mg for d in read.doses] == [mg, mg]


def test_sandbox_pill_quantity_without_unit_text(knowledge: Knowledge):
    """The CDS Hooks Sandbox sends {system: UCUM, code: '{pill}'} with no unit and DSTU2
    periodUnits: read as capsules, twice a day."""
    order = voclosporin_draft("d")
    order["dosageInstruction"] = [
        {
            "doseQuantity": {"value": 3, "system": UCUM, "code": "{pill}"},
            "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnits": "d"}},
        }
    ]
    read = dosage(order, knowledge.dose_vocabulary, 7.9)
    assert read is not None
    assert ([d.mg for d in read.doses], read.doses_per_day) == ([23.7, 23.7], 2.0)


def test_capsules_of_another_drug_are_not_voclosporin_capsules(knowledge: Knowledge):
    """Without voclosporin's capsule size the count stays unread (no made-up mg)."""
    order = voclosporin_draft("d", instruction(2, "{capsule}", CODE["BID"]))
    read = dosage(order, knowledge.dose_vocabulary, None)
    assert read is not None
    assert read.doses == ()


@pytest.mark.parametrize(
    ("timing", "per_day", "parts"),
    [
        ({"code": {"coding": [{"code": "BID"}]}}, 2.0, [None, None]),
        ({"code": {"coding": [{"code": "TID"}]}}, 3.0, [None] * 3),
        ({"code": {"coding": [{"code": "QID"}]}}, 4.0, [None] * 4),
        ({"code": {"coding": [{"code": "QD"}]}}, 1.0, [None]),
        ({"code": {"coding": [{"code": "QOD"}]}}, 0.5, [None]),
        ({"code": {"coding": [{"code": "Q12H"}]}}, 2.0, [None, None]),
        ({"code": {"coding": [{"code": "Q8H"}]}}, 3.0, [None] * 3),
        ({"code": {"coding": [{"code": "Q6H"}]}}, 4.0, [None] * 4),
        ({"code": {"coding": [{"code": "Q4H"}]}}, 6.0, [None] * 6),
        ({"code": {"coding": [{"code": "AM"}]}}, 1.0, ["morning"]),
        ({"code": {"coding": [{"code": "PM"}]}}, 1.0, ["afternoon"]),
        ({"code": {"coding": [{"code": "QAM"}]}}, 1.0, ["morning"]),
        ({"code": {"coding": [{"code": "QPM"}]}}, 1.0, ["evening"]),
        ({"code": {"coding": [{"code": "QHS"}]}}, 1.0, ["night"]),
        ({"code": {"text": "BID"}}, 2.0, [None, None]),
        (
            {
                "code": {
                    "coding": [{"system": "urn:oid:1.2.840.114350", "code": "9"}],
                    "text": "bid",
                }
            },
            2.0,
            [None, None],
        ),
        ({"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}}, 2.0, [None, None]),
        ({"repeat": {"frequency": 1, "period": 12, "periodUnit": "h"}}, 2.0, [None, None]),
        (
            {"repeat": {"frequency": 2, "frequencyMax": 3, "period": 1, "periodUnit": "d"}},
            3.0,
            [None] * 3,
        ),
        ({"repeat": {"when": ["MORN", "EVE"]}}, 2.0, ["morning", "evening"]),
        (
            {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "when": ["ACM"]}},
            1.0,
            ["morning"],
        ),
        (
            {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "when": ["PCV"]}},
            1.0,
            ["evening"],
        ),
        ({"repeat": {"timeOfDay": ["08:00:00", "20:00:00"]}}, 2.0, [None, None]),
        (
            {"repeat": {"boundsPeriod": {"start": "2026-11-01"}}, "code": {"text": "BID"}},
            2.0,
            [None, None],
        ),
        ({"code": {"text": "as directed"}}, None, [None]),
    ],
    ids=[
        "BID",
        "TID",
        "QID",
        "QD",
        "QOD",
        "Q12H",
        "Q8H",
        "Q6H",
        "Q4H",
        "AM",
        "PM",
        "QAM",
        "QPM",
        "QHS",
        "text-only-BID",
        "epic-coding-text-bid",
        "repeat-2-per-d",
        "repeat-1-per-12h",
        "frequencyMax",
        "when-MORN-EVE",
        "when-ACM",
        "when-PCV",
        "timeOfDay",
        "repeat-without-frequency-uses-code",
        "unknown-text",
    ],
)
def test_timing(knowledge: Knowledge, timing, per_day, parts):
    """Timing.code (GTSAbbreviation, v2 table 0335; coding or text) when repeat gives no
    frequency, and Timing.repeat (frequency, frequencyMax, period, when, timeOfDay)."""
    order = voclosporin_draft("d", instruction(7.9, "mg", timing))
    read = dosage(order, knowledge.dose_vocabulary, 7.9)
    assert read is not None
    assert read.doses_per_day == per_day
    assert [d.part for d in read.doses] == parts


# -- split drafts -------------------------------------------------------------------------------


def fired(facts: PatientFacts, knowledge: Knowledge) -> dict[str, str]:
    return {f.rule_id: f.indicator for f in evaluate(facts, knowledge).findings}


def test_split_am_pm_drafts_are_the_moderate_inhibitor_regimen(knowledge, terminology):
    """An AM draft of 15.8 mg and a PM draft of 7.9 mg are the PI 7 regimen: info, no dose
    problem, no suggestion."""
    drafts = [
        voclosporin_draft("am", instruction(2, "{capsule}", CODE["AM"])),
        voclosporin_draft("pm", instruction(1, "{capsule}", CODE["EVE"])),
    ]
    f = facts_for(terminology, drafts, [DILTIAZEM])
    result = fired(f, knowledge)
    assert result["moderate-cyp3a4-inhibitor"] == "info"
    assert "dose-check" not in result


@pytest.mark.parametrize(
    ("mg", "indicator", "suggested"),
    [(7.9, "info", False), (15.8, "warning", True), (23.7, "warning", True)],
    ids=["7.9-bid-below-reduced", "15.8-bid-above-reduced", "23.7-bid-label-start"],
)
def test_moderate_inhibitor_never_suggests_more_than_is_drafted(
    knowledge, terminology, mg, indicator, suggested
):
    """7.9 mg BID (15.8 mg a day) is already below 15.8 mg AM + 7.9 mg PM (23.7 mg a day):
    no "reduce" warning and no suggestion that would raise it; higher regimens are reduced."""
    drafts = [voclosporin_draft("d", instruction(mg, "mg", CODE["BID"]))]
    found = evaluate(facts_for(terminology, drafts, [DILTIAZEM]), knowledge).findings
    card = next(c for c in found if c.rule_id == "moderate-cyp3a4-inhibitor")
    assert card.indicator == indicator
    assert bool(card.suggestions) is suggested


def test_split_am_pm_drafts_at_23_7_are_the_label_dose(knowledge, terminology):
    """AM 23.7 mg + PM 23.7 mg over two drafts is 23.7 mg twice daily: no dose problem."""
    drafts = [
        voclosporin_draft("am", instruction(23.7, "mg", CODE["AM"])),
        voclosporin_draft("pm", instruction(23.7, "mg", CODE["PM"])),
    ]
    assert "dose-check" not in fired(facts_for(terminology, drafts), knowledge)


@pytest.mark.parametrize(
    ("am", "pm", "problem"),
    [
        (CODE["BID"], CODE["BID"], "exceeds the maximum"),
        (CODE["AM"], CODE["AM"], "exceeds the maximum"),
    ],
    ids=["two-bid-drafts", "two-am-drafts"],
)
def test_two_drafts_of_23_7_taken_together_are_flagged(knowledge, terminology, am, pm, problem):
    """Two 23.7 mg drafts at the same times add up to 47.4 mg a dose: flagged as one regimen."""
    drafts = [
        voclosporin_draft("a", instruction(23.7, "mg", am)),
        voclosporin_draft("b", instruction(23.7, "mg", pm)),
    ]
    card = next(
        f
        for f in evaluate(facts_for(terminology, drafts), knowledge).findings
        if f.rule_id == "dose-check"
    )
    assert problem in card.detail
    assert "47.4 mg" in card.detail


def test_split_drafts_with_moderate_inhibitor_get_one_suggestion_for_both(knowledge, terminology):
    """AM 23.7 + PM 23.7 drafts with diltiazem: warning; one suggestion rewrites both drafts
    (AM -> 15.8 mg, PM -> 7.9 mg)."""
    drafts = [
        voclosporin_draft("am", instruction(3, "{capsule}", CODE["AM"])),
        voclosporin_draft("pm", instruction(3, "{capsule}", CODE["PM"])),
    ]
    f = facts_for(terminology, drafts, [DILTIAZEM])
    findings = evaluate(f, knowledge).findings
    card = next(
        c
        for c in build_cards(findings, knowledge, drafts)
        if c.rule_id == "moderate-cyp3a4-inhibitor"
    )
    assert card.indicator == "warning"
    [suggestion] = card.body["suggestions"]
    updates = {a["resource"]["id"]: a["resource"] for a in suggestion["actions"]}
    assert set(updates) == {"am", "pm"}
    assert [
        d["doseAndRate"][0]["doseQuantity"]["value"] for d in updates["am"]["dosageInstruction"]
    ] == [15.8]
    assert [
        d["doseAndRate"][0]["doseQuantity"]["value"] for d in updates["pm"]["dosageInstruction"]
    ] == [7.9]


def test_update_json_applies_together_and_is_valid_r4(knowledge, terminology):
    """The 15.8 AM + 7.9 PM update: two Dosage entries with no sequence (apply together), each
    a valid R4 Dosage (fhir.resources)."""
    drafts = [voclosporin_draft("d", instruction(23.7, "mg", CODE["BID"]))]
    findings = evaluate(facts_for(terminology, drafts, [DILTIAZEM]), knowledge).findings
    card = next(
        c
        for c in build_cards(findings, knowledge, drafts)
        if c.rule_id == "moderate-cyp3a4-inhibitor"
    )
    [action] = card.body["suggestions"][0]["actions"]
    instructions = action["resource"]["dosageInstruction"]
    assert len(instructions) == 2
    assert len({i.get("sequence") for i in instructions}) == 1
    for item in instructions:
        FhirDosage.model_validate(item)
    assert [i["timing"]["repeat"]["when"] for i in instructions] == [["MORN"], ["EVE"]]


# -- the never-above-maximum property -----------------------------------------------------------


def apply(drafts: list[dict[str, Any]], suggestion: dict[str, Any]) -> list[dict[str, Any]]:
    """The draft list after the EHR accepts one suggestion (update by id, delete by reference)."""
    result = copy.deepcopy(drafts)
    for action in suggestion["actions"]:
        if action["type"] == "update":
            new = action["resource"]
            result = [new if d["id"] == new["id"] else d for d in result]
        elif action["type"] == "delete":
            result = [d for d in result if f"MedicationRequest/{d['id']}" != action["resourceId"]]
    return result


DOSES = (7.9, 15.8, 23.7)
SHAPES = [
    *[[("a", mg, "BID")] for mg in (*DOSES, 31.6)],
    *[[("am", a, "AM"), ("pm", b, "PM")] for a, b in itertools.product(DOSES, DOSES)],
    *[[("am", a, "AM"), ("pm", b, "EVE")] for a, b in itertools.product(DOSES, DOSES)],
    *[[("a", a, "BID"), ("b", b, "BID")] for a, b in itertools.product(DOSES[:2], DOSES[:2])],
    [("a", 15.8, "AM"), ("b", 7.9, "AM")],
]
CONTEXTS: dict[str, dict[str, Any]] = {
    "initiation": {},
    "initiation-egfr-28": {"egfrs": [egfr(28, 3)]},
    "moderate-inhibitor": {"medications": [DILTIAZEM]},
    "egfr-down-25-percent": {
        "medications": [
            {
                **voclosporin_draft("old", instruction(23.7, "mg", CODE["BID"])),
                "status": "active",
                "authoredOn": day(60),
            }
        ],
        "egfrs": [egfr(80, 65), egfr(58, 5)],
    },
}


@pytest.mark.parametrize("context", sorted(CONTEXTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "+".join(f"{i}:{mg}{t}" for i, mg, t in s))
def test_accepting_any_one_suggestion_never_exceeds_the_label_maximum(
    knowledge, terminology, shape, context
):
    """Whatever the drafted regimen, accepting any single suggestion leaves every dose of the
    session's regimen at or below 23.7 mg (rules.toml [dose] max_dose_mg)."""
    drafts = [voclosporin_draft(i, instruction(mg, "mg", CODE[t])) for i, mg, t in shape]
    extra = CONTEXTS[context]
    f = facts_for(terminology, drafts, extra.get("medications", []), extra.get("egfrs", []))
    cards = build_cards(evaluate(f, knowledge).findings, knowledge, drafts)
    limit = knowledge.dose.max_dose_mg + knowledge.dose.mg_tolerance
    for card in cards:
        for suggestion in card.body.get("suggestions", []):
            after = facts_for(
                terminology,
                apply(drafts, suggestion),
                extra.get("medications", []),
                extra.get("egfrs", []),
            )
            regimen = regimen_of(after.draft_orders, knowledge)
            if regimen is None:  # the suggestion removed voclosporin
                continue
            assert all(d.mg <= limit for d in regimen.doses), (card.rule_id, suggestion["label"])
            for draft in apply(drafts, suggestion):
                for item in draft["dosageInstruction"]:
                    FhirDosage.model_validate(item)


# -- cost ---------------------------------------------------------------------------------------


def test_dose_check_reads_the_drafts_a_fixed_number_of_times(knowledge, monkeypatch):
    """dose-check is linear in the number of drafts (issue 13: it rescanned them per draft)."""
    from cds_service.rules.regimen import dose_check
    from fhir_mappings.facts import Medication
    from tests.support.clinical import bid, facts, voclosporin

    reads = 0
    original = Medication.is_voclosporin

    def counted(self: Medication) -> bool:
        nonlocal reads
        reads += 1
        return original.fget(self)  # type: ignore[attr-defined,no-any-return]

    monkeypatch.setattr(Medication, "is_voclosporin", property(counted))

    def cost(n: int) -> int:
        nonlocal reads
        drafts = tuple(
            voclosporin(dosage=bid(23.7), ref=f"MedicationRequest/d{i}") for i in range(n)
        )
        reads = 0
        list(dose_check(facts(draft_orders=drafts), knowledge))
        return reads

    small, large = cost(100), cost(400)
    assert large <= 4 * small + 10
    assert small <= 20 * 100  # a few passes per draft, not one per other draft


@pytest.mark.parametrize(
    ("egfrs", "expected_mg"),
    [([egfr(88, 3)], 23.7), ([egfr(28, 3)], 15.8)],
    ids=["usual-start", "egfr-below-30-start"],
)
def test_dose_check_suggests_the_expected_starting_dose(knowledge, terminology, egfrs, expected_mg):
    """At initiation a wrong dose gets one suggestion: the expected starting dose twice daily
    (23.7 mg; 15.8 mg with baseline eGFR < 30, K 1.17), one instruction, no sequence."""
    drafts = [voclosporin_draft("d", instruction(31.6, "mg", CODE["BID"]))]
    findings = evaluate(facts_for(terminology, drafts, egfrs=egfrs), knowledge).findings
    card = next(c for c in build_cards(findings, knowledge, drafts) if c.rule_id == "dose-check")
    [suggestion] = card.body["suggestions"]
    [action] = suggestion["actions"]
    [item] = action["resource"]["dosageInstruction"]
    assert item["doseAndRate"][0]["doseQuantity"]["value"] == expected_mg
    assert item["timing"]["repeat"]["frequency"] == 2
    FhirDosage.model_validate(item)


def test_dose_check_offers_no_dose_with_a_moderate_inhibitor(knowledge, terminology):
    """With a moderate inhibitor the interaction card suggests the PI 7 regimen; dose-check
    does not offer a competing starting dose."""
    drafts = [voclosporin_draft("d", instruction(31.6, "mg", CODE["BID"]))]
    findings = evaluate(facts_for(terminology, drafts, [DILTIAZEM]), knowledge).findings
    card = next(c for c in build_cards(findings, knowledge, drafts) if c.rule_id == "dose-check")
    assert "suggestions" not in card.body


def test_egfr_reduction_of_split_drafts_is_one_suggestion(knowledge, terminology):
    """Renewal with eGFR down 27.5%: AM 23.7 + PM 23.7 drafts are reduced together, each by
    7.9 mg (K 1.13), in one suggestion that updates both drafts."""
    context = CONTEXTS["egfr-down-25-percent"]
    drafts = [
        voclosporin_draft("am", instruction(23.7, "mg", CODE["AM"])),
        voclosporin_draft("pm", instruction(23.7, "mg", CODE["EVE"])),
    ]
    f = facts_for(terminology, drafts, context["medications"], context["egfrs"])
    findings = evaluate(f, knowledge).findings
    card = next(c for c in build_cards(findings, knowledge, drafts) if c.rule_id == "egfr-decline")
    [suggestion] = card.body["suggestions"]
    values = {
        a["resource"]["id"]: [
            d["doseAndRate"][0]["doseQuantity"]["value"] for d in a["resource"]["dosageInstruction"]
        ]
        for a in suggestion["actions"]
    }
    assert values == {"am": [15.8], "pm": [15.8]}
    # The label a prescriber reads names the regimen, not a sum of doses.
    assert suggestion["label"].endswith("to 15.8 mg twice daily")


@pytest.mark.parametrize(
    ("drafts", "doses", "per_day"),
    [
        ([[("EVE", 7.9), ("MORN", 15.8)]], [15.8, 7.9], 2.0),
        ([[("MORN", 15.8)], [("AFT", 7.9)]], [15.8, 7.9], 2.0),
        ([[("08:00:00", 15.8)], [("20:00:00", 7.9)]], [15.8, 7.9], 2.0),
        ([[(None, 23.7), (None, 23.7)], [(None, 7.9), (None, 7.9)]], [31.6, 31.6], 2.0),
        ([[("MORN", 15.8)], [("ACM", 7.9)]], [23.7], 1.0),
    ],
    ids=["one-draft-eve-listed-first", "am-and-pm-drafts", "clock-times", "two-bid", "two-am"],
)
def test_regimen_of_puts_drafts_side_by_side(knowledge, drafts, doses, per_day):
    """Doses in day order whatever the listing; the same part of the day adds up."""
    from fhir_mappings.facts import Dosage, DoseAmount
    from tests.support.clinical import voclosporin

    orders = [
        voclosporin(
            dosage=Dosage(tuple(DoseAmount(mg, when) for when, mg in d), float(len(d)), ""),
            ref=f"MedicationRequest/d{i}",
        )
        for i, d in enumerate(drafts)
    ]
    regimen = regimen_of(orders, knowledge)
    assert regimen is not None
    assert ([d.mg for d in regimen.doses], regimen.doses_per_day) == (doses, per_day)


@pytest.mark.parametrize(
    "junk", [5, 10**40, "BID", {"text": "x"}], ids=["int", "huge", "str", "obj"]
)
def test_update_of_a_draft_whose_dosage_is_not_a_list_is_built(junk: Any) -> None:
    """A draft whose dosageInstruction is not a list still gets a whole update resource."""
    from fhir_mappings.orders import with_doses

    draft = {"resourceType": "MedicationRequest", "id": "d1", "dosageInstruction": junk}
    updated = with_doses(draft, ((23.7, None), (23.7, None)), 7.9)
    assert isinstance(updated["dosageInstruction"], list)
    assert updated["id"] == "d1"
