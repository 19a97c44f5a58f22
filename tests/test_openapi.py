"""The OpenAPI contract (openapi.yaml): a valid document, complete, and true of the running service.

Real responses from the Flask test client are validated with openapi-core; the paths are compared
with the Flask url_map so the contract cannot drift; the documented examples must fit their own
schemas, and the hook examples must still be what the service answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient
from jwt.algorithms import ECAlgorithm
from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_spec_validator import validate as validate_document
from werkzeug.test import EnvironBuilder, TestResponse

from cds_service import close_app
from cds_service.contract import (
    ACCEPTED_FHIR_ID,
    ACCEPTED_USER_REFERENCE,
    ORDERS_SERVICE_HOOKS,
    ORDERS_SERVICE_ID,
    RULE_TOPIC_SYSTEM,
    SUMMARY_MAX_LENGTH,
)
from cds_service.docs import SWAGGER_UI_ASSETS
from cds_service.errors import StorageUnavailableError
from cds_service.rules.engine import RULE_IDS
from cds_service.storage import get_audit_writer, get_storage
from tests.charts.lupus import CHARTS, voclosporin_draft_order
from tests.conftest import FIXED_NOW, make_app
from tests.support.hooks import chart_resources, hook_request, prefetch_for

CONTRACT = Path(__file__).resolve().parent.parent / "openapi.yaml"
TODAY: date = FIXED_NOW.date()
HOOKS = ("order-select", "order-sign", "medication-prescribe")
# The id discovery lists for each hook (the two order hooks share one, #update-stale-guidance).
LISTED_ID = {
    "order-select": ORDERS_SERVICE_ID,
    "order-sign": ORDERS_SERVICE_ID,
    "medication-prescribe": "voclosporin-medication-prescribe",
}
PATIENT = "ln-initiation-low-egfr-high-bp"
SIGN = "/cds-services/voclosporin-order-sign"
# Flask adds these to every rule; the contract documents the methods a view implements.
AUTOMATIC_METHODS = frozenset({"HEAD", "OPTIONS"})
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CONTRACT.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def contract(document: dict[str, Any]) -> OpenAPI:
    """openapi-core over the contract; YAML bodies are parsed like schemathesis parses them."""
    config = Config(
        extra_media_type_deserializers={
            "application/yaml": lambda value, **_: yaml.safe_load(value),
            "text/css": lambda value, **_: value.decode("utf-8"),
            "text/javascript": lambda value, **_: value.decode("utf-8"),
        }
    )
    return OpenAPI.from_dict(document, config=config)


@dataclass(frozen=True)
class Exchange:
    """One request through the test client, with a fresh copy of it for openapi-core."""

    request: WerkzeugOpenAPIRequest
    response: TestResponse

    @property
    def json(self) -> Any:
        return self.response.get_json()


def exchange(client: FlaskClient, method: str, path: str, **kwargs: Any) -> Exchange:
    """Send a request; keep an unread twin because the app consumes the original body."""
    twin = EnvironBuilder(path=path, method=method, **kwargs)
    try:
        openapi_request = WerkzeugOpenAPIRequest(twin.get_request())
    finally:
        twin.close()
    # buffered: openapi-core replaces a streamed body with a tee, so the file would never close.
    return Exchange(openapi_request, client.open(path, method=method, buffered=True, **kwargs))


def conforms(contract: OpenAPI, call: Exchange, status: int) -> Any:
    """Assert the status, validate the response against the contract, return the JSON body."""
    assert call.response.status_code == status, call.response.get_data(as_text=True)[:2000]
    contract.validate_response(call.request, WerkzeugOpenAPIResponse(call.response))
    return call.json


def voclosporin_call(app: Flask, hook: str, patient_id: str = PATIENT) -> dict[str, Any]:
    """A hook request for a lupus-nephritis chart with a LUPKYNIS draft, prefetch answered."""
    resources = chart_resources(CHARTS[patient_id](TODAY))
    templates = app.extensions["cds_service"].services[f"voclosporin-{hook}"].prefetch
    return hook_request(
        hook,
        patient_id,
        [voclosporin_draft_order(patient_id, TODAY)],
        prefetch_for(resources, patient_id, templates),
    )


def issued_cards(app: Flask, client: FlaskClient) -> list[dict[str, Any]]:
    """Cards from a real order-sign call, written to the audit trail so feedback can name them."""
    response = client.post(SIGN, json=voclosporin_call(app, "order-sign"))
    assert response.status_code == 200
    assert get_audit_writer(app).flush(5.0)
    cards: list[dict[str, Any]] = response.get_json()["cards"]
    return cards


@pytest.fixture
def jwt_app(tmp_path: Path) -> Iterator[Flask]:
    """Client authentication on (an issuer whose JWK Set is a local file); no network."""
    keys = tmp_path / "jwks.json"
    # A real key: file: key sets are checked at start-up and an empty one stops it.
    public = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True)
    keys.write_text(json.dumps({"keys": [{**public, "kid": "k1"}]}), encoding="utf-8")
    application = make_app(
        tmp_path,
        CDS_JWT_ISSUERS={"https://ehr.example.org": f"file:{keys}"},
        CDS_PUBLIC_BASE_URL="https://cds.example.org",
    )
    yield application
    close_app(application)


# ----------------------------------------------------------------------- the document itself


def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    """openapi.yaml is a valid OpenAPI 3.0 document."""
    validate_document(document)
    assert document["openapi"].startswith("3.0.")


def test_contract_is_served_as_is(contract: OpenAPI, client: FlaskClient) -> None:
    """GET /openapi.yaml serves the file byte for byte, as YAML, and conforms to itself."""
    call = exchange(client, "GET", "/openapi.yaml")
    conforms(contract, call, 200)
    assert call.response.mimetype == "application/yaml"
    assert call.response.get_data() == CONTRACT.read_bytes()


def _normalised(path: str) -> str:
    """Flask ``<name>`` and OpenAPI ``{name}`` placeholders both become ``{}``."""
    return re.sub(r"<(?:[^:<>]+:)?[^<>]+>|\{[^{}]+\}", "{}", path)


def test_paths_and_methods_match_the_url_map(document: dict[str, Any], app: Flask) -> None:
    """Every route the app serves is documented, and nothing else is (static files aside)."""
    served = {
        (_normalised(rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not rule.endpoint.endswith(".static")
        for method in (rule.methods or set()) - AUTOMATIC_METHODS
    }
    documented = {
        (_normalised(path), method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert documented == served


def test_rule_topic_codes_are_the_engine_rule_ids(document: dict[str, Any]) -> None:
    """card.source.topic.code lists exactly the engine's rule ids, in the engine's order."""
    topic = document["components"]["schemas"]["RuleTopic"]["properties"]["code"]
    assert topic["enum"] == list(RULE_IDS)
    described = document["info"]["description"]
    assert all(f"`{rule_id}`" in described for rule_id in RULE_IDS)


def test_readme_rules_table_is_the_engine_registry_in_order() -> None:
    """The README's rules table lists every rule id once, in the order cards are sorted by."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("| rule id | fires when | indicator |", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"^\| ([a-z0-9-]+) \|", table, flags=re.MULTILINE)
    assert listed == list(RULE_IDS)


