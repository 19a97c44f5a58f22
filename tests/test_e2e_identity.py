"""The identity/route scenarios (tests/scenarios/generate_identity.py) on both paths against a
real FHIR R4 server (sekmet-fhir): the service fetching and the EHR's prefetch give the same cards,
the ones the scenario expects (written from the label and the knowledge decisions)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service import close_app
from tests.charts.lupus import CHARTS
from tests.conftest import make_app
from tests.scenarios.generate_identity import SCENARIOS
from tests.support.ehr import card_key, ehr_prefetch
from tests.support.fhir_server import FhirServer
from tests.support.hooks import hook_request

pytestmark = pytest.mark.fhir_server

HERE = Path(__file__).parent / "scenarios"
DUMMY_TOKEN = "e2e-dummy-token"  # the spec lets the service fetch only with a token
USER = "Practitioner/example"


@pytest.fixture(scope="module")
def loaded(
    fhir_server: FhirServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FhirServer, FlaskClient, datetime, dict[str, Any]]]:
    """The scenarios' charts on the server (dated to today, as the other e2e module loads them)."""
    now = datetime.now(UTC)
    for chart in {chart for _, chart, *_ in SCENARIOS}:
        fhir_server.load_bundle(CHARTS[chart](now.date()))  # PUT: ids kept, reload harmless
    app = make_app(
        tmp_path_factory.mktemp("e2e-identity"),
        CDS_FHIR_ALLOWED_SERVERS=fhir_server.base_url,
        CDS_CLOCK=lambda: now,
        CDS_REQUEST_DEADLINE_MS=20_000,
    )
    try:
        client = app.test_client()
        services = {s["hook"]: s for s in client.get("/cds-services").get_json()["services"]}
        yield fhir_server, client, now, services
    finally:
        close_app(app)


def _cards(client: FlaskClient, service_id: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(f"/cds-services/{service_id}", json=body)
    assert response.status_code == 200, response.get_json()
    cards: list[dict[str, Any]] = response.get_json()["cards"]
    return cards


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_identity_scenario_on_both_paths(loaded, scenario) -> None:
    """Fetching and prefetch agree, and both give the scenario's expected cards."""
    server, client, now, services = loaded
    name, chart, hook, _story, drafts_of, _expected, _source = scenario
    expected = [
        (e["rule"], e["indicator"])
        for e in json.loads((HERE / f"{name}.json").read_text())["expect"]
    ]
    drafts = [{**d, "authoredOn": now.date().isoformat()} for d in drafts_of(chart)]
    service = services[hook]
    fetched = _cards(
        client,
        service["id"],
        hook_request(hook, chart, drafts, fhir_server=server.base_url, token=DUMMY_TOKEN),
    )
    prefetch = ehr_prefetch(server, service["prefetch"], {"patientId": chart, "userId": USER})
    prefetched = _cards(client, service["id"], hook_request(hook, chart, drafts, prefetch.prefetch))
    assert [card_key(c) for c in fetched] == [card_key(c) for c in prefetched]
    assert [(c["source"]["topic"]["code"], c["indicator"]) for c in fetched] == expected
