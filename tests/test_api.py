"""The HTTP contract via the Flask test client: hooks, prefetch vs fetch, errors, feedback."""

from __future__ import annotations

import copy
import json
import logging
import uuid
from datetime import date
from typing import Any

import pytest
import responses

from cds_service import close_app
from cds_service.contract import ORDERS_SERVICE_HOOKS, ORDERS_SERVICE_ID
from cds_service.logs import json_formatter
from cds_service.spec_check import check_discovery, check_response
from tests.charts.lupus import CHARTS, voclosporin_draft_order
from tests.conftest import FIXED_NOW, make_app
from tests.support.factories import calls_for_hook_instance
from tests.support.hooks import chart_resources, hook_request, prefetch_for

TODAY: date = FIXED_NOW.date()
FHIR = "https://ehr.example.org/fhir"
SIGN = "/cds-services/voclosporin-order-sign"


def chart(name: str) -> tuple[str, list[dict[str, Any]]]:
    resources = chart_resources(CHARTS[name](TODAY))
    patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    return patient_id, resources


def templates(app, hook: str = "order-sign") -> dict[str, str]:
    return app.extensions["cds_service"].services[f"voclosporin-{hook}"].prefetch


def voclosporin_request(app, name: str, hook: str = "order-sign") -> dict[str, Any]:
    """A hook request ordering voclosporin for chart ``name``, prefetch from our templates."""
    patient_id, resources = chart(name)
    return hook_request(
        hook,
        patient_id,
        [voclosporin_draft_order(patient_id, TODAY)],
        prefetch_for(resources, patient_id, templates(app, hook)),
    )


def rule_ids(response) -> list[str]:
    return [card["source"]["topic"]["code"] for card in response.json["cards"]]


def _data_unavailable_card(client, patient_id: str, prefetch: dict[str, Any]) -> dict[str, Any]:
    """Sign a voclosporin draft for ``patient_id`` with ``prefetch``; its data-unavailable card."""
    response = client.post(
        SIGN,
        json=hook_request(
            "order-sign", patient_id, [voclosporin_draft_order(patient_id, TODAY)], prefetch
        ),
    )
    ids = rule_ids(response)
    card: dict[str, Any] = response.json["cards"][ids.index("data-unavailable")]
    return card


def errors_only(violations):
    return [v for v in violations if v.severity == "error"]


def test_discovery_is_spec_valid(client):
    """Discovery lists the three hooks with valid prefetch tokens only."""
    response = client.get("/cds-services")
    assert response.status_code == 200
    assert errors_only(check_discovery(response.json)) == []
    hooks = {s["hook"]: s for s in response.json["services"]}
    assert set(hooks) == {"order-select", "order-sign", "medication-prescribe"}
    assert "98979-8" in hooks["order-sign"]["prefetch"]["egfr"]


@pytest.mark.parametrize("hook", ["order-select", "order-sign", "medication-prescribe"])
def test_each_hook_returns_spec_valid_cards(app, client, hook):
    """Every hook answers a voclosporin initiation with spec-valid cards."""
    body = voclosporin_request(app, "ln-initiation-low-egfr-high-bp", hook)
    response = client.post(f"/cds-services/voclosporin-{hook}", json=body)
    assert response.status_code == 200, response.json
    assert errors_only(check_response(response.json)) == []
    assert rule_ids(response) == [
        "blood-pressure-high",
        "egfr-baseline-low",
        "hyperkalemia",
        "prior-authorization",
    ]
    assert response.headers["Cache-Control"] == "no-store"


def test_card_detail_names_the_facts_used(app, client):
    """The eGFR card shows value, unit, date, source resource and measured/computed."""
    body = voclosporin_request(app, "ln-initiation-low-egfr-high-bp")
    card = client.post(SIGN, json=body).json["cards"][1]
    assert "42 mL/min" in card["detail"]
    assert "measured" in card["detail"]
    assert "Observation/" in card["detail"]
    assert str(TODAY.year) in card["detail"]
    assert card["source"]["url"].startswith("https://dailymed.nlm.nih.gov/")


