"""Bad input never hurts (issue 3): every malformed request is a clear JSON 4xx naming the problem,
and odd-but-valid FHIR (wrong types under a key, duplicate ids, broken references, a huge Bundle)
is handled: 200, with what could not be used reported on the data-unavailable card.

Never a 500, and never a traceback in a body.
"""

from __future__ import annotations

import copy
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import close_app
from cds_service.rules.engine import DATA_UNAVAILABLE
from tests.charts.lupus import (
    KETOCONAZOLE,
    ln_initiation_clean,
    voclosporin_draft_order,
)
from tests.conftest import FIXED_NOW, make_app
from tests.support.factories import calls_for_hook_instance
from tests.support.hooks import chart_resources, hook_request, prefetch_for

pytest_plugins = ["tests.support.databases"]

PATIENT_ID = "ln-initiation-clean"
TODAY = FIXED_NOW.date()
SIGN_URL = "/cds-services/voclosporin-order-sign"
DEFAULT_MAX_CONTENT_LENGTH = 5 * 1024 * 1024


def assert_error(response: Any, status: int) -> dict[str, Any]:
    """The response is a JSON error body with ``status`` and no internals; return the error."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text[:500]
    assert response.mimetype == "application/json"
    assert "Traceback" not in text
    assert 'File "' not in text
    error: dict[str, Any] = response.get_json()["error"]
    assert error["status"] == status
    return error


def templates(app: Flask) -> dict[str, str]:
    return dict(app.extensions["cds_service"].services["voclosporin-order-sign"].prefetch)


def full_prefetch(app: Flask) -> dict[str, Any]:
    """Prefetch for the clean lupus chart, answered the way an EHR would."""
    resources = chart_resources(ln_initiation_clean(TODAY))
    return prefetch_for(resources, PATIENT_ID, templates(app))


def sign_request(prefetch: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    return hook_request(
        "order-sign", PATIENT_ID, [voclosporin_draft_order(PATIENT_ID, TODAY)], prefetch, **extra
    )


def card_codes(response: Any) -> list[str]:
    return [card["source"]["topic"]["code"] for card in response.get_json()["cards"]]


def unavailable_detail(response: Any) -> str:
    for card in response.get_json()["cards"]:
        if card["source"]["topic"]["code"] == DATA_UNAVAILABLE:
            return str(card["detail"])
    raise AssertionError(f"no data-unavailable card among {card_codes(response)}")


# --------------------------------------------------------------------------- the body


def test_body_over_the_limit_is_413(client: FlaskClient) -> None:
    """A body one byte over MAX_CONTENT_LENGTH is refused with a JSON 413."""
    body = b" " * (DEFAULT_MAX_CONTENT_LENGTH + 1)
    assert_error(client.post(SIGN_URL, data=body, content_type="application/json"), 413)


def test_streamed_body_over_the_limit_is_413(client: FlaskClient) -> None:
    """A body without Content-Length is cut at the limit too, not read to the end."""
    stream = io.BytesIO(b" " * (DEFAULT_MAX_CONTENT_LENGTH + 1024))
    assert_error(client.post(SIGN_URL, input_stream=stream, content_type="application/json"), 413)


def test_lowered_limit_applies(tmp_path: Path) -> None:
    """MAX_CONTENT_LENGTH is the operator's setting, not a constant."""
    app = make_app(tmp_path, MAX_CONTENT_LENGTH=1024)
    try:
        body = json.dumps(sign_request(None, fhir_server="https://fhir.example.org/r4"))
        body += " " * 1024
        response = app.test_client().post(SIGN_URL, data=body, content_type="application/json")
    finally:
        close_app(app)
    assert_error(response, 413)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param("[" * 10_000 + "]" * 10_000, "nested", id="arrays-10000"),
        pytest.param('{"a":' * 10_000 + "1" + "}" * 10_000, "nested", id="objects-10000"),
        pytest.param("[" * 200_000 + "]" * 200_000, "nested", id="arrays-200000"),
    ],
)
def test_deep_json_is_400(client: FlaskClient, body: str, detail: str) -> None:
    """Deeply nested JSON is a 400, whether the parser or the depth check stops it."""
    error = assert_error(client.post(SIGN_URL, data=body, content_type="application/json"), 400)
    assert detail in error["detail"]


