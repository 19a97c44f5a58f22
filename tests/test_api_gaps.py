"""Issue 12 over HTTP: monitoring gaps vs access failures, empty drafts, override reasons, links."""

from __future__ import annotations

from typing import Any

import pytest
import responses
from sqlalchemy import select

from cds_service import close_app
from cds_service.recording import RECORDER_EXTENSION
from cds_service.spec_check import check_response
from cds_service.storage.schema import feedback as feedback_table
from tests.charts.lupus import voclosporin_draft_order
from tests.conftest import make_app
from tests.support.hooks import hook_request, prefetch_for
from tests.test_api import FHIR, SIGN, TODAY, chart, errors_only, rule_ids, templates

SELECT = "/cds-services/voclosporin-order-select"
HL7_REASONS = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
EMPTY_BUNDLE: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": []}


def card_of(response, rule_id: str) -> dict[str, Any]:
    return response.json["cards"][rule_ids(response).index(rule_id)]


def initiation(
    app, name: str = "ln-initiation-clean", *, without: str | None = None, **replaced: Any
) -> dict[str, Any]:
    """An order-sign request starting LUPKYNIS for chart ``name``, prefetch keys changed.

    ``without``: that key is left out and fetched from the FHIR server instead.
    """
    patient_id, resources = chart(name)
    prefetch = prefetch_for(resources, patient_id, templates(app))
    prefetch.update(replaced)
    server: dict[str, Any] = {}
    if without is not None:
        del prefetch[without]
        server = {"fhir_server": FHIR, "token": "secret-token"}
    return hook_request(
        "order-sign", patient_id, [voclosporin_draft_order(patient_id, TODAY)], prefetch, **server
    )


# -- monitoring gaps vs data that could not be obtained ------------------------------------------


def test_no_recent_potassium_is_an_info_note_not_a_warning(app, client):
    """A clean initiation whose chart has no potassium: one info monitoring note, no warning."""
    response = client.post(SIGN, json=initiation(app, potassium=EMPTY_BUNDLE))
    assert response.status_code == 200
    assert errors_only(check_response(response.json)) == []
    assert rule_ids(response) == ["prior-authorization", "monitoring-gaps"]
    note = card_of(response, "monitoring-gaps")
    assert note["indicator"] == "info"
    assert "potassium" in note["summary"]
    assert "hyperkalemia: no potassium result in the last 30 days" in note["detail"]
    assert "links" not in note
    assert all(card["indicator"] != "warning" for card in response.json["cards"])


def test_potassium_fetch_failure_is_still_the_data_unavailable_warning(tmp_path):
    """A 500 for the potassium search: data-unavailable warning, and no monitoring note for it."""
    app = make_app(tmp_path, CDS_FHIR_ALLOWED_SERVERS=FHIR)
    try:
        body = initiation(app, without="potassium")
        with responses.RequestsMock() as mocked:
            mocked.get(f"{FHIR}/Observation", status=500)
            response = app.test_client().post(SIGN, json=body)
        assert response.status_code == 200
        ids = rule_ids(response)
        assert "monitoring-gaps" not in ids
        warning = card_of(response, "data-unavailable")
        assert warning["indicator"] == "warning"
        assert "potassium: FHIR server error (HTTP 500)" in warning["detail"]
        assert "hyperkalemia" in warning["summary"]
        assert "links" not in warning
    finally:
        close_app(app)


# -- drafts before a drug is picked --------------------------------------------------------------


def sandbox_empty_draft(patient_id: str) -> dict[str, Any]:
    """What the CDS Hooks Sandbox sends before a drug is picked: no medication[x], no intent."""
    return {
        "resourceType": "MedicationRequest",
        "id": "request-123",
        "status": "draft",
        "subject": {"reference": f"Patient/{patient_id}"},
    }


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_sandbox_empty_draft_for_a_patient_not_on_voclosporin_gives_no_cards(app, client, hook):
    """An empty draft is not an unidentified drug: a patient not on voclosporin gets no cards."""
    patient_id, resources = chart("ln-initiation-clean")
    body = hook_request(
        hook,
        patient_id,
        [sandbox_empty_draft(patient_id)],
        prefetch_for(resources, patient_id, templates(app, hook)),
    )
    response = client.post(f"/cds-services/voclosporin-{hook}", json=body)
    assert (response.status_code, response.json) == (200, {"cards": []})


def test_empty_draft_beside_voclosporin_says_nothing_about_it(app, client):
    """Next to a LUPKYNIS order the empty draft adds no card and is not named anywhere."""
    patient_id, resources = chart("ln-initiation-clean")
    body = hook_request(
        "order-sign",
        patient_id,
        [voclosporin_draft_order(patient_id, TODAY), sandbox_empty_draft(patient_id)],
        prefetch_for(resources, patient_id, templates(app)),
    )
    response = client.post(SIGN, json=body)
    assert rule_ids(response) == ["prior-authorization"]
    assert "request-123" not in str(response.json)