def test_moderate_inhibitor_update_is_a_full_resource(app, client):
    """The dose-change suggestion carries the whole draft MedicationRequest, new dosage."""
    patient_id, resources = chart("ln-initiation-clean")
    diltiazem = {
        "resourceType": "MedicationRequest",
        "id": "dilt",
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {"text": "diltiazem 120 MG Extended Release"},
    }
    draft = voclosporin_draft_order(patient_id, TODAY)
    body = hook_request(
        "order-sign",
        patient_id,
        [draft],
        prefetch_for([*resources, diltiazem], patient_id, templates(app)),
    )
    cards = client.post(SIGN, json=body).json["cards"]
    card = next(c for c in cards if c["source"]["topic"]["code"] == "moderate-cyp3a4-inhibitor")
    action = card["suggestions"][0]["actions"][0]
    assert action["type"] == "update"
    resource = action["resource"]
    assert resource["id"] == draft["id"]
    assert resource["medicationCodeableConcept"] == draft["medicationCodeableConcept"]
    doses = [
        (d["doseAndRate"][0]["doseQuantity"]["value"], d["timing"]["repeat"]["when"])
        for d in resource["dosageInstruction"]
    ]
    assert doses == [(15.8, ["MORN"]), (7.9, ["EVE"])]
    assert card["selectionBehavior"] == "at-most-one"


def test_update_rewrites_its_own_draft_when_draft_ids_repeat(app, client):
    """Two drafts sharing an id: the dose change rewrites the voclosporin draft, not the other."""
    patient_id, resources = chart("ln-initiation-clean")
    draft = voclosporin_draft_order(patient_id, TODAY)
    diltiazem = {
        "resourceType": "MedicationRequest",
        "id": draft["id"],
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {"text": "diltiazem 120 MG Extended Release"},
    }
    body = hook_request(
        "order-sign",
        patient_id,
        [diltiazem, draft],
        prefetch_for(resources, patient_id, templates(app)),
    )
    cards = client.post(SIGN, json=body).json["cards"]
    card = next(c for c in cards if c["source"]["topic"]["code"] == "moderate-cyp3a4-inhibitor")
    [resource] = [
        a["resource"] for s in card["suggestions"] for a in s["actions"] if a["type"] == "update"
    ]
    assert resource["medicationCodeableConcept"] == draft["medicationCodeableConcept"]


@pytest.mark.parametrize(
    ("hook", "checked"),
    [("order-select", False), ("order-sign", True), ("medication-prescribe", True)],
)
def test_a_dose_not_yet_entered_is_checked_except_at_order_select(app, client, hook, checked):
    """order-select may fire before the dose is entered: only the other hooks ask for one."""
    body = voclosporin_request(app, "ln-initiation-clean", hook)
    context = body["context"]
    bundle = context.get("draftOrders") or context["medications"]
    bundle["entry"][0]["resource"].pop("dosageInstruction")
    response = client.post(f"/cds-services/voclosporin-{hook}", json=body)
    assert response.status_code == 200, response.json
    assert ("dose-check" in rule_ids(response)) is checked


def test_no_voclosporin_gives_empty_cards(app, client):
    """An unrelated order for a patient not on voclosporin: {"cards": []}."""
    patient_id, resources = chart("ln-initiation-clean")
    lisinopril = {
        "resourceType": "MedicationRequest",
        "id": "l1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {"text": "lisinopril 10 MG Oral Tablet"},
    }
    body = hook_request(
        "order-sign", patient_id, [lisinopril], prefetch_for(resources, patient_id, templates(app))
    )
    assert client.post(SIGN, json=body).json == {"cards": []}


# -- prefetch versus fetch ----------------------------------------------------------------------


def serve_chart(
    mocked: responses.RequestsMock, app, patient_id: str, resources, page_size: int = 0
) -> None:
    """Answer the service's own templates from ``resources`` like a FHIR server would."""
    for key, template in templates(app).items():
        query = template.replace("{{context.patientId}}", patient_id)
        bundle = prefetch_for(resources, patient_id, {key: template})[key]
        url = f"{FHIR}/{query}"
        if bundle is None:
            mocked.get(url, status=404, json={"resourceType": "OperationOutcome", "issue": []})
            continue
        if (
            page_size
            and bundle.get("resourceType") == "Bundle"
            and len(bundle.get("entry", [])) > page_size
        ):
            first, rest = copy.deepcopy(bundle), copy.deepcopy(bundle)
            first["entry"], rest["entry"] = bundle["entry"][:page_size], bundle["entry"][page_size:]
            first["link"] = [{"relation": "next", "url": f"{FHIR}/page2/{key}"}]
            mocked.get(f"{FHIR}/page2/{key}", json=rest)
            bundle = first
        mocked.get(
            url,
            json=bundle,
            match=[responses.matchers.header_matcher({"Authorization": "Bearer secret-token"})],
        )


