"""GET /metrics (issue 15): Prometheus counters with the right labels, protected like /analytics,
summed over gunicorn workers; and gunicorn's log lines as whole JSON objects."""

from __future__ import annotations

import base64
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient
from jwt.algorithms import ECAlgorithm
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from cds_service import close_app
from cds_service.storage import Storage
from fhir_mappings.categories import CATEGORIES
from tests.charts.lupus import CHARTS, ln_initiation_clean, voclosporin_draft_order
from tests.conftest import FIXED_NOW, make_app
from tests.support.faulty_fhir import FaultyFhir
from tests.support.gunicorn import free_port, two_workers
from tests.support.hooks import chart_resources, hook_request, prefetch_for

SIGN = "/cds-services/voclosporin-order-sign"
TODAY = FIXED_NOW.date()
ISSUER = "https://ehr.example.org"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(text: str) -> Samples:
    """Parse an exposition into {(sample name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def get_metrics(client: FlaskClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    return scrape(response.get_data(as_text=True))


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def sign_request(app: Flask, chart_name: str, today: date = TODAY) -> dict[str, Any]:
    """An order-sign request for voclosporin with the chart fully prefetched."""
    resources = chart_resources(CHARTS[chart_name](today))
    patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    templates = app.extensions["cds_service"].services["voclosporin-order-sign"].prefetch
    return hook_request(
        "order-sign",
        patient_id,
        [voclosporin_draft_order(patient_id, today)],
        prefetch_for(resources, patient_id, templates),
    )


def card_of(response: Any, rule_id: str) -> dict[str, Any]:
    [card] = [c for c in response.get_json()["cards"] if c["source"]["topic"]["code"] == rule_id]
    return dict(card)


# --------------------------------------------------------------------------- the counters


def test_scrape_counts_calls_cards_feedback_and_repeats(app: Flask, client: FlaskClient) -> None:
    """Calls by service/hook/status, cards by rule/indicator, feedback and a quieted repeat."""
    before = get_metrics(client)
    body = sign_request(app, "ln-cyclophosphamide")
    first = client.post(SIGN, json=body)
    card = card_of(first, "cyclophosphamide")
    assert card["indicator"] == "warning"
    assert app.extensions["cds_audit_writer"].flush(5.0)
    feedback = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": card["overrideReasons"][0]},
        "outcomeTimestamp": FIXED_NOW.isoformat().replace("+00:00", "Z"),
    }
    assert client.post(f"{SIGN}/feedback", json={"feedback": [feedback]}).status_code == 200
    repeat = client.post(SIGN, json=body)
    assert card_of(repeat, "cyclophosphamide")["indicator"] == "info"
    assert client.post("/cds-services/no-such-service", json=body).status_code == 404
    after = get_metrics(client)

    calls = "cds_hook_calls_total"
    signed = {"service": "voclosporin-order-sign", "hook": "order-sign", "status": "200"}
    assert delta(before, after, calls, **signed) == 2
    assert delta(before, after, calls, service="unknown", hook="unknown", status="404") == 1
    assert not any("no-such-service" in str(labels) for _, labels in after), (
        "a client-chosen id became a label value"
    )
    duration = "cds_hook_call_duration_seconds_count"
    assert delta(before, after, duration, service="voclosporin-order-sign") == 2
    cards = "cds_cards_total"
    assert delta(before, after, cards, rule_id="cyclophosphamide", indicator="warning") == 1
    assert delta(before, after, cards, rule_id="cyclophosphamide", indicator="info") == 1
    assert delta(before, after, "cds_cards_quieted_total", rule_id="cyclophosphamide") == 1
    assert delta(before, after, "cds_feedback_total", outcome="overridden") == 1
    assert delta(before, after, "cds_feedback_total", outcome="accepted") == 0


def test_fhir_fetches_counted_by_outcome(tmp_path: Path) -> None:
    """Every FHIR query for a key the EHR did not prefetch counts as ok or failed."""
    today = TODAY
    with FaultyFhir(chart_resources(ln_initiation_clean(today))) as fhir:
        app = make_app(tmp_path, CDS_FHIR_ALLOWED_SERVERS=fhir.base_url)
        try:
            client = app.test_client()
            body = hook_request(
                "order-sign",
                "ln-initiation-clean",
                [voclosporin_draft_order("ln-initiation-clean", today)],
                fhir_server=fhir.base_url,
                token="fhir-token",
            )
            before = get_metrics(client)
            assert client.post(SIGN, json=body).status_code == 200
            middle = get_metrics(client)
            fhir.set_fault("500", on="Observation")
            assert client.post(SIGN, json=body).status_code == 200
            after = get_metrics(client)
        finally:
            close_app(app)
    name = "cds_fhir_fetches_total"
    assert delta(before, middle, name, outcome="ok") == len(CATEGORIES)
    assert delta(before, middle, name, outcome="failed") == 0
    assert delta(middle, after, name, outcome="failed") >= 1
    assert delta(middle, after, name, outcome="ok") + delta(
        middle, after, name, outcome="failed"
    ) == len(CATEGORIES)


def test_database_outage_counted(app: Flask, client: FlaskClient) -> None:
    """A database that cannot be reached counts in cds_database_errors_total."""
    storage: Storage = app.extensions["cds_storage"]
    before = get_metrics(client)
    working = storage.database.engine
    storage.database.engine = create_engine("postgresql+psycopg://cds@127.0.0.1:1/gone")
    try:
        feedback = {
            "card": str(uuid.uuid4()),
            "outcome": "overridden",
            "outcomeTimestamp": FIXED_NOW.isoformat().replace("+00:00", "Z"),
        }
        response = client.post(f"{SIGN}/feedback", json={"feedback": [feedback]})
    finally:
        storage.database.engine.dispose()
        storage.database.engine = working
    assert response.status_code == 503
    assert delta(before, get_metrics(client), "cds_database_errors_total") >= 1


def test_audit_records_counted_written_and_spooled(app: Flask, client: FlaskClient) -> None:
    """A call's record counts as written; with the database away, as spooled."""
    storage: Storage = app.extensions["cds_storage"]
    body = sign_request(app, "ln-on-voclosporin-interactions")
    before = get_metrics(client)
    assert client.post(SIGN, json=body).status_code == 200
    middle = get_metrics(client)
    working = storage.database.engine
    storage.database.engine = create_engine("postgresql+psycopg://cds@127.0.0.1:1/gone")
    try:
        assert (
            client.post(SIGN, json={**body, "hookInstance": str(uuid.uuid4())}).status_code == 200
        )
    finally:
        storage.database.engine.dispose()
        storage.database.engine = working
    after = get_metrics(client)
    name = "cds_audit_records_total"
    assert delta(before, middle, name, outcome="written") == 1
    assert delta(middle, after, name, outcome="spooled") == 1