@pytest.mark.parametrize(
    "medication",
    [
        pytest.param({"medicationReference": {"reference": "Medication/med-77"}}, id="reference"),
        pytest.param({"medicationCodeableConcept": {}}, id="empty-concept"),
    ],
)
def test_unrecognisable_medication_still_gives_the_could_not_tell_card(app, client, medication):
    """A draft that has a medication element nobody can read stays 'could not tell'."""
    patient_id, resources = chart("ln-initiation-clean")
    draft = {**sandbox_empty_draft(patient_id), "intent": "order", **medication}
    body = hook_request(
        "order-select",
        patient_id,
        [draft],
        prefetch_for(resources, patient_id, templates(app, "order-select")),
    )
    response = client.post(SELECT, json=body)
    assert rule_ids(response) == ["data-unavailable"]
    card = response.json["cards"][0]
    assert card["indicator"] == "warning"
    assert "MedicationRequest/request-123" in card["detail"]


# -- override reasons ----------------------------------------------------------------------------


def test_cards_offer_the_hl7_displays_and_the_tolerated_combination(app, client):
    """Every card offers the HL7 codes with the HL7 displays, plus the 'tolerated' reason."""
    response = client.post(SIGN, json=initiation(app, "ln-initiation-low-egfr-high-bp"))
    expected = [
        (HL7_REASONS, "cds-not-applicable", "PC CDS does not apply to patient"),
        (HL7_REASONS, "cds-suboptimal-context", "PC CDS delivered in suboptimal context"),
        (
            HL7_REASONS,
            "recipient-disagrees-evidence",
            "Recipient disagrees with recommendation because of issues with the evidence",
        ),
        (
            HL7_REASONS,
            "recipient-concerns-outcomes",
            "Recipient has concerns regarding potential health outcomes",
        ),
        (
            HL7_REASONS,
            "does-not-align-preferences",
            "Recommendation does not align with patient preferences or values",
        ),
        (HL7_REASONS, "not-convenient-feasible", "Recommendation is not convenient or feasible"),
        (
            HL7_REASONS,
            "action-performed-no-adverse-effect",
            "Intended action was performed previously without adverse effect",
        ),
    ]
    for card in response.json["cards"]:
        offered = [(r["system"], r["code"], r["display"]) for r in card["overrideReasons"]]
        assert offered == expected, card["source"]["topic"]["code"]


def stored_reasons(app) -> dict[str, tuple[str | None, str | None, str | None]]:
    storage = app.extensions[RECORDER_EXTENSION].storage
    with storage.engine.connect() as conn:
        rows = conn.execute(select(feedback_table)).all()
    return {
        row.card_uuid: (
            row.override_reason_system,
            row.override_reason_code,
            row.override_reason_display,
        )
        for row in rows
    }


def override(card_uuid: str, reason: dict[str, Any]) -> dict[str, Any]:
    return {
        "card": card_uuid,
        "outcome": "overridden",
        "overrideReason": {"reason": reason},
        "outcomeTimestamp": "2026-11-01T12:05:00Z",
    }


def test_feedback_with_code_and_system_only_is_stored_with_the_issued_display(app, client):
    """The Sandbox sends code + system: the row gets the display the card offered."""
    response = client.post(SIGN, json=initiation(app, "ln-initiation-low-egfr-high-bp"))
    app.extensions["cds_audit_writer"].flush(5.0)
    first, second, third = (card["uuid"] for card in response.json["cards"][:3])
    posted = client.post(
        f"{SIGN}/feedback",
        json={
            "feedback": [
                override(
                    first, {"system": HL7_REASONS, "code": "action-performed-no-adverse-effect"}
                ),
                override(second, {"system": HL7_REASONS, "code": "x", "display": "As sent"}),
                override(third, {"system": "urn:elsewhere", "code": "cds-not-applicable"}),
            ]
        },
    )
    assert posted.json == {"received": 3, "stored": 3}
    rows = stored_reasons(app)
    assert rows[first] == (
        HL7_REASONS,
        "action-performed-no-adverse-effect",
        "Intended action was performed previously without adverse effect",
    )
    assert rows[second] == (HL7_REASONS, "x", "As sent")  # a display sent is kept as sent
    assert rows[third] == ("urn:elsewhere", "cds-not-applicable", None)  # not a code we issued


# -- links ---------------------------------------------------------------------------------------


def test_rule_cards_link_the_label_section_they_cite(app, client):
    """Label rules link DailyMed (absolute, named by section); payer and data cards do not."""
    response = client.post(SIGN, json=initiation(app, "ln-initiation-low-egfr-high-bp"))
    assert errors_only(check_response(response.json)) == []
    bp = card_of(response, "blood-pressure-high")
    assert bp["links"] == [
        {
            "label": "LUPKYNIS label (DailyMed): "
            "2.2 Assessments before initiating; 5.4 Hypertension",
            "url": "https://dailymed.nlm.nih.gov/dailymed/drugInfo.cfm?setid="
            "9f489295-1156-52c7-5fd0-5c4c52f9b813",
            "type": "absolute",
        }
    ]
    assert card_of(response, "hyperkalemia")["links"][0]["label"].endswith("5.6 Hyperkalemia")
    assert "links" not in card_of(response, "prior-authorization")
