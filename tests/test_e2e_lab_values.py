"""The lab-shape scenarios on the fetch path: a real FHIR server holds ">60" strings and race pairs.

Each scenario's chart (its prefetch) is loaded into sekmet-fhir under a patient id of its own;
the service is then called with no prefetch, only ``fhirServer``, and must answer the scenario's
expected cards, as it does with the EHR's prefetch (tests/test_scenarios.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_service import close_app
from tests.conftest import make_app
from tests.support.fhir_server import FhirServer
from tests.support.hooks import hook_request

pytestmark = pytest.mark.fhir_server

SCENARIO_DIR = Path(__file__).parent / "scenarios"
LAB_SCENARIOS = (
    "initiation-egfr-reported-as-over-60",
    "initiation-race-based-egfr-pair",
    "initiation-race-based-pair-and-creatinine",
    "renewal-egfr-stable-prior-authorization",
    "renewal-baseline-reported-as-over-60",
)
NOW = datetime.fromisoformat("2026-11-01T12:00:00+00:00")  # every scenario's "now"


def _scenario(name: str) -> dict[str, Any]:
    """The scenario with its patient renamed, so its chart does not overwrite a shared one."""
    text = (SCENARIO_DIR / f"{name}.json").read_text()
    original = json.loads(text)["request"]["context"]["patientId"]
    scenario: dict[str, Any] = json.loads(text.replace(original, f"labs-{name}"))
    assert scenario["now"] == "2026-11-01T12:00:00Z"
    return scenario


def _chart(scenario: dict[str, Any]) -> dict[str, Any]:
    """The scenario's prefetched resources as a transaction Bundle of PUTs."""
    resources: dict[str, dict[str, Any]] = {}
    for value in scenario["request"]["prefetch"].values():
        if not isinstance(value, dict):
            continue
        bundle = value.get("resourceType") == "Bundle"
        found = [e["resource"] for e in value.get("entry", [])] if bundle else [value]
        for resource in found:
            resources[f"{resource['resourceType']}/{resource['id']}"] = resource
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": url}}
            for url, r in resources.items()
        ],
    }


@pytest.fixture(scope="module")
def client(
    fhir_server: FhirServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlaskClient]:
    """Load the lab-shape charts and start an app allowed to fetch from the server."""
    for name in LAB_SCENARIOS:
        fhir_server.load_bundle(_chart(_scenario(name)))
    app = make_app(
        tmp_path_factory.mktemp("e2e-labs"),
        CDS_FHIR_ALLOWED_SERVERS=fhir_server.base_url,
        CDS_CLOCK=lambda: NOW,
    )
    try:
        yield app.test_client()
    finally:
        close_app(app)


@pytest.mark.parametrize("name", LAB_SCENARIOS)
def test_lab_shapes_give_the_scenario_cards_when_fetched(
    client: FlaskClient, fhir_server: FhirServer, name: str
) -> None:
    """Fetched from the server, '>60', race pairs and renewals give the scenario's own cards."""
    scenario = _scenario(name)
    context = scenario["request"]["context"]
    drafts = [e["resource"] for e in context["draftOrders"]["entry"]]
    body = hook_request(
        "order-sign",
        context["patientId"],
        drafts,
        fhir_server=fhir_server.base_url,
        token="e2e-dummy-token",
    )
    response = client.post(f"/cds-services/{scenario['service']}", json=body)
    assert response.status_code == 200, response.get_json()
    got = [
        {"rule": c["source"]["topic"]["code"], "indicator": c["indicator"]}
        for c in response.get_json()["cards"]
    ]
    assert got == scenario["expect"], scenario["story"]
