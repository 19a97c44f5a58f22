"""Logs (issue 3): one structured line per hook call, and never a token, a JWT or a patient name.

The call under test carries everything sensitive at once: a client JWT, a fhirAuthorization
access token used against a real FHIR server on 127.0.0.1, and a patient whose name is on that
server. Every log record of every logger, at DEBUG, is searched for each secret.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient
from jwt.algorithms import ECAlgorithm

from cds_service import close_app
from cds_service.logs import TextFormatter, json_formatter
from fhir_mappings.categories import CATEGORIES
from tests.charts.lupus import ln_initiation_clean, voclosporin_draft_order
from tests.conftest import FIXED_NOW, make_app
from tests.support.faulty_fhir import FaultyFhir
from tests.support.hooks import chart_resources, hook_request

PATIENT_ID = "ln-initiation-clean"
TODAY = FIXED_NOW.date()
SIGN_PATH = "/cds-services/voclosporin-order-sign"
PUBLIC_BASE = "http://localhost"
ISSUER = "https://ehr.example.org"
KID = "log-test-key"
ACCESS_TOKEN = "fhir-access-token-SECRET-41b7e2"
FAMILY, GIVEN = "Marjoribanks-Quintavalle", "Ottoline"
CALL_FIELDS = {"hookInstance", "service", "rulesFired", "durationMs"}


@pytest.fixture(scope="module")
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def fhir() -> Iterator[FaultyFhir]:
    """A FHIR server holding the clean chart, with a patient name that must never be logged."""
    resources = copy.deepcopy(chart_resources(ln_initiation_clean(TODAY)))
    for resource in resources:
        if resource["resourceType"] == "Patient":
            resource["name"] = [{"use": "official", "family": FAMILY, "given": [GIVEN]}]
            resource["telecom"] = [{"system": "phone", "value": "+1-555-0100"}]
    with FaultyFhir(resources) as server:
        yield server


@pytest.fixture
def app(
    tmp_path: Path, fhir: FaultyFhir, signing_key: ec.EllipticCurvePrivateKey
) -> Iterator[Flask]:
    """JWTs required (file: keys, in-process replay cache) and the FHIR server allowed."""
    fhir.reset()
    jwks = tmp_path / "jwks.json"
    public = ECAlgorithm.to_jwk(signing_key.public_key(), as_dict=True)
    jwks.write_text(json.dumps({"keys": [{**public, "kid": KID, "use": "sig", "alg": "ES384"}]}))
    application = make_app(
        tmp_path,
        CDS_JWT_ISSUERS={ISSUER: f"file:{jwks}"},
        CDS_PUBLIC_BASE_URL=PUBLIC_BASE,
        CDS_REDIS_URL=None,
        CDS_FHIR_ALLOWED_SERVERS=fhir.base_url,
        CDS_REQUEST_DEADLINE_MS=2000,
    )
    yield application
    close_app(application)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def client_jwt(key: ec.EllipticCurvePrivateKey, path: str = SIGN_PATH) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": PUBLIC_BASE + path,
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": KID, "typ": "JWT"})


def fetch_body(fhir: FaultyFhir) -> dict[str, Any]:
    return hook_request(
        "order-sign",
        PATIENT_ID,
        [voclosporin_draft_order(PATIENT_ID, TODAY)],
        fhir_server=fhir.base_url,
        token=ACCESS_TOKEN,
    )


def call_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The per-call lines as the service writes them (CDS_LOG_FORMAT=json), each parsed as one
    JSON object."""
    formatter = json_formatter()
    lines = [formatter.format(r) for r in caplog.records if r.name == "cds_service.calls"]
    assert all("\n" not in line for line in lines)
    return [json.loads(line) for line in lines]


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every message, argument and traceback of every record, as one string to search."""
    parts = [caplog.text]
    for record in caplog.records:
        parts += [record.getMessage(), repr(record.args), record.exc_text or ""]
    return "\n".join(parts)


def assert_no_secrets(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret[:24]}... appears in the logs"


# --------------------------------------------------------------------------- one line per call


def test_each_call_logs_one_structured_line(
    client: FlaskClient,
    fhir: FaultyFhir,
    signing_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three calls give three JSON lines with hookInstance, service, rulesFired and durationMs."""
    bodies = [fetch_body(fhir) for _ in range(3)]
    with caplog.at_level(logging.DEBUG):
        for body in bodies:
            response = client.post(
                SIGN_PATH,
                json=body,
                headers={"Authorization": f"Bearer {client_jwt(signing_key)}"},
            )
            assert response.status_code == 200
    lines = call_lines(caplog)
    assert [line["hookInstance"] for line in lines] == [b["hookInstance"] for b in bodies]
    for line in lines:
        assert line.keys() >= CALL_FIELDS
        assert line["service"] == "voclosporin-order-sign"
        assert line["rulesFired"] == ["prior-authorization"]
        assert isinstance(line["durationMs"], int | float)
        assert line["durationMs"] > 0
        assert len(line["fetched"]) == len(CATEGORIES)