def _nested_extension(levels: int) -> dict[str, Any]:
    extension: dict[str, Any] = {"url": "urn:leaf", "valueString": "x"}
    for _ in range(levels):
        extension = {"url": "urn:nested", "extension": [extension]}
    return extension


@pytest.mark.parametrize("levels", [150, 400])
@pytest.mark.parametrize("where", ["patient", "egfr", "draft"])
def test_deeply_nested_extension_is_not_a_500(
    app: Flask, client: FlaskClient, where: str, levels: int
) -> None:
    """Extensions nested hundreds deep (still under the JSON parser's limit) are not a 500.

    Either the body is refused (400) or the resource is skipped and reported (200); FHIR model
    validation must not recurse until Python gives up.
    """
    body = sign_request(full_prefetch(app))
    if where == "patient":
        resource = body["prefetch"]["patient"]
    elif where == "egfr":
        resource = body["prefetch"]["egfr"]["entry"][0]["resource"]
    else:
        resource = body["context"]["draftOrders"]["entry"][0]["resource"]
    resource["extension"] = [_nested_extension(levels)]
    response = client.post(SIGN_URL, json=body)
    if response.status_code != 200:
        assert_error(response, 400)


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("text/plain", id="text-plain"),
        pytest.param("application/x-www-form-urlencoded", id="form"),
        pytest.param("application/xml", id="xml"),
        pytest.param(None, id="none"),
    ],
)
def test_wrong_content_type_is_415(client: FlaskClient, content_type: str | None) -> None:
    """Only JSON bodies are read; anything else is a 415 that says what to send."""
    body = json.dumps(sign_request(None))
    response = client.post(SIGN_URL, data=body, content_type=content_type)
    assert "application/json" in assert_error(response, 415)["detail"]


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        pytest.param('{"hook": "caf\xe9"}'.encode("latin-1"), "application/json", id="latin-1"),
        pytest.param('{"hook": "x"}'.encode("utf-16"), "application/json", id="utf-16"),
        pytest.param(b'{"hook": "\xff\xfe"}', "application/json; charset=latin-1", id="charset"),
        pytest.param(b'{"hook": "\xed\xa0\x80"}', "application/json", id="lone-surrogate"),
    ],
)
def test_non_utf8_body_is_400(client: FlaskClient, raw: bytes, content_type: str) -> None:
    """A body that is not UTF-8 is a 400 saying so, whatever charset the header claims."""
    error = assert_error(client.post(SIGN_URL, data=raw, content_type=content_type), 400)
    assert "UTF-8" in error["detail"]


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        pytest.param("[1, 2]", "must be an object", id="array"),
        pytest.param("null", "must be an object", id="null"),
        pytest.param('"order-sign"', "must be an object", id="string"),
        pytest.param('{"hook": ', "not valid JSON", id="truncated"),
        pytest.param("", "not valid JSON", id="empty"),
        pytest.param("{'hook': 'order-sign'}", "not valid JSON", id="single-quotes"),
    ],
)
def test_body_that_is_not_a_json_object_is_400(client: FlaskClient, raw: str, detail: str) -> None:
    """Only a JSON object can be a hook request; anything else is a 400 naming the problem."""
    error = assert_error(client.post(SIGN_URL, data=raw, content_type="application/json"), 400)
    assert detail in error["detail"]


# --------------------------------------------------------------------------- the request


def test_hook_mismatch_is_400_naming_hook(client: FlaskClient) -> None:
    """An order-select request sent to the order-sign service is a 400 on `hook`."""
    body = sign_request(None)
    body["hook"] = "order-select"
    error = assert_error(client.post(SIGN_URL, json=body), 400)
    assert "hook" in error["fields"]


def _drop(body: dict[str, Any], path: str) -> dict[str, Any]:
    node = body
    *parents, last = path.split(".")
    for name in parents:
        node = node[name]
    del node[last]
    return body