def comparable(cards) -> list[tuple[str, str, str]]:
    return [(c["source"]["topic"]["code"], c["indicator"], c["summary"]) for c in cards]


@pytest.mark.parametrize("name", ["ln-renewal-egfr-25pct", "ln-initiation-missing-labs"])
def test_fetched_chart_gives_same_cards_as_prefetch(tmp_path, name):
    """No prefetch + fhirServer/token: the service fetches (with paging) and answers the same."""
    app = make_app(tmp_path, CDS_FHIR_ALLOWED_SERVERS=FHIR)
    try:
        client = app.test_client()
        patient_id, resources = chart(name)
        drafts = [voclosporin_draft_order(patient_id, TODAY)]
        with_prefetch = client.post(
            SIGN,
            json=hook_request(
                "order-sign",
                patient_id,
                drafts,
                prefetch_for(resources, patient_id, templates(app)),
            ),
        )
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
            serve_chart(mocked, app, patient_id, resources, page_size=1)
            fetched = client.post(
                SIGN,
                json=hook_request(
                    "order-sign", patient_id, drafts, fhir_server=FHIR, token="secret-token"
                ),
            )
            assert any("page2" in call.request.url for call in mocked.calls)
        assert fetched.status_code == 200
        assert comparable(fetched.json["cards"]) == comparable(with_prefetch.json["cards"])
    finally:
        close_app(app)


def test_operation_outcome_in_prefetch_is_refetched(tmp_path):
    """A prefetch key holding an OperationOutcome is fetched from the FHIR server."""
    app = make_app(tmp_path, CDS_FHIR_ALLOWED_SERVERS=FHIR)
    try:
        patient_id, resources = chart("ln-initiation-low-egfr-high-bp")
        prefetch = prefetch_for(resources, patient_id, templates(app))
        prefetch["egfr"] = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "timeout"}],
        }
        with responses.RequestsMock() as mocked:
            egfr_query = templates(app)["egfr"].replace("{{context.patientId}}", patient_id)
            mocked.get(
                f"{FHIR}/{egfr_query}",
                json=prefetch_for(resources, patient_id, {"egfr": templates(app)["egfr"]})["egfr"],
            )
            response = app.test_client().post(
                SIGN,
                json=hook_request(
                    "order-sign",
                    patient_id,
                    [voclosporin_draft_order(patient_id, TODAY)],
                    prefetch,
                    fhir_server=FHIR,
                    token="secret-token",
                ),
            )
        assert "egfr-baseline-low" in rule_ids(response)
    finally:
        close_app(app)


def test_fetch_failure_is_said_on_a_card(tmp_path):
    """A 500 from the FHIR server for the labs: data-unavailable, no false 'eGFR missing'."""
    app = make_app(tmp_path, CDS_FHIR_ALLOWED_SERVERS=FHIR)
    try:
        patient_id, resources = chart("ln-initiation-clean")
        prefetch = prefetch_for(resources, patient_id, templates(app))
        del prefetch["egfr"]
        with responses.RequestsMock() as mocked:
            mocked.get(f"{FHIR}/Observation", status=500)
            response = app.test_client().post(
                SIGN,
                json=hook_request(
                    "order-sign",
                    patient_id,
                    [voclosporin_draft_order(patient_id, TODAY)],
                    prefetch,
                    fhir_server=FHIR,
                    token="secret-token",
                ),
            )
        assert response.status_code == 200
        ids = rule_ids(response)
        assert "data-unavailable" in ids
        assert "egfr-baseline-missing" not in ids
        card = response.json["cards"][ids.index("data-unavailable")]
        assert "egfr: FHIR server error (HTTP 500)" in card["detail"]
    finally:
        close_app(app)


def test_missing_required_prefetch_without_server_is_412(app, client):
    """Patient or medications neither prefetched nor fetchable: 412 naming every missing key."""
    patient_id, resources = chart("ln-initiation-clean")
    prefetch = prefetch_for(resources, patient_id, templates(app))
    del prefetch["medications"], prefetch["allergies"]
    response = client.post(
        SIGN,
        json=hook_request(
            "order-sign", patient_id, [voclosporin_draft_order(patient_id, TODAY)], prefetch
        ),
    )
    assert response.status_code == 412
    assert sorted(response.json["error"]["missingPrefetch"]) == ["allergies", "medications"]