# --------------------------------------------------------------------------- JWT apps


@pytest.fixture(scope="module")
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def jwt_app(tmp_path: Path, key: ec.EllipticCurvePrivateKey, **overrides: Any) -> Flask:
    """An app that requires client JWTs, with the key set in a local file."""
    jwks = tmp_path / "jwks.json"
    public = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "ES384"}]}))
    settings: dict[str, Any] = {
        "CDS_JWT_ISSUERS": {ISSUER: f"file:{jwks}"},
        "CDS_PUBLIC_BASE_URL": "http://localhost",
        "CDS_REDIS_URL": None,
        **overrides,
    }
    return make_app(tmp_path, **settings)


def test_redis_outage_counted(tmp_path: Path, signing_key: ec.EllipticCurvePrivateKey) -> None:
    """A replay cache that cannot be reached answers 503 and counts in cds_redis_errors_total."""
    app = jwt_app(
        tmp_path,
        signing_key,
        CDS_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        CDS_METRICS_TOKEN="scrape",
    )
    try:
        client = app.test_client()
        auth = {"Authorization": "Bearer scrape"}
        before = scrape(client.get("/metrics", headers=auth).get_data(as_text=True))
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": f"http://localhost{SIGN}",
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
        }
        token = jwt.encode(claims, signing_key, algorithm="ES384", headers={"kid": "k1"})
        body = sign_request(app, "ln-initiation-clean")
        response = client.post(SIGN, json=body, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 503
        after = scrape(client.get("/metrics", headers=auth).get_data(as_text=True))
    finally:
        close_app(app)
    assert delta(before, after, "cds_redis_errors_total") == 1


# --------------------------------------------------------------------------- protection


@pytest.mark.parametrize(
    ("settings", "headers", "status"),
    [
        pytest.param({"CDS_ANALYTICS_TOKEN": "a-tok"}, {}, 401, id="analytics-token-missing"),
        pytest.param(
            {"CDS_ANALYTICS_TOKEN": "a-tok"},
            {"Authorization": "Bearer a-tok"},
            200,
            id="analytics-token-bearer",
        ),
        pytest.param(
            {"CDS_METRICS_TOKEN": "m-tok", "CDS_ANALYTICS_TOKEN": "a-tok"},
            {"Authorization": "Bearer a-tok"},
            401,
            id="metrics-token-wins",
        ),
        pytest.param(
            {"CDS_METRICS_TOKEN": "m-tok"},
            {"Authorization": "Basic " + base64.b64encode(b"prom:m-tok").decode()},
            200,
            id="metrics-token-basic",
        ),
        pytest.param({}, {}, 200, id="development-open"),
    ],
)
def test_access_like_analytics(
    tmp_path: Path, settings: dict[str, str], headers: dict[str, str], status: int
) -> None:
    """A set token is required (Bearer or Basic password); 401 asks for it."""
    app = make_app(tmp_path, **settings)
    try:
        response = app.test_client().get("/metrics", headers=headers)
    finally:
        close_app(app)
    assert response.status_code == status
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith('Basic realm="metrics"')
        assert response.get_json()["error"]["status"] == 401


def test_closed_when_jwt_on_and_no_token(
    tmp_path: Path, signing_key: ec.EllipticCurvePrivateKey
) -> None:
    """Client authentication on and no metrics or analytics token: 403."""
    app = jwt_app(tmp_path, signing_key)
    try:
        response = app.test_client().get("/metrics")
    finally:
        close_app(app)
    assert response.status_code == 403
    assert response.get_json()["error"]["title"] == "Metrics disabled"


# --------------------------------------------------------------------------- two workers


def test_two_workers_are_summed_and_log_json(tmp_path: Path) -> None:
    """Calls answered by both gunicorn workers are summed on one scrape; every line on gunicorn's
    stderr (its own and the app's) is one JSON object, and no call line names the patient."""
    database = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    close_app(make_app(tmp_path, CDS_DATABASE_URL=database))  # migrate once, up front
    local = make_app(tmp_path / "templates")
    try:
        body = sign_request(local, "ln-initiation-clean", today=datetime.now(UTC).date())
    finally:
        close_app(local)
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    settings = {
        "CDS_DATABASE_URL": database,
        "CDS_AUDIT_HASH_KEY": "two-workers",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    with two_workers(tmp_path, free_port(), settings) as server:
        # Concurrent batches on fresh connections until both workers have answered (a fast
        # worker back in accept() first can take a whole sequential run).
        probes: list[str] = []
        pids: set[int] = set()
        with ThreadPoolExecutor(max_workers=4) as pool:
            for batch in range(20):
                sent = [f"call-{batch}-{n}" for n in range(6)]
                statuses = pool.map(lambda probe: server.post(SIGN, body, probe).status_code, sent)
                assert set(statuses) == {200}
                probes += sent
                pids = {pid for pid, _ in server.wait_for_probes(probes).values()}
                if len(pids) == 2:
                    break
        assert len(pids) == 2, "one worker answered every call; cannot show the sum"
        totals = set()
        for _ in range(4):  # any worker may answer the scrape: each gives the same sum
            text = requests.get(f"{server.base_url}/metrics", timeout=10).text
            totals.add(
                value(
                    scrape(text),
                    "cds_hook_calls_total",
                    service="voclosporin-order-sign",
                    hook="order-sign",
                    status="200",
                )
            )
    assert totals == {len(probes)}
    lines = [line for line in (tmp_path / "gunicorn.log").read_text().splitlines() if line]
    parsed = [json.loads(line) for line in lines]
    assert all({"timestamp", "level", "logger", "message"} <= entry.keys() for entry in parsed)
    assert any(entry["logger"] == "gunicorn.error" for entry in parsed)
    calls = [entry for entry in parsed if entry.get("event") == "hook-call"]
    assert len(calls) == len(probes)
    assert not any("ln-initiation-clean" in json.dumps(entry) for entry in calls)