@pytest.mark.parametrize(
    ("hook", "dropped"),
    [
        ("order-select", "context.patientId"),
        ("order-select", "context.userId"),
        ("order-select", "context.draftOrders"),
        ("order-select", "context.selections"),
        ("order-sign", "context.patientId"),
        ("order-sign", "context.draftOrders"),
        ("medication-prescribe", "context.patientId"),
        ("medication-prescribe", "context.medications"),
        ("order-sign", "hookInstance"),
        ("order-sign", "context"),
        ("order-sign", "hook"),
    ],
)
def test_missing_field_is_400_naming_it(client: FlaskClient, hook: str, dropped: str) -> None:
    """Each required field of each hook, when missing, is a 400 that names exactly that field."""
    body = hook_request(hook, PATIENT_ID, [voclosporin_draft_order(PATIENT_ID, TODAY)], {})
    response = client.post(f"/cds-services/voclosporin-{hook}", json=_drop(body, dropped))
    error = assert_error(response, 400)
    assert dropped in error["fields"], error


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("context.patientId", "../Patient/other"),
        ("context.patientId", "a/b"),
        ("context.userId", "Organization/1"),
        ("hookInstance", "not-a-uuid"),
        ("fhirServer", "not a url"),
        ("context.draftOrders", {"resourceType": "Patient"}),
        ("context.draftOrders", {"resourceType": "Bundle", "entry": [{"resource": 1}]}),
        ("context.draftOrders", {"resourceType": "Bundle", "entry": {}}),
    ],
)
def test_bad_field_value_is_400_naming_it(client: FlaskClient, path: str, value: Any) -> None:
    """A field of the wrong shape (ids that could leave the FHIR path, bad URLs) is a named 400."""
    body = sign_request(None, fhir_server="https://fhir.example.org/r4")
    node = body
    *parents, last = path.split(".")
    for name in parents:
        node = node[name]
    node[last] = value
    error = assert_error(client.post(SIGN_URL, json=body), 400)
    assert path in error["fields"], error


@pytest.mark.parametrize(
    ("value", "named"),
    [
        pytest.param("https://fhir.example.org/r4?_format=json", "?query", id="query"),
        pytest.param("https://fhir.example.org/r4?", "?query", id="empty-query"),
        pytest.param("https://fhir.example.org/r4#top", "#fragment", id="fragment"),
        pytest.param("https://fhir.example.org/r4#", "#fragment", id="empty-fragment"),
        pytest.param("https://user:pw@fhir.example.org/r4", "user information", id="userinfo"),
        pytest.param("https://user@fhir.example.org/r4", "user information", id="user-only"),
    ],
)
def test_fhir_server_that_is_not_a_bare_base_url_is_400(
    client: FlaskClient, value: str, named: str
) -> None:
    """fhirServer with a query, fragment or user@ is a 400 saying what to remove (issue 13).

    Accepted, every search would collapse onto it and the medication list would read as empty.
    """
    body = sign_request(None, fhir_server=value, token="t-1")
    error = assert_error(client.post(SIGN_URL, json=body), 400)
    assert any(named in message for message in error["fields"]["fhirServer"]), error


def test_selections_not_in_draft_orders_is_400(client: FlaskClient) -> None:
    """order-select selections must name a draft order in the request."""
    body = hook_request(
        "order-select",
        PATIENT_ID,
        [voclosporin_draft_order(PATIENT_ID, TODAY)],
        {},
        selections=["MedicationRequest/not-in-the-bundle"],
    )
    error = assert_error(client.post("/cds-services/voclosporin-order-select", json=body), 400)
    assert "MedicationRequest/not-in-the-bundle" in error["fields"]["context.selections"][0]