def test_missing_optional_prefetch_is_said_on_a_card(app, client):
    """A lab key neither prefetched nor fetchable: the checks that can run still answer."""
    patient_id, resources = chart("ln-initiation-low-egfr-high-bp")
    prefetch = prefetch_for(resources, patient_id, templates(app))
    del prefetch["potassium"]
    response = client.post(
        SIGN,
        json=hook_request(
            "order-sign", patient_id, [voclosporin_draft_order(patient_id, TODAY)], prefetch
        ),
    )
    ids = rule_ids(response)
    assert ids[:2] == ["blood-pressure-high", "egfr-baseline-low"]
    assert "hyperkalemia" not in ids
    card = response.json["cards"][ids.index("data-unavailable")]
    assert "potassium: not prefetched" in card["detail"]
    assert "hyperkalemia: not run" in card["detail"]


@pytest.mark.parametrize("key", ["medicationStatements", "medicationDispenses"])
def test_outside_medications_not_offered_are_no_warning(app, client, key):
    """An EHR that neither sends statements/dispenses nor passes fhirServer does not offer them:
    the checks run on the orders, with no data-unavailable card on every call."""
    patient_id, resources = chart("ln-initiation-clean")
    prefetch = prefetch_for(resources, patient_id, templates(app))
    del prefetch[key]
    response = client.post(
        SIGN,
        json=hook_request(
            "order-sign", patient_id, [voclosporin_draft_order(patient_id, TODAY)], prefetch
        ),
    )
    assert response.status_code == 200
    assert "data-unavailable" not in rule_ids(response)


def test_outside_medications_sent_as_an_error_are_said(app, client):
    """A statements key sent as an OperationOutcome is data that could not be obtained."""
    patient_id, resources = chart("ln-initiation-clean")
    prefetch = prefetch_for(resources, patient_id, templates(app))
    prefetch["medicationStatements"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception"}],
    }
    card = _data_unavailable_card(client, patient_id, prefetch)
    assert "medicationStatements" in card["detail"]


def test_error_outcome_inside_a_search_bundle_is_not_no_data(app, client):
    """An allergy search that failed (error OperationOutcome entry) is not 'no allergies'."""
    patient_id, resources = chart("ln-initiation-clean")
    prefetch = prefetch_for(resources, patient_id, templates(app))
    prefetch["allergies"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {"severity": "error", "code": "exception", "diagnostics": "backend down"}
                    ],
                },
                "search": {"mode": "outcome"},
            }
        ],
    }
    card = _data_unavailable_card(client, patient_id, prefetch)
    assert "backend down" in card["detail"]
    assert "hypersensitivity: not run" in card["detail"]


def test_null_prefetch_means_no_data_not_an_error(app, client):
    """A null prefetch value is 'the EHR has none': the rules say so, no 412."""
    patient_id, resources = chart("ln-initiation-clean")
    prefetch = prefetch_for(resources, patient_id, templates(app))
    prefetch["bloodPressure"] = None
    response = client.post(
        SIGN,
        json=hook_request(
            "order-sign", patient_id, [voclosporin_draft_order(patient_id, TODAY)], prefetch
        ),
    )
    assert "blood-pressure-missing" in rule_ids(response)


def test_disallowed_fhir_server_is_never_contacted(tmp_path):
    """A fhirServer outside the allowlist gets no request (and no token): 412."""
    app = make_app(tmp_path, CDS_FHIR_ALLOWED_SERVERS=FHIR)
    try:
        patient_id, _ = chart("ln-initiation-clean")
        with responses.RequestsMock() as mocked:
            response = app.test_client().post(
                SIGN,
                json=hook_request(
                    "order-sign",
                    patient_id,
                    [voclosporin_draft_order(patient_id, TODAY)],
                    fhir_server="https://attacker.example.net/fhir",
                    token="secret-token",
                ),
            )
            assert len(mocked.calls) == 0
        assert response.status_code == 412
        assert "not allowed" in response.json["error"]["detail"]
    finally:
        close_app(app)


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.pop("hookInstance"), "hookInstance"),
        (lambda b: b.update(hookInstance="not-a-uuid"), "hookInstance"),
        (lambda b: b["context"].pop("patientId"), "context.patientId"),
        (lambda b: b["context"].update(patientId="1&_include=*"), "context.patientId"),
        (
            lambda b: b["context"].update(draftOrders={"resourceType": "Patient"}),
            "context.draftOrders",
        ),
        (
            lambda b: b.update(
                fhirAuthorization={
                    "access_token": "t",
                    "token_type": "Bearer",
                    "expires_in": 60,
                    "scope": "s",
                    "subject": "c",
                }
            ),
            "fhirServer",
        ),
        (lambda b: b.update(hook="order-select"), "hook"),
        (lambda b: b.update(prefetch={"patient": "Patient/1"}), "prefetch.patient"),
    ],
    ids=[
        "no-hookInstance",
        "bad-hookInstance",
        "no-patientId",
        "injected-patientId",
        "draftOrders-not-bundle",
        "auth-without-server",
        "wrong-hook",
        "prefetch-string",
    ],
)
def test_malformed_request_is_400_naming_the_field(client, mutate, field):
    """A request that breaks the spec gets 400 with the offending field named."""
    body = hook_request("order-sign", "p1", [voclosporin_draft_order("p1", TODAY)], {})
    mutate(body)
    response = client.post(SIGN, json=body)
    assert response.status_code == 400
    assert field in response.json["error"]["fields"], response.json