def test_contract_limits_are_the_contract_module(document: dict[str, Any]) -> None:
    """FhirId, UserReference, the summary limit and the topic system are cds_service.contract's."""
    schemas = document["components"]["schemas"]

    def as_openapi(pattern: re.Pattern[str]) -> str:
        return pattern.pattern.removesuffix("\\Z") + "$"

    assert schemas["FhirId"]["pattern"] == as_openapi(ACCEPTED_FHIR_ID)
    assert schemas["UserReference"]["pattern"] == as_openapi(ACCEPTED_USER_REFERENCE)
    assert schemas["Card"]["properties"]["summary"]["maxLength"] == SUMMARY_MAX_LENGTH
    assert schemas["RuleTopic"]["properties"]["system"]["enum"] == [RULE_TOPIC_SYSTEM]


def test_service_ids_and_prefetch_keys_match_discovery(
    document: dict[str, Any], app: Flask
) -> None:
    """The serviceId enum is every id that answers, Service.id the listed ones, and the
    Prefetch properties are every entry's template keys."""
    services = app.extensions["cds_service"].services
    schemas = document["components"]["schemas"]
    assert document["components"]["parameters"]["ServiceId"]["schema"]["enum"] == list(services)
    listed = [service.id for service in services.values() if service.listed]
    assert schemas["Service"]["properties"]["id"]["enum"] == listed
    assert listed == [ORDERS_SERVICE_ID, "voclosporin-medication-prescribe"]
    for service in services.values():
        for entry in service.entries.values():
            assert list(schemas["Prefetch"]["properties"]) == list(entry.prefetch)