def test_fhir_authorization_without_fhir_server_is_400(client: FlaskClient) -> None:
    """A token with nowhere to use it is a 400 naming fhirServer (spec: both or neither)."""
    body = sign_request(None, fhir_server="https://fhir.example.org/r4", token="t-1")
    del body["fhirServer"]
    error = assert_error(client.post(SIGN_URL, json=body), 400)
    assert "fhirServer" in error["fields"]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("Observation?patient=x", id="string"),
        pytest.param([1, 2], id="list"),
        pytest.param({"entry": []}, id="no-resourceType"),
        pytest.param(42, id="number"),
    ],
)
def test_prefetch_value_that_is_not_a_resource_is_400(
    app: Flask, client: FlaskClient, value: Any
) -> None:
    """A prefetch key holding something other than a resource or null is a 400 naming the key."""
    body = sign_request(full_prefetch(app))
    body["prefetch"]["egfr"] = value
    error = assert_error(client.post(SIGN_URL, json=body), 400)
    assert "prefetch.egfr" in error["fields"]


# --------------------------------------------------------------------------- routes


def test_unknown_service_is_404(client: FlaskClient) -> None:
    """An unknown service id is a JSON 404 naming the id, even with a broken body."""
    error = assert_error(
        client.post("/cds-services/no-such-service", data="{", content_type="application/json"),
        404,
    )
    assert "no-such-service" in error["detail"]