def test_selection_not_in_draft_orders_is_400(client):
    """order-select selections must reference draftOrders entries."""
    body = hook_request(
        "order-select",
        "p1",
        [voclosporin_draft_order("p1", TODAY)],
        {},
        selections=["MedicationRequest/elsewhere"],
    )
    response = client.post("/cds-services/voclosporin-order-select", json=body)
    assert response.json["error"]["fields"]["context.selections"]


def test_unknown_service_is_404(client):
    """An unknown service id is a JSON 404."""
    response = client.post("/cds-services/nope", json={})
    assert response.status_code == 404
    assert "nope" in response.json["error"]["detail"]


def test_unknown_service_404_lists_the_discovery_ids(client):
    """The 404 for an unknown id lists the ids discovery offers, in discovery order."""
    discovered = list(dict.fromkeys(s["id"] for s in client.get("/cds-services").json["services"]))

    response = client.post("/cds-services/voclosporin-safety", json={})

    assert response.status_code == 404
    assert response.json["error"]["services"] == discovered
    assert ORDERS_SERVICE_ID in discovered


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        ("{", "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        ("[]", "application/json", 400),
        ("hook=x", "application/x-www-form-urlencoded", 415),
    ],
    ids=["broken-json", "not-utf8", "array", "form"],
)
def test_unparseable_body(client, data, content_type, status):
    """Broken JSON, non-UTF-8, wrong shape or type: clear 4xx JSON, never a traceback."""
    response = client.post(SIGN, data=data, content_type=content_type)
    assert response.status_code == status
    assert "error" in response.json
    assert b"Traceback" not in response.data


def test_body_too_large_is_413(tmp_path):
    """Bodies over MAX_CONTENT_LENGTH are refused with a JSON 413."""
    app = make_app(tmp_path, MAX_CONTENT_LENGTH=1000)
    try:
        response = app.test_client().post(SIGN, data="x" * 2000, content_type="application/json")
        assert response.status_code == 413
        assert response.json["error"]["status"] == 413
    finally:
        close_app(app)


def test_wrong_method_is_json_405(client):
    """GET on a service endpoint: 405 with a JSON body."""
    response = client.get(SIGN)
    assert response.status_code == 405
    assert response.json["error"]["status"] == 405


# -- feedback ------------------------------------------------------------------------------------


def issue_card(app, client) -> dict[str, Any]:
    body = voclosporin_request(app, "ln-on-voclosporin-interactions")
    cards = client.post(SIGN, json=body).json["cards"]
    app.extensions["cds_audit_writer"].flush(5.0)
    return cards[0]


def test_feedback_is_stored_once(app, client):
    """Spec-valid feedback on an issued card: 200, and the same post twice stores once."""
    card = issue_card(app, client)
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": card["overrideReasons"][2], "userComment": "benefit"},
                "outcomeTimestamp": "2026-11-01T12:05:00Z",
            }
        ]
    }
    first = client.post(f"{SIGN}/feedback", json=feedback)
    second = client.post(f"{SIGN}/feedback", json=feedback)
    assert (first.status_code, first.json) == (200, {"received": 1, "stored": 1})
    assert second.json == {"received": 1, "stored": 0}


def test_feedback_for_unknown_card_is_404(client):
    """A card uuid this service never issued: 404, nothing stored."""
    feedback = {
        "feedback": [
            {
                "card": "00000000-0000-4000-8000-000000000000",
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-01T12:05:00Z",
            }
        ]
    }
    response = client.post(f"{SIGN}/feedback", json=feedback)
    assert response.status_code == 404
    assert response.json["error"]["unknownCards"] == ["00000000-0000-4000-8000-000000000000"]