def test_rules_fired_lists_every_card(
    client: FlaskClient,
    fhir: FaultyFhir,
    signing_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """rulesFired names the rule of each card sent, data-unavailable included."""
    fhir.set_fault("500", on="Observation")
    with caplog.at_level(logging.INFO):
        response = client.post(
            SIGN_PATH,
            json=fetch_body(fhir),
            headers={"Authorization": f"Bearer {client_jwt(signing_key)}"},
        )
    sent = [card["source"]["topic"]["code"] for card in response.get_json()["cards"]]
    (line,) = call_lines(caplog)
    assert line["rulesFired"] == sent
    assert "data-unavailable" in sent
    assert sorted(line["unavailable"]) == sorted(
        ["bloodPressure", "creatinine", "egfr", "potassium", "pregnancyLactation", "upcr"]
    )


def test_refused_call_still_logs_one_line(
    client: FlaskClient,
    signing_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A call answered 412 (no prefetch, no FHIR server) still leaves its one line."""
    body = hook_request("order-sign", PATIENT_ID, [voclosporin_draft_order(PATIENT_ID, TODAY)])
    with caplog.at_level(logging.INFO):
        response = client.post(
            SIGN_PATH, json=body, headers={"Authorization": f"Bearer {client_jwt(signing_key)}"}
        )
    assert response.status_code == 412
    lines = call_lines(caplog)
    assert len(lines) == 1, "a refused call left no line in cds_service.calls"
    assert lines[0]["hookInstance"] == body["hookInstance"]
    assert lines[0]["service"] == "voclosporin-order-sign"


def _call_record(
    client: FlaskClient,
    fhir: FaultyFhir,
    signing_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> logging.LogRecord:
    """Make one signed order-sign call on the fetch path; return its call log record."""
    with caplog.at_level(logging.INFO):
        client.post(
            SIGN_PATH,
            json=fetch_body(fhir),
            headers={"Authorization": f"Bearer {client_jwt(signing_key)}"},
        )
    (record,) = [r for r in caplog.records if r.name == "cds_service.calls"]
    return record


def test_call_line_is_one_json_object_without_patient_id(
    client: FlaskClient,
    fhir: FaultyFhir,
    signing_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The JSON line has timestamp, level, logger and the call's fields, and no patient id."""
    record = _call_record(client, fhir, signing_key, caplog)
    text = json_formatter().format(record)
    line = json.loads(text)
    assert line["level"] == "INFO"
    assert line["logger"] == "cds_service.calls"
    assert line["timestamp"].startswith(str(time.gmtime().tm_year))
    assert line["event"] == "hook-call"
    assert line["status"] == 200
    assert line["hook"] == "order-sign"
    assert_no_secrets(text, PATIENT_ID, FAMILY, GIVEN, ACCESS_TOKEN)


def test_text_format_keeps_the_call_fields(
    client: FlaskClient,
    fhir: FaultyFhir,
    signing_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """CDS_LOG_FORMAT=text: a readable line that still ends with the call's fields as JSON."""
    record = _call_record(client, fhir, signing_key, caplog)
    text = TextFormatter().format(record)
    head, _, fields = text.partition(" {")
    assert head.endswith("INFO cds_service.calls hook-call")
    assert json.loads("{" + fields)["service"] == "voclosporin-order-sign"


# --------------------------------------------------------------------------- no secrets


def test_tokens_jwt_and_patient_name_never_logged(
    client: FlaskClient,
    fhir: FaultyFhir,
    signing_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full call (JWT, FHIR fetch with the token, named patient) logs none of them."""
    token = client_jwt(signing_key)
    with caplog.at_level(logging.DEBUG):
        response = client.post(
            SIGN_PATH, json=fetch_body(fhir), headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 200
    # The secrets really were in play: the FHIR server got the token and served the name.
    assert {hit.authorization for hit in fhir.hits} == {f"Bearer {ACCESS_TOKEN}"}
    assert call_lines(caplog)
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # the net reached DEBUG
    signature = token.rsplit(".", 1)[1]
    assert_no_secrets(everything_logged(caplog), ACCESS_TOKEN, token, signature, FAMILY, GIVEN)


@pytest.mark.parametrize("fault", ["401", "hang", "invalid-json", "redirect", "outcome"])
def test_fetch_faults_log_no_token(
    client: FlaskClient,
    fhir: FaultyFhir,
    signing_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    """When the FHIR server misbehaves, what gets logged still holds no token and no name."""
    fhir.set_fault(fault)
    token = client_jwt(signing_key)
    with caplog.at_level(logging.DEBUG):
        response = client.post(
            SIGN_PATH, json=fetch_body(fhir), headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 200
    assert call_lines(caplog)
    assert_no_secrets(everything_logged(caplog), ACCESS_TOKEN, token, FAMILY, GIVEN)


def test_refused_jwt_is_logged_without_the_token(
    client: FlaskClient,
    fhir: FaultyFhir,
    signing_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A replayed JWT is logged by reason and jti, never by the token itself."""
    token = client_jwt(signing_key)
    headers = {"Authorization": f"Bearer {token}"}
    with caplog.at_level(logging.DEBUG):
        client.post(SIGN_PATH, json=fetch_body(fhir), headers=headers)
        replay = client.post(SIGN_PATH, json=fetch_body(fhir), headers=headers)
    assert replay.status_code == 401
    text = everything_logged(caplog)
    assert "jti replayed" in text
    assert_no_secrets(text, token, token.rsplit(".", 1)[1], ACCESS_TOKEN)


def test_unexpected_error_logs_no_patient_data(
    client: FlaskClient,
    fhir: FaultyFhir,
    signing_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even a crash in a rule logs its traceback without the patient's name or the token."""
    from cds_service.rules import engine

    def broken(facts: Any, knowledge: Any) -> Any:
        raise RuntimeError("rule bug")

    spec = engine.REGISTRY[0]
    monkeypatch.setattr(engine, "REGISTRY", (replace(spec, check=broken), *engine.REGISTRY[1:]))
    token = client_jwt(signing_key)
    with caplog.at_level(logging.DEBUG):
        response = client.post(
            SIGN_PATH, json=fetch_body(fhir), headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 200
    assert "rule bug" in everything_logged(caplog)
    assert_no_secrets(everything_logged(caplog), ACCESS_TOKEN, token, FAMILY, GIVEN)


# --------------------------------------------------------------------------- injection (issue 13)

FORGED = "2026-12-01 00:00:00,000 INFO cds_service forged line"


def text_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every record as ``CDS_LOG_FORMAT=text`` writes it (tracebacks left out)."""
    formatter = TextFormatter()
    lines = []
    for record in caplog.records:
        record.exc_info, record.exc_text = None, None
        lines.append(formatter.format(record))
    return lines


@pytest.mark.parametrize(
    ("iss", "kid"),
    [
        pytest.param(f"https://evil.example\r\n{FORGED}", KID, id="crlf-in-iss"),
        pytest.param(ISSUER, f"k\n{FORGED}", id="lf-in-kid"),
        pytest.param(ISSUER, f"k\x1b[2K\r{FORGED}", id="terminal-escape-in-kid"),
    ],
)
def test_untrusted_iss_or_kid_cannot_forge_a_log_line(
    client: FlaskClient,
    fhir: FaultyFhir,
    signing_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
    iss: str,
    kid: str,
) -> None:
    """CR, LF and escape characters in a refused token's iss or kid are escaped in every line."""
    now = int(time.time())
    claims = {"iss": iss, "aud": PUBLIC_BASE + SIGN_PATH, "iat": now, "exp": now + 300}
    token = jwt.encode(
        {**claims, "jti": str(uuid.uuid4())}, signing_key, algorithm="ES384", headers={"kid": kid}
    )
    with caplog.at_level(logging.DEBUG):
        response = client.post(
            SIGN_PATH, json=fetch_body(fhir), headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 401
    lines = text_lines(caplog)
    assert any("forged line" in line for line in lines)  # the value is there, escaped
    for line in lines:
        assert not any(ch in line for ch in "\r\n\x1b"), line


def test_text_format_escapes_control_characters() -> None:
    """The text formatter writes CR, LF, ESC and U+2028 in a message as escapes."""
    record = logging.LogRecord(
        "cds_service.x", logging.INFO, __file__, 1, "value %s", ("a\r\nb\x1bc\u2028d",), None
    )
    line = TextFormatter().format(record)
    assert line.endswith("value a\\r\\nb\\x1bc\\u2028d")


DIAGNOSTICS = f"Patient {GIVEN} {FAMILY}, born 1961-04-02: query failed"


def test_operation_outcome_diagnostics_are_not_logged(
    app: Flask,
    client: FlaskClient,
    fhir: FaultyFhir,
    signing_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A prefetched OperationOutcome is logged by severity/code only, never its diagnostics."""
    body = fetch_body(fhir)
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": DIAGNOSTICS}],
    }
    body["prefetch"] = {
        "conditions": outcome,
        "allergies": {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": outcome}],
        },
    }
    with caplog.at_level(logging.DEBUG):
        response = client.post(
            SIGN_PATH, json=body, headers={"Authorization": f"Bearer {client_jwt(signing_key)}"}
        )
    assert response.status_code == 200
    text = everything_logged(caplog)
    assert "error/processing" in text
    assert_no_secrets(text, FAMILY, GIVEN, "1961-04-02")


def test_fetched_operation_outcome_diagnostics_are_not_logged(
    client: FlaskClient,
    fhir: FaultyFhir,
    signing_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Medication read answered with an OperationOutcome: logged by code, not by diagnostics."""
    fhir.set_fault("outcome", on="Medication")
    body = fetch_body(fhir)
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    del order["medicationCodeableConcept"]
    order["medicationReference"] = {"reference": "Medication/somewhere"}
    with caplog.at_level(logging.DEBUG):
        response = client.post(
            SIGN_PATH, json=body, headers={"Authorization": f"Bearer {client_jwt(signing_key)}"}
        )
    assert response.status_code == 200
    text = everything_logged(caplog)
    assert "error/too-costly" in text
    assert "search too broad" not in text  # FaultyFhir's diagnostics text