def test_discovery_example_is_what_discovery_answers(
    document: dict[str, Any], client: FlaskClient
) -> None:
    """The Discovery example is the real discovery document: two entries share the order id."""
    example = _resolve(document, {"$ref": "#/components/examples/Discovery"})["value"]
    assert example == client.get("/cds-services").get_json()
    assert [(s["id"], s["hook"]) for s in example["services"]] == [
        (ORDERS_SERVICE_ID, "order-select"),
        (ORDERS_SERVICE_ID, "order-sign"),
        ("voclosporin-medication-prescribe", "medication-prescribe"),
    ]


def test_swagger_ui_assets_match_the_docs_blueprint(document: dict[str, Any]) -> None:
    """The documented asset names are exactly the files /docs serves."""
    parameter = document["paths"]["/docs/swagger-ui/{filename}"]["get"]["parameters"][0]
    assert set(parameter["schema"]["enum"]) == SWAGGER_UI_ASSETS


def _resolve(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _documented_examples(document: dict[str, Any]) -> Iterator[tuple[str, Any, Any]]:
    """(where, schema, example) for every media-type and schema-level example."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            bodies = [("request", operation.get("requestBody"))]
            bodies += [(status, r) for status, r in operation["responses"].items()]
            for status, body in bodies:
                content = (_resolve(document, body) or {}).get("content", {})
                for media_type, media in content.items():
                    where = f"{method.upper()} {path} {status} {media_type}"
                    if "example" in media:
                        yield where, media["schema"], media["example"]
                    for name, example in media.get("examples", {}).items():
                        yield (
                            f"{where} {name}",
                            media["schema"],
                            _resolve(document, example)["value"],
                        )
    for name, schema in document["components"]["schemas"].items():
        if "example" in schema:
            yield f"components/schemas/{name}", schema, schema["example"]


def test_examples_fit_their_schemas(document: dict[str, Any]) -> None:
    """Every documented example validates against the schema it illustrates."""
    problems = []
    examples = list(_documented_examples(document))
    for where, schema, example in examples:
        validator = OAS30Validator(
            {**schema, "components": document["components"]}, format_checker=oas30_format_checker
        )
        problems += [f"{where}: {error.message}" for error in validator.iter_errors(example)]
    assert problems == []
    assert len(examples) > 30


def test_example_validation_catches_a_bad_card(document: dict[str, Any]) -> None:
    """The example check is not vacuous: a card with an unknown indicator fails its schema."""
    validator = OAS30Validator(
        {"$ref": "#/components/schemas/HookResponse", "components": document["components"]},
        format_checker=oas30_format_checker,
    )
    example = _resolve(document, {"$ref": "#/components/examples/OrderSignCards"})["value"]
    broken = json.loads(json.dumps(example))
    broken["cards"][0]["indicator"] = "hard-stop"
    assert list(validator.iter_errors(example)) == []
    assert [e.message for e in validator.iter_errors(broken)]


@pytest.mark.parametrize(
    ("request_example", "response_example"),
    [
        ("OrderSignRequest", "OrderSignCards"),
        ("OrderSelectRequest", "OrderSelectCards"),
        ("MedicationPrescribeRequest", "MedicationPrescribeCards"),
        ("OrderSignOutsideMedicationRequest", "OrderSignOutsideMedicationCards"),
    ],
)
def test_hook_examples_are_what_the_service_answers(
    document: dict[str, Any],
    contract: OpenAPI,
    client: FlaskClient,
    request_example: str,
    response_example: str,
) -> None:
    """Posting a documented request gives the documented cards (same rules, indicators, actions)."""
    body = _resolve(document, {"$ref": f"#/components/examples/{request_example}"})["value"]
    expected = _resolve(document, {"$ref": f"#/components/examples/{response_example}"})["value"]
    call = exchange(client, "POST", f"/cds-services/{LISTED_ID[body['hook']]}", json=body)
    contract.validate_request(call.request)
    cards = conforms(contract, call, 200)["cards"]

    def shape(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            (
                card["indicator"],
                card["source"]["topic"]["code"],
                card["summary"],
                [a["type"] for s in card.get("suggestions", []) for a in s["actions"]],
            )
            for card in items
        ]

    assert shape(cards) == shape(expected["cards"])


# ----------------------------------------------------------------------- real responses


def test_discovery_conforms(contract: OpenAPI, client: FlaskClient) -> None:
    """Discovery lists one entry per hook, each with the thirteen prefetch templates."""
    body = conforms(contract, exchange(client, "GET", "/cds-services"), 200)
    assert [s["hook"] for s in body["services"]] == list(HOOKS)
    assert {s["hook"]: s["id"] for s in body["services"]} == LISTED_ID
    assert all(len(s["prefetch"]) == 13 for s in body["services"])


@pytest.mark.parametrize(
    ("service_id", "hook"),
    [
        *((LISTED_ID[hook], hook) for hook in HOOKS),
        *((f"voclosporin-{hook}", hook) for hook in ORDERS_SERVICE_HOOKS),
    ],
)
def test_each_hook_conforms(
    contract: OpenAPI, app: Flask, client: FlaskClient, service_id: str, hook: str
) -> None:
    """A LUPKYNIS order for a lupus-nephritis chart: request and cards conform on every hook,
    at the listed ids and at the unlisted per-hook ids."""
    call = exchange(client, "POST", f"/cds-services/{service_id}", json=voclosporin_call(app, hook))
    contract.validate_request(call.request)
    cards = conforms(contract, call, 200)["cards"]
    assert [card["source"]["topic"]["code"] for card in cards] == [
        "blood-pressure-high",
        "egfr-baseline-low",
        "hyperkalemia",
        "prior-authorization",
    ]
    assert call.response.headers["Cache-Control"] == "no-store"


def test_card_with_update_suggestion_conforms(
    contract: OpenAPI, app: Flask, client: FlaskClient
) -> None:
    """An egfr-decline card carrying a whole-resource update action conforms."""
    body = voclosporin_call(app, "order-sign", "ln-renewal-egfr-25pct")
    cards = conforms(contract, exchange(client, "POST", SIGN, json=body), 200)["cards"]
    actions = [a for c in cards for s in c.get("suggestions", []) for a in s["actions"]]
    assert [a["type"] for a in actions] == ["update"]
    assert actions[0]["resource"]["resourceType"] == "MedicationRequest"


def test_no_voclosporin_gives_no_cards(contract: OpenAPI, app: Flask, client: FlaskClient) -> None:
    """A draft without voclosporin and a chart with no data answers 200 with no cards."""
    draft = {
        "resourceType": "MedicationRequest",
        "id": "draft-1",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"text": "amoxicillin 500 MG Oral Capsule"},
        "subject": {"reference": "Patient/p1"},
    }
    templates = app.extensions["cds_service"].services["voclosporin-order-sign"].prefetch
    body = hook_request("order-sign", "p1", [draft], dict.fromkeys(templates))
    assert conforms(contract, exchange(client, "POST", SIGN, json=body), 200) == {"cards": []}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.__setitem__("hookInstance", "not-a-uuid"), "hookInstance"),
        (lambda b: b["context"].__setitem__("patientId", "../Patient"), "context.patientId"),
        (lambda b: b.__setitem__("hook", "order-select"), "hook"),
        (lambda b: b["context"].pop("draftOrders"), "context.draftOrders"),
        (lambda b: b["prefetch"].__setitem__("patient", ["x"]), "prefetch.patient"),
    ],
    ids=["hookInstance", "patientId", "wrong-hook", "no-draftOrders", "prefetch-not-resource"],
)
def test_bad_hook_request_is_400_naming_the_field(
    contract: OpenAPI, app: Flask, client: FlaskClient, mutate: Any, field: str
) -> None:
    """A request that breaks CDS Hooks 2.0 gets 400 with error.fields naming the field."""
    body = voclosporin_call(app, "order-sign")
    mutate(body)
    error = conforms(contract, exchange(client, "POST", SIGN, json=body), 400)["error"]
    assert field in error["fields"]


@pytest.mark.parametrize(
    "raw",
    [b"{", b"[1, 2]", b"\xff\xfe", b"[" * 100 + b"]" * 100],
    ids=["truncated", "array", "not-utf8", "too-deep"],
)
def test_unparseable_body_is_400(contract: OpenAPI, client: FlaskClient, raw: bytes) -> None:
    """A body that is not one JSON object gets 400 with a detail."""
    call = exchange(client, "POST", SIGN, data=raw, content_type="application/json")
    assert conforms(contract, call, 400)["error"]["detail"]


def test_unknown_service_is_404(contract: OpenAPI, app: Flask, client: FlaskClient) -> None:
    """An id that discovery does not list gets 404."""
    body = voclosporin_call(app, "order-sign")
    call = exchange(client, "POST", "/cds-services/warfarin-order-sign", json=body)
    error = conforms(contract, call, 404)["error"]
    assert error["detail"] == "No CDS service with id 'warfarin-order-sign'"


def test_missing_prefetch_without_server_is_412(
    contract: OpenAPI, app: Flask, client: FlaskClient
) -> None:
    """No prefetch and no fhirServer: 412 listing every prefetch key in missingPrefetch."""
    body = voclosporin_call(app, "order-sign")
    del body["prefetch"]
    error = conforms(contract, exchange(client, "POST", SIGN, json=body), 412)["error"]
    templates = app.extensions["cds_service"].services["voclosporin-order-sign"].prefetch
    assert error["missingPrefetch"] == list(templates)
    assert "no fhirServer" in error["detail"]


def test_not_json_is_415(contract: OpenAPI, client: FlaskClient) -> None:
    """A body sent as text/plain gets 415."""
    call = exchange(client, "POST", SIGN, data="hook=order-sign", content_type="text/plain")
    assert conforms(contract, call, 415)["error"]["title"] == "Unsupported Media Type"


def test_too_large_is_413(contract: OpenAPI, tmp_path: Path) -> None:
    """A body above MAX_CONTENT_LENGTH gets 413 with the JSON error body."""
    small = make_app(tmp_path, MAX_CONTENT_LENGTH=1024)
    try:
        call = exchange(
            small.test_client(), "POST", SIGN, data=b" " * 2048, content_type="application/json"
        )
        conforms(contract, call, 413)
    finally:
        close_app(small)


def test_missing_jwt_is_401_when_authentication_is_on(contract: OpenAPI, jwt_app: Flask) -> None:
    """With CDS_JWT_ISSUERS set, a call without a JWT gets a bare 401 with WWW-Authenticate."""
    body = voclosporin_call(jwt_app, "order-sign")
    client = jwt_app.test_client()
    for path in (SIGN, f"{SIGN}/feedback"):
        call = exchange(client, "POST", path, json=body)
        assert conforms(contract, call, 401) == {"error": {"status": 401, "title": "Unauthorized"}}
        assert call.response.headers["WWW-Authenticate"] == "Bearer"


# ----------------------------------------------------------------------------- feedback


def test_feedback_is_stored(contract: OpenAPI, app: Flask, client: FlaskClient) -> None:
    """Feedback on real cards is 200 {received, stored}; posting it again stores nothing new."""
    cards = issued_cards(app, client)
    card_with_suggestion = next(c for c in cards if c.get("suggestions"))
    body = {
        "feedback": [
            {
                "card": card_with_suggestion["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": card_with_suggestion["suggestions"][0]["uuid"]}],
                "outcomeTimestamp": "2026-11-01T12:02:41Z",
            },
            {
                "card": cards[-1]["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": cards[-1]["overrideReasons"][0]},
                "outcomeTimestamp": "2026-11-01T12:02:55+01:00",
            },
        ]
    }
    call = exchange(client, "POST", f"{SIGN}/feedback", json=body)
    contract.validate_request(call.request)
    assert conforms(contract, call, 200) == {"received": 2, "stored": 2}
    again = exchange(client, "POST", f"{SIGN}/feedback", json=body)
    assert conforms(contract, again, 200) == {"received": 2, "stored": 0}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"feedback": []}, "feedback"),
        (
            {
                "feedback": [
                    {"card": "c", "outcome": "ignored", "outcomeTimestamp": "2026-11-01T12:00:00Z"}
                ]
            },
            "feedback[0].outcome",
        ),
        (
            {
                "feedback": [
                    {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-01T12:00:00Z"}
                ]
            },
            "feedback[0].acceptedSuggestions",
        ),
        (
            {
                "feedback": [
                    {
                        "card": "c",
                        "outcome": "overridden",
                        "outcomeTimestamp": "2026-11-01T12:00:00",
                    }
                ]
            },
            "feedback[0].outcomeTimestamp",
        ),
    ],
    ids=["empty", "bad-outcome", "accepted-without-suggestions", "naive-timestamp"],
)
def test_bad_feedback_is_400(
    contract: OpenAPI, client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    """Feedback that breaks the CDS Hooks format gets 400 naming the field."""
    call = exchange(client, "POST", f"{SIGN}/feedback", json=body)
    assert field in conforms(contract, call, 400)["error"]["fields"]


def test_feedback_on_unknown_card_is_404(contract: OpenAPI, client: FlaskClient) -> None:
    """Feedback naming a card this service never issued gets 404 listing it in unknownCards."""
    unknown = "5f1c6b0e-2a43-4d5e-9a51-0c3a4c1e9b77"
    body = {
        "feedback": [
            {
                "card": unknown,
                "outcome": "overridden",
                "overrideReason": {"userComment": "not relevant"},
                "outcomeTimestamp": "2026-11-01T12:00:00Z",
            }
        ]
    }
    error = conforms(contract, exchange(client, "POST", f"{SIGN}/feedback", json=body), 404)
    assert error["error"]["unknownCards"] == [unknown]


def test_feedback_with_database_down_is_503(
    contract: OpenAPI, app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Feedback that cannot be stored gets 503 so the client retries."""

    def down(*_: Any) -> int:
        raise StorageUnavailableError("database unreachable")

    monkeypatch.setattr(get_storage(app), "store_feedback", down)
    body = {
        "feedback": [
            {
                "card": "c1",
                "outcome": "overridden",
                "overrideReason": {"userComment": "x"},
                "outcomeTimestamp": "2026-11-01T12:00:00Z",
            }
        ]
    }
    error = conforms(contract, exchange(client, "POST", f"{SIGN}/feedback", json=body), 503)
    assert error["error"]["detail"] == "Feedback could not be stored; please retry"


# ------------------------------------------------------------------- health and analytics


@pytest.mark.parametrize(
    ("path", "status", "mimetype"),
    [
        ("/docs", 200, "text/html"),
        ("/docs/swagger-ui/swagger-ui.css", 200, "text/css"),
        ("/docs/swagger-ui/favicon-16x16.png", 200, "image/png"),
        ("/docs/swagger-ui/index.html", 404, "application/json"),
    ],
)
def test_docs_conform(
    contract: OpenAPI, client: FlaskClient, path: str, status: int, mimetype: str
) -> None:
    """The Swagger UI page and its assets conform; other asset names are a JSON 404."""
    call = exchange(client, "GET", path)
    conforms(contract, call, status)
    assert call.response.mimetype == mimetype


def test_healthz_conforms(contract: OpenAPI, client: FlaskClient) -> None:
    """/healthz reports status, knowledge version, services and the security posture."""
    body = conforms(contract, exchange(client, "GET", "/healthz"), 200)
    assert body["status"] == "ok"
    assert body["clientAuthentication"].startswith("OFF")


def test_readyz_conforms_ready_and_not_ready(contract: OpenAPI, tmp_path: Path) -> None:
    """/readyz is 200 with its checks, and 503 naming the database when it is down."""
    ready_app = make_app(tmp_path)
    down_app = make_app(
        tmp_path / "down", CDS_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/test"
    )
    try:
        ready = conforms(contract, exchange(ready_app.test_client(), "GET", "/readyz"), 200)
        down = conforms(contract, exchange(down_app.test_client(), "GET", "/readyz"), 503)
    finally:
        close_app(ready_app)
        close_app(down_app)
    assert ready["checks"]["database"] == "ok"
    assert down["checks"]["database"].startswith("failed")


def test_analytics_conform_after_calls_and_feedback(
    contract: OpenAPI, app: Flask, client: FlaskClient
) -> None:
    """The analytics JSON and page conform once cards and feedback exist."""
    cards = issued_cards(app, client)
    body = {
        "feedback": [
            {
                "card": cards[0]["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": cards[0]["overrideReasons"][1]},
                "outcomeTimestamp": "2026-11-01T12:02:55Z",
            }
        ]
    }
    assert client.post(f"{SIGN}/feedback", json=body).status_code == 200
    rules = conforms(contract, exchange(client, "GET", "/analytics/rules"), 200)
    assert rules["totals"]["overridden"] == 1
    assert rules["rules"][0]["top_override_reasons"] or rules["rules"][1]["top_override_reasons"]
    series = conforms(contract, exchange(client, "GET", "/analytics/timeseries?bucket=week"), 200)
    assert series["bucket"] == "week"
    assert series["series"]
    page = exchange(client, "GET", "/analytics?since=2026-10-01")
    conforms(contract, page, 200)
    assert page.response.mimetype == "text/html"


@pytest.mark.parametrize(
    "query",
    ["days=0", "since=yesterday", "since=2026-01-01&days=3", "bucket=month"],
)
@pytest.mark.parametrize("path", ["/analytics/rules", "/analytics/timeseries", "/analytics"])
def test_bad_analytics_query_is_400(
    contract: OpenAPI, client: FlaskClient, path: str, query: str
) -> None:
    """A bad window or bucket gets 400 (the page answers JSON errors too)."""
    call = exchange(client, "GET", f"{path}?{query}")
    if query == "bucket=month" and path != "/analytics/timeseries":
        conforms(contract, call, 200)  # bucket is a timeseries parameter only
        return
    assert conforms(contract, call, 400)["error"]["title"].startswith("Invalid")


def test_analytics_token_is_401_without_it(contract: OpenAPI, tmp_path: Path) -> None:
    """With CDS_ANALYTICS_TOKEN set, analytics needs it (Bearer or Basic) and says so with 401."""
    guarded = make_app(tmp_path, CDS_ANALYTICS_TOKEN="s3cret")
    try:
        client = guarded.test_client()
        call = exchange(client, "GET", "/analytics/rules")
        conforms(contract, call, 401)
        assert call.response.headers["WWW-Authenticate"].startswith("Basic")
        bearer = exchange(
            client, "GET", "/analytics/rules", headers={"Authorization": "Bearer s3cret"}
        )
        conforms(contract, bearer, 200)
    finally:
        close_app(guarded)


def test_analytics_closed_when_clients_authenticate(contract: OpenAPI, jwt_app: Flask) -> None:
    """With client JWTs on and no analytics token, analytics is 403."""
    call = exchange(jwt_app.test_client(), "GET", "/analytics/rules")
    assert conforms(contract, call, 403)["error"]["title"] == "Analytics disabled"


def test_analytics_with_database_down_is_503(
    contract: OpenAPI, app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Analytics without its database gets 503 with Retry-After."""

    def down(*_: Any) -> dict[str, Any]:
        raise StorageUnavailableError("database unreachable")

    monkeypatch.setattr(get_storage(app), "rule_analytics", down)
    call = exchange(client, "GET", "/analytics/rules")
    conforms(contract, call, 503)
    assert call.response.headers["Retry-After"] == "30"


# ---------------------------------------------- structurally broken input (once 500s, now fixed)


def _malformed_prefetch(key: str, value: Any) -> Any:
    def mutate(body: dict[str, Any]) -> None:
        body["prefetch"][key] = value

    return mutate


def _malformed_draft_entry(body: dict[str, Any]) -> None:
    body["context"]["draftOrders"]["entry"][0]["search"] = "match"


def _newline_patient_id(body: dict[str, Any]) -> None:
    body["context"]["patientId"] += "\n"


@pytest.mark.parametrize(
    ("mutate", "allowed"),
    [
        pytest.param(
            _malformed_prefetch("medications", {"resourceType": "Bundle", "entry": 5}),
            {200, 400},
            id="prefetch-entry-not-a-list",
        ),
        pytest.param(
            _malformed_prefetch(
                "medications",
                {"resourceType": "Bundle", "entry": [{"resource": {}, "search": "match"}]},
            ),
            {200, 400},
            id="prefetch-entry-search-not-an-object",
        ),
        pytest.param(
            _malformed_prefetch("medications", {"resourceType": "Bundle", "link": 5}),
            {200, 400},
            id="prefetch-link-not-a-list",
        ),
        pytest.param(
            _malformed_prefetch("medications", {"resourceType": "OperationOutcome", "issue": 5}),
            {200, 400, 412},
            id="prefetch-operationoutcome-issue-not-a-list",
        ),
        pytest.param(
            _malformed_prefetch(
                "medications", {"resourceType": "OperationOutcome", "issue": [{"details": "x"}]}
            ),
            {200, 400, 412},
            id="prefetch-operationoutcome-details-not-an-object",
        ),
        pytest.param(
            _malformed_draft_entry,
            {200, 400},
            id="draft-entry-search-not-an-object",
        ),
        pytest.param(
            _newline_patient_id,
            {400},
            id="patientId-trailing-newline",
        ),
    ],
)
def test_malformed_request_gets_a_documented_answer(
    contract: OpenAPI, app: Flask, client: FlaskClient, mutate: Any, allowed: set[int]
) -> None:
    """A structurally broken FHIR Bundle or id gets a documented answer, never a 500."""
    body = voclosporin_call(app, "order-sign")
    mutate(body)
    call = exchange(client, "POST", SIGN, json=body)
    assert call.response.status_code in allowed, call.response.get_data(as_text=True)[:300]
    contract.validate_response(call.request, WerkzeugOpenAPIResponse(call.response))


@pytest.mark.parametrize(
    "since", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"], ids=["year-1", "year-9999"]
)
def test_analytics_since_out_of_range_is_400(
    contract: OpenAPI, client: FlaskClient, since: str
) -> None:
    """A since whose UTC conversion leaves the calendar gets 400, not an OverflowError 500."""
    call = exchange(client, "GET", "/analytics/rules", query_string={"since": since})
    assert conforms(contract, call, 400)["error"]["title"] == "Invalid since"