def test_accepted_feedback_needs_suggestions(client):
    """outcome 'accepted' without acceptedSuggestions is a 400 (spec: conditional field)."""
    feedback = {
        "feedback": [
            {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-01T12:05:00Z"}
        ]
    }
    response = client.post(f"{SIGN}/feedback", json=feedback)
    assert response.status_code == 400
    assert "feedback[0].acceptedSuggestions" in response.json["error"]["fields"]


def test_health_says_authentication_is_off(client):
    """Without CDS_JWT_ISSUERS the health output says client authentication is off."""
    body = client.get("/healthz").json
    assert body["clientAuthentication"].startswith("OFF")
    assert body["knowledgeVersion"].startswith("2026.")


def test_hook_call_is_audited_without_patient_id(app, client):
    """Each call leaves one audit record with rules fired and a keyed patient hash."""
    body = voclosporin_request(app, "ln-initiation-low-egfr-high-bp")
    client.post(SIGN, json=body)
    assert app.extensions["cds_audit_writer"].flush(5.0)
    [record] = calls_for_hook_instance(app.extensions["cds_storage"], body["hookInstance"])
    text = repr(record)
    assert "blood-pressure-high" in text
    assert body["context"]["patientId"] not in text


def test_audit_failure_never_fails_the_cards(app, client, monkeypatch):
    """A broken audit step is logged; the clinician still gets the cards."""
    import cds_service.recording as recording

    def broken(*_args):
        raise RuntimeError("audit broke")

    monkeypatch.setattr(recording, "call_record", broken)
    body = voclosporin_request(app, "ln-initiation-clean")
    response = client.post(SIGN, json=body)
    assert response.status_code == 200
    assert rule_ids(response) == ["prior-authorization"]


def test_invalid_voclosporin_draft_is_still_checked(app, client):
    """A draft order failing R4 validation is read anyway and reported: no silent all-clear."""
    patient_id, resources = chart("ln-initiation-low-egfr-high-bp")
    draft = voclosporin_draft_order(patient_id, TODAY)
    # STU3 shape (dose directly on the Dosage), as the CDS Hooks Sandbox sends it.
    dose = draft["dosageInstruction"][0].pop("doseAndRate")[0]["doseQuantity"]
    draft["dosageInstruction"][0]["doseQuantity"] = dose
    draft.pop("id")
    body = hook_request(
        "order-sign", patient_id, [draft], prefetch_for(resources, patient_id, templates(app))
    )
    cards = client.post(SIGN, json=body).json["cards"]
    ids = [c["source"]["topic"]["code"] for c in cards]
    assert ids[:3] == ["blood-pressure-high", "egfr-baseline-low", "hyperkalemia"]
    assert "dose-check" not in ids  # the STU3 dose was read: 23.7 mg twice daily
    unavailable = cards[ids.index("data-unavailable")]
    assert "invalid FHIR R4 MedicationRequest" in unavailable["detail"]
    # No id: nothing the EHR could apply a delete to, so no suggestion is offered.
    assert "suggestions" not in cards[0]


def test_referenced_medication_is_read_from_the_server(tmp_path):
    """A draft naming its drug only by Medication/id (Epic style) is resolved by a read."""
    app = make_app(tmp_path, CDS_FHIR_ALLOWED_SERVERS=FHIR)
    try:
        patient_id, resources = chart("ln-on-voclosporin-interactions")
        draft = {
            "resourceType": "MedicationRequest",
            "id": "ref-draft",
            "status": "draft",
            "intent": "order",
            "subject": {"reference": f"Patient/{patient_id}"},
            "medicationReference": {"reference": "Medication/med-77"},
        }
        with responses.RequestsMock() as mocked:
            mocked.get(
                f"{FHIR}/Medication/med-77",
                json={
                    "resourceType": "Medication",
                    "id": "med-77",
                    "code": {"text": "Clarithromycin 500 MG Oral Tablet"},
                },
            )
            response = app.test_client().post(
                SIGN,
                json=hook_request(
                    "order-sign",
                    patient_id,
                    [draft],
                    prefetch_for(resources, patient_id, templates(app)),
                    fhir_server=FHIR,
                    token="secret-token",
                ),
            )
        assert rule_ids(response) == ["strong-cyp3a4-inhibitor"]
        assert "Clarithromycin" in response.json["cards"][0]["summary"]
    finally:
        close_app(app)


def test_unresolvable_medication_reference_is_reported(app, client):
    """Without server access the unidentified drug is named on the data-unavailable card."""
    patient_id, resources = chart("ln-on-voclosporin-interactions")
    draft = {
        "resourceType": "MedicationRequest",
        "id": "ref-draft",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationReference": {"reference": "Medication/med-77"},
    }
    body = hook_request(
        "order-sign", patient_id, [draft], prefetch_for(resources, patient_id, templates(app))
    )
    response = client.post(SIGN, json=body)
    card = response.json["cards"][rule_ids(response).index("data-unavailable")]
    assert "Medication/med-77" in card["detail"]


def test_dstu2_medication_order_is_read_not_ignored(app, client):
    """medication-prescribe with a DSTU2 MedicationOrder for LUPKYNIS still gets checked."""
    patient_id, resources = chart("ln-initiation-low-egfr-high-bp")
    order = {
        "resourceType": "MedicationOrder",
        "id": "mo1",
        "status": "draft",
        "patient": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {"text": "LUPKYNIS 7.9 mg capsule"},
    }
    body = hook_request(
        "medication-prescribe",
        patient_id,
        [order],
        prefetch_for(resources, patient_id, templates(app, "medication-prescribe")),
    )
    response = client.post("/cds-services/voclosporin-medication-prescribe", json=body)
    ids = rule_ids(response)
    assert "blood-pressure-high" in ids
    card = response.json["cards"][ids.index("data-unavailable")]
    assert "MedicationOrder/mo1" in card["detail"]


# -- one id for order-select and order-sign (#update-stale-guidance) ----------------------------

ORDERS = f"/cds-services/{ORDERS_SERVICE_ID}"
PER_HOOK_IDS = [f"voclosporin-{hook}" for hook in ORDERS_SERVICE_HOOKS]


def overridden(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-01T12:05:00Z",
            }
        ]
    }