@pytest.mark.parametrize(
    ("method", "url", "allow"),
    [
        ("GET", SIGN_URL, "POST"),
        ("PUT", SIGN_URL, "POST"),
        ("DELETE", f"{SIGN_URL}/feedback", "POST"),
        ("GET", f"{SIGN_URL}/feedback", "POST"),
        ("POST", "/cds-services", "GET"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(
    client: FlaskClient, method: str, url: str, allow: str
) -> None:
    """A wrong method is a JSON 405 whose Allow header names the right one."""
    response = client.open(url, method=method)
    assert_error(response, 405)
    assert allow in response.headers["Allow"]


def test_unknown_path_is_json_404(client: FlaskClient) -> None:
    """Paths outside the API are JSON 404s too (no HTML error page)."""
    assert_error(client.get("/cds-services/voclosporin-order-sign/nothing-here"), 404)


# --------------------------------------------------------------------------- odd FHIR, handled


def test_huge_prefetch_bundle_is_answered(tmp_path: Path) -> None:
    """20,000 potassium results (7 MB, limit raised) still give a 200 within a bounded time."""
    app = make_app(tmp_path, MAX_CONTENT_LENGTH=64 * 1024 * 1024)
    try:
        prefetch = full_prefetch(app)
        template = prefetch["potassium"]["entry"][0]["resource"]
        entries = []
        for n in range(20_000):
            resource = copy.deepcopy(template)
            resource["id"] = f"k-{n}"
            resource["effectiveDateTime"] = f"2026-{1 + n % 10:02d}-{1 + n % 28:02d}T09:00:00Z"
            entries.append({"resource": resource, "search": {"mode": "match"}})
        prefetch["potassium"]["entry"] = entries
        raw = json.dumps(sign_request(prefetch))
        started = time.monotonic()
        response = app.test_client().post(SIGN_URL, data=raw, content_type="application/json")
        elapsed = time.monotonic() - started
    finally:
        close_app(app)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert len(raw) > DEFAULT_MAX_CONTENT_LENGTH
    # About 5 s on an idle 2-core machine (each picked result is validated with pydantic); the
    # bound catches quadratic work, not the constant.
    assert elapsed < 30, f"20,000 Observations took {elapsed:.1f} s"


def test_huge_prefetch_over_the_default_limit_is_413(app: Flask, client: FlaskClient) -> None:
    """The same huge Bundle under the default limit is a clean 413, not a slow 200 or a 500."""
    prefetch = full_prefetch(app)
    template = prefetch["potassium"]["entry"][0]["resource"]
    prefetch["potassium"]["entry"] = [
        {"resource": {**template, "id": f"k-{n}"}} for n in range(20_000)
    ]
    assert_error(client.post(SIGN_URL, json=sign_request(prefetch)), 413)


def test_wrong_resource_type_under_a_key_is_reported(app: Flask, client: FlaskClient) -> None:
    """A Condition under `egfr` and an Observation as `patient` are skipped and named."""
    prefetch = full_prefetch(app)
    observation = prefetch["potassium"]["entry"][0]["resource"]
    condition = prefetch["conditions"]["entry"][0]["resource"]
    prefetch["egfr"]["entry"].append({"resource": condition})
    prefetch["patient"] = observation
    response = client.post(SIGN_URL, json=sign_request(prefetch))
    assert response.status_code == 200
    detail = unavailable_detail(response)
    assert f"Condition/{condition['id']}" in detail
    assert "not expected under 'egfr'" in detail
    assert f"Observation/{observation['id']}" in detail
    assert "not expected under 'patient'" in detail


def test_repeated_entries_are_counted_once(app: Flask, client: FlaskClient) -> None:
    """The same resource twice (paging overlap) neither fails the call nor changes the answer."""
    clean = client.post(SIGN_URL, json=sign_request(full_prefetch(app)))
    prefetch = full_prefetch(app)
    for key in ("medications", "egfr", "conditions", "bloodPressure"):
        prefetch[key]["entry"] = prefetch[key]["entry"] * 2
    doubled = client.post(SIGN_URL, json=sign_request(prefetch))
    assert doubled.status_code == 200
    assert card_codes(doubled) == card_codes(clean)


def test_conflicting_duplicate_ids_do_not_hide_an_interaction(
    app: Flask, client: FlaskClient
) -> None:
    """Two different MedicationRequests sharing an id: the ketoconazole one is not silently lost."""
    prefetch = full_prefetch(app)
    first = prefetch["medications"]["entry"][0]["resource"]
    second = copy.deepcopy(first)
    second["medicationCodeableConcept"] = {"text": KETOCONAZOLE.text}
    prefetch["medications"]["entry"].append({"resource": second})
    response = client.post(SIGN_URL, json=sign_request(prefetch))
    assert response.status_code == 200
    codes = card_codes(response)
    reported = DATA_UNAVAILABLE in codes and f"MedicationRequest/{first['id']}" in (
        unavailable_detail(response)
    )
    assert "strong-cyp3a4-inhibitor" in codes or reported, codes


def test_broken_medication_reference_is_reported(app: Flask, client: FlaskClient) -> None:
    """A MedicationRequest whose Medication is not in the chart is named as unidentified."""
    prefetch = full_prefetch(app)
    broken = copy.deepcopy(prefetch["medications"]["entry"][0]["resource"])
    broken["id"] = "broken-reference-1"
    del broken["medicationCodeableConcept"]
    broken["medicationReference"] = {"reference": "Medication/not-in-the-chart"}
    prefetch["medications"]["entry"].append({"resource": broken})
    response = client.post(SIGN_URL, json=sign_request(prefetch))
    assert response.status_code == 200
    assert "MedicationRequest/broken-reference-1" in unavailable_detail(response)


def test_resolved_medication_reference_is_used(app: Flask, client: FlaskClient) -> None:
    """A medicationReference to a Medication in the same key identifies the drug (the control)."""
    prefetch = full_prefetch(app)
    request = copy.deepcopy(prefetch["medications"]["entry"][0]["resource"])
    request["id"] = "by-reference-1"
    del request["medicationCodeableConcept"]
    request["medicationReference"] = {"reference": "Medication/keto"}
    medication = {"resourceType": "Medication", "id": "keto", "code": {"text": KETOCONAZOLE.text}}
    prefetch["medications"]["entry"] += [{"resource": request}, {"resource": medication}]
    response = client.post(SIGN_URL, json=sign_request(prefetch))
    assert response.status_code == 200
    assert "strong-cyp3a4-inhibitor" in card_codes(response)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        pytest.param("valueQuantity.value", 10**400, id="huge-integer"),
        pytest.param("valueQuantity.value", -(10**400), id="huge-negative"),
        pytest.param("valueQuantity.value", 1e308, id="largest-float"),
        pytest.param("effectiveDateTime", "0001-01-01T00:00:00+14:00", id="year-1-east"),
        pytest.param("effectiveDateTime", "9999-12-31T23:59:59-14:00", id="year-9999-west"),
        pytest.param("effectiveDateTime", "2026-02-30T09:00:00Z", id="30-february"),
        pytest.param("effectiveDateTime", "2026-13", id="month-13"),
        pytest.param("effectiveDateTime", "0000", id="year-0"),
        pytest.param("valueQuantity", None, id="null-quantity"),
        pytest.param("code", "2823-3", id="code-as-string"),
    ],
)
def test_extreme_values_in_a_lab_are_handled(
    app: Flask, client: FlaskClient, where: str, value: Any
) -> None:
    """Huge numbers and out-of-range dates in an eGFR are skipped or used, never a 500."""
    prefetch = full_prefetch(app)
    node = prefetch["egfr"]["entry"][0]["resource"]
    *parents, last = where.split(".")
    for name in parents:
        node = node[name]
    node[last] = value
    response = client.post(SIGN_URL, json=sign_request(prefetch))
    text = response.get_data(as_text=True)
    assert response.status_code == 200, text[:300]
    assert "Traceback" not in text


def test_clean_chart_gives_no_gap(app: Flask, client: FlaskClient) -> None:
    """The control for the cases above: the untouched chart gives no data-unavailable card."""
    response = client.post(SIGN_URL, json=sign_request(full_prefetch(app)))
    assert response.status_code == 200
    assert card_codes(response) == ["prior-authorization"]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    """The service with default limits and no FHIR server."""
    application = make_app(tmp_path)
    yield application
    close_app(application)


# ----------------------------------------------------------------- feedback text (issue 13)

FEEDBACK_URL = f"{SIGN_URL}/feedback"


def _issued_card(app: Flask, client: FlaskClient) -> dict[str, Any]:
    """Issue a real card (the prior-authorization card of the clean chart) and let it land."""
    response = client.post(SIGN_URL, json=sign_request(full_prefetch(app)))
    app.extensions["cds_audit_writer"].flush(5.0)
    card: dict[str, Any] = response.get_json()["cards"][0]
    return card


def _overridden(card_uuid: str, timestamp: str = "2026-11-01T12:05:00Z", **extra: Any) -> str:
    """A feedback body as raw JSON text, so lone surrogates survive (json.dumps escapes them)."""
    item = {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": timestamp, **extra}
    return json.dumps({"feedback": [item]})


@pytest.mark.parametrize(
    ("where", "card", "extra"),
    [
        pytest.param("card", "\ud800", {}, id="lone-surrogate-in-card-id"),
        pytest.param("card", "abc\u0000", {}, id="nul-in-card-id"),
        pytest.param(
            "overrideReason.userComment",
            None,
            {"overrideReason": {"userComment": "benefit \udfff"}},
            id="lone-surrogate-in-comment",
        ),
        pytest.param(
            "overrideReason.userComment",
            None,
            {"overrideReason": {"userComment": "benefit\u0000"}},
            id="nul-in-comment",
        ),
    ],
)
def test_feedback_text_that_cannot_be_stored_is_400(
    app: Flask, client: FlaskClient, where: str, card: str | None, extra: dict[str, Any]
) -> None:
    """A lone surrogate or a NUL in the card id or the comment is a 400 naming it, not a 500."""
    card_uuid = card if card is not None else _issued_card(app, client)["uuid"]
    response = client.post(
        FEEDBACK_URL, data=_overridden(card_uuid, **extra), content_type="application/json"
    )
    error = assert_error(response, 400)
    assert f"feedback[0].{where}" in error["fields"]


@pytest.mark.parametrize(
    "timestamp",
    [
        pytest.param("0001-01-01T00:00:00+14:00", id="before-year-1-in-utc"),
        pytest.param("9999-12-31T23:59:59-14:00", id="after-year-9999-in-utc"),
    ],
)
def test_feedback_timestamp_outside_the_utc_range_is_400(
    app: Flask, client: FlaskClient, timestamp: str
) -> None:
    """An outcomeTimestamp that exists locally but not in UTC is a 400, not an overflow 500."""
    card = _issued_card(app, client)
    response = client.post(
        FEEDBACK_URL, data=_overridden(card["uuid"], timestamp), content_type="application/json"
    )
    error = assert_error(response, 400)
    assert "feedback[0].outcomeTimestamp" in error["fields"]


def test_feedback_comment_with_tab_and_newline_is_stored(app: Flask, client: FlaskClient) -> None:
    """The control: ordinary whitespace in a comment is fine (only NUL and surrogates are not)."""
    card = _issued_card(app, client)
    body = _overridden(card["uuid"], overrideReason={"userComment": "line one\n\tline two"})
    response = client.post(FEEDBACK_URL, data=body, content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json() == {"received": 1, "stored": 1}


def test_feedback_with_nul_is_400_on_every_database(tmp_path: Path, database_url: str) -> None:
    """PostgreSQL refuses NUL in text: the service says 400 before it gets there, on both."""
    application = make_app(tmp_path, CDS_DATABASE_URL=database_url)
    try:
        client = application.test_client()
        card = _issued_card(application, client)
        body = _overridden(card["uuid"], overrideReason={"userComment": "a\u0000b"})
        response = client.post(FEEDBACK_URL, data=body, content_type="application/json")
        error = assert_error(response, 400)
        assert "feedback[0].overrideReason.userComment" in error["fields"]
        stored = client.post(
            FEEDBACK_URL, data=_overridden(card["uuid"]), content_type="application/json"
        )
        assert stored.get_json() == {"received": 1, "stored": 1}
    finally:
        close_app(application)


# --------------------------------------------------------------------------- bounds (issue 13)


def _drafts(count: int) -> list[dict[str, Any]]:
    """``count`` voclosporin draft orders with distinct ids."""
    return [voclosporin_draft_order(PATIENT_ID, TODAY, f"draft-{n}") for n in range(count)]


@pytest.mark.parametrize(
    ("hook", "count", "status"),
    [
        pytest.param("order-sign", 3, 200, id="sign-at-the-cap"),
        pytest.param("order-sign", 4, 413, id="sign-one-over-the-cap"),
        pytest.param("medication-prescribe", 4, 413, id="prescribe-one-over-the-cap"),
    ],
)
def test_draft_orders_over_the_cap_are_413(
    tmp_path: Path, hook: str, count: int, status: int
) -> None:
    """More drafts than CDS_MAX_DRAFT_ORDERS: a 413 JSON error naming the field and the cap."""
    application = make_app(tmp_path, CDS_MAX_DRAFT_ORDERS=3)
    try:
        body = hook_request(hook, PATIENT_ID, _drafts(count), full_prefetch(application))
        service = (
            "voclosporin-medication-prescribe" if hook != "order-sign" else "voclosporin-order-sign"
        )
        response = application.test_client().post(f"/cds-services/{service}", json=body)
        if status == 200:
            assert response.status_code == 200, response.get_data(as_text=True)[:300]
            return
        error = assert_error(response, 413)
        field = "context.medications" if hook == "medication-prescribe" else "context.draftOrders"
        assert error["fields"] == {field: ["at most 3 entries"]}
        assert (error["limit"], error["count"]) == (3, 4)
        assert "CDS_MAX_DRAFT_ORDERS" in error["detail"]
    finally:
        close_app(application)


def test_default_draft_order_cap_refuses_a_flood(client: FlaskClient, app: Flask) -> None:
    """The default cap (100) refuses 101 drafts: the 5 MiB body of drafts costs no CPU now."""
    body = sign_request(full_prefetch(app))
    body["context"]["draftOrders"]["entry"] = [{"resource": r} for r in _drafts(101)]
    started = time.monotonic()
    error = assert_error(client.post(SIGN_URL, json=body), 413)
    assert error["limit"] == 100
    assert time.monotonic() - started < 5


def _keto_by_reference(application: Flask) -> dict[str, Any]:
    """The clean chart plus ketoconazole by reference: strong-inhibitor and prior-auth cards."""
    prefetch = full_prefetch(application)
    request = copy.deepcopy(prefetch["medications"]["entry"][0]["resource"])
    request["id"] = "by-reference-1"
    del request["medicationCodeableConcept"]
    request["medicationReference"] = {"reference": "Medication/keto"}
    medication = {"resourceType": "Medication", "id": "keto", "code": {"text": KETOCONAZOLE.text}}
    prefetch["medications"]["entry"] += [{"resource": request}, {"resource": medication}]
    return sign_request(prefetch)


def test_answer_with_more_cards_than_the_cap_is_refused(tmp_path: Path) -> None:
    """More cards than CDS_MAX_CARDS: a 413 naming the cap, no cards, nothing audited."""
    application = make_app(tmp_path, CDS_MAX_CARDS=1)
    try:
        client = application.test_client()
        at_cap = client.post(SIGN_URL, json=sign_request(full_prefetch(application)))
        assert card_codes(at_cap) == ["prior-authorization"]
        refused_body = _keto_by_reference(application)
        error = assert_error(client.post(SIGN_URL, json=refused_body), 413)
        assert error["limit"] == 1
        assert error["count"] >= 2
        assert "CDS_MAX_CARDS" in error["detail"]
        assert application.extensions["cds_audit_writer"].flush(5.0)
        storage = application.extensions["cds_storage"]
        assert calls_for_hook_instance(storage, refused_body["hookInstance"]) == []
    finally:
        close_app(application)


def test_header_over_the_service_limit_is_a_json_431(client: FlaskClient) -> None:
    """A header line over MAX_HEADER_FIELD_BYTES: the JSON 431 naming the header."""
    from cds_service.app import MAX_HEADER_FIELD_BYTES

    response = client.post(
        SIGN_URL, json={}, headers={"Authorization": "Bearer " + "a" * MAX_HEADER_FIELD_BYTES}
    )
    error = assert_error(response, 431)
    assert "Authorization" in error["detail"]


# -- orjson on the hot path (issue 14): the same answers as the standard json module ---------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b'{"n": 18446744073709551616}', float(2**64), id="int-beyond-64-bits"),
        pytest.param(b'{"n": -9223372036854775809}', -float(2**63 + 1), id="int-below-int64"),
        pytest.param(b'{"n": 1e400}', float("inf"), id="float-beyond-range-as-json-reads-it"),
        pytest.param(b'{"n": NaN}', None, id="nan-as-json-reads-it"),
    ],
)
def test_numbers_orjson_cannot_hold_exactly_read_as_floats(raw: bytes, expected: Any) -> None:
    """An integer beyond 64 bits is the nearest float (the mappings read every number as a
    float); what orjson refuses (NaN, 1e400) is read by the json module exactly as before."""
    from cds_service.api import parse_json

    number = parse_json(raw)["n"]
    assert isinstance(number, float)
    if expected is None:
        assert number != number  # NaN
    else:
        assert number == expected


def _cards_without_uuids(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["indicator"], c["source"]["topic"]["code"], c["summary"]) for c in body["cards"]]