def test_discovery_lists_one_id_for_both_order_hooks(client):
    """Discovery: the shared id for order-select and order-sign, then medication-prescribe; the
    per-hook ids are not listed; the checker accepts two entries with one id."""
    services = client.get("/cds-services").json["services"]
    assert [(s["id"], s["hook"]) for s in services] == [
        (ORDERS_SERVICE_ID, "order-select"),
        (ORDERS_SERVICE_ID, "order-sign"),
        ("voclosporin-medication-prescribe", "medication-prescribe"),
    ]
    assert not {s["id"] for s in services} & set(PER_HOOK_IDS)
    assert errors_only(check_discovery({"services": services})) == []
    assert services[0]["prefetch"] == services[1]["prefetch"] == services[2]["prefetch"]


@pytest.mark.parametrize("hook", ORDERS_SERVICE_HOOKS)
def test_shared_id_answers_each_order_hook(app, client, hook):
    """The shared id answers order-select and order-sign (the body's hook picks) with the cards
    the per-hook id gives, each card with its own uuid."""
    body = voclosporin_request(app, "ln-initiation-low-egfr-high-bp", hook)
    shared = client.post(ORDERS, json=body)
    per_hook = client.post(
        f"/cds-services/voclosporin-{hook}", json={**body, "hookInstance": str(uuid.uuid4())}
    )
    assert shared.status_code == per_hook.status_code == 200, shared.json
    assert errors_only(check_response(shared.json)) == []
    assert (
        rule_ids(shared)
        == rule_ids(per_hook)
        == [
            "blood-pressure-high",
            "egfr-baseline-low",
            "hyperkalemia",
            "prior-authorization",
        ]
    )
    uuids = [card["uuid"] for response in (shared, per_hook) for card in response.json["cards"]]
    assert len(set(uuids)) == len(uuids) == 8


def test_select_then_sign_at_the_shared_id_share_no_card_uuid(app, client):
    """order-select then order-sign for one order session: one id, fresh uuids on every card."""
    cards = [
        client.post(
            ORDERS, json=voclosporin_request(app, "ln-initiation-low-egfr-high-bp", hook)
        ).json["cards"]
        for hook in ORDERS_SERVICE_HOOKS
    ]
    select_uuids = {card["uuid"] for card in cards[0]}
    sign_uuids = {card["uuid"] for card in cards[1]}
    assert select_uuids
    assert sign_uuids
    assert not select_uuids & sign_uuids


@pytest.mark.parametrize(
    ("path", "hook", "detail", "expected"),
    [
        pytest.param(
            ORDERS,
            "medication-prescribe",
            f"Service '{ORDERS_SERVICE_ID}' handles hooks 'order-select', 'order-sign', "
            "not 'medication-prescribe'",
            "must be one of 'order-select', 'order-sign' for this service",
            id="shared-id",
        ),
        pytest.param(
            SIGN,
            "order-select",
            "Service 'voclosporin-order-sign' handles hook 'order-sign', not 'order-select'",
            "must be 'order-sign' for this service",
            id="per-hook-id",
        ),
        pytest.param(
            "/cds-services/voclosporin-medication-prescribe",
            "order-sign",
            "Service 'voclosporin-medication-prescribe' handles hook 'medication-prescribe', "
            "not 'order-sign'",
            "must be 'medication-prescribe' for this service",
            id="medication-prescribe",
        ),
    ],
)
def test_hook_the_id_does_not_answer_is_400_naming_hook(app, client, path, hook, detail, expected):
    """A hook the id does not serve is a 400 whose fields name `hook`; nothing is evaluated."""
    body = voclosporin_request(app, "ln-initiation-low-egfr-high-bp", hook)
    response = client.post(path, json=body)
    assert response.status_code == 400
    assert response.json["error"]["detail"] == detail
    assert response.json["error"]["fields"] == {"hook": [expected]}


@pytest.mark.parametrize("hook", ORDERS_SERVICE_HOOKS)
def test_feedback_at_the_shared_id_for_its_cards(app, client, hook):
    """Cards issued at the shared id, by either hook, take their feedback at the shared id."""
    body = voclosporin_request(app, "ln-on-voclosporin-interactions", hook)
    card = client.post(ORDERS, json=body).json["cards"][0]
    app.extensions["cds_audit_writer"].flush(5.0)
    response = client.post(f"{ORDERS}/feedback", json=overridden(card))
    assert (response.status_code, response.json) == (200, {"received": 1, "stored": 1})


@pytest.mark.parametrize(
    ("issued_at", "feedback_at"),
    [(ORDERS, SIGN), (SIGN, ORDERS)],
    ids=["shared-card-at-per-hook-id", "per-hook-card-at-shared-id"],
)
def test_feedback_goes_to_the_id_that_issued_the_card(app, client, issued_at, feedback_at):
    """Feedback at another id than the card's is a 404 naming the card, and nothing is stored;
    at the issuing id the same feedback is then stored."""
    body = voclosporin_request(app, "ln-on-voclosporin-interactions")
    card = client.post(issued_at, json=body).json["cards"][0]
    app.extensions["cds_audit_writer"].flush(5.0)
    refused = client.post(f"{feedback_at}/feedback", json=overridden(card))
    assert refused.status_code == 404
    assert refused.json["error"]["unknownCards"] == [card["uuid"]]
    stored = client.post(f"{issued_at}/feedback", json=overridden(card))
    assert stored.json == {"received": 1, "stored": 1}


def test_shared_id_call_is_audited_and_logged_with_id_and_hook(app, client, caplog):
    """The audit record and the call log line of a shared-id call name the id and the hook."""
    body = voclosporin_request(app, "ln-initiation-clean", "order-select")
    with caplog.at_level(logging.INFO, logger="cds_service.calls"):
        assert client.post(ORDERS, json=body).status_code == 200
    assert app.extensions["cds_audit_writer"].flush(5.0)
    [record] = calls_for_hook_instance(app.extensions["cds_storage"], body["hookInstance"])
    assert (record.service_id, record.hook) == (ORDERS_SERVICE_ID, "order-select")
    formatter = json_formatter()  # the line as written with CDS_LOG_FORMAT=json
    calls = [r for r in caplog.records if r.name == "cds_service.calls"]
    [line] = [json.loads(formatter.format(r)) for r in calls]
    assert (line["service"], line["hook"], line["hookInstance"]) == (
        ORDERS_SERVICE_ID,
        "order-select",
        body["hookInstance"],
    )


def test_health_lists_every_id_that_answers(client):
    """/healthz names the shared id, medication-prescribe and the unlisted per-hook ids."""
    assert client.get("/healthz").json["services"] == sorted(
        [ORDERS_SERVICE_ID, "voclosporin-medication-prescribe", *PER_HOOK_IDS]
    )