@pytest.mark.parametrize("value", [2**64 + 1, 10**30, -(2**70)], ids=["2^64+1", "1e30", "-2^70"])
def test_huge_integer_gives_the_cards_the_json_module_gives(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, value: int
) -> None:
    """A lab value beyond 64 bits answers the same cards with orjson as with json alone."""
    import orjson

    prefetch = full_prefetch(app)
    prefetch["egfr"]["entry"][0]["resource"]["valueQuantity"]["value"] = value
    body = json.dumps(sign_request(prefetch))
    fast = client.post(SIGN_URL, data=body, content_type="application/json")

    def refuse(_: Any) -> Any:
        raise orjson.JSONDecodeError("forced", "", 0)

    monkeypatch.setattr("cds_service.api.orjson.loads", refuse)
    slow = client.post(SIGN_URL, data=body, content_type="application/json")
    assert fast.status_code == slow.status_code == 200
    assert _cards_without_uuids(fast.get_json()) == _cards_without_uuids(slow.get_json())


def test_answer_orjson_cannot_write_falls_back(app: Flask) -> None:
    """An answer holding an integer beyond 64 bits is still written (Flask's serialiser)."""
    from cds_service.api import respond

    with app.app_context():
        response = respond({"n": 2**70})
    assert json.loads(response.get_data()) == {"n": 2**70}
