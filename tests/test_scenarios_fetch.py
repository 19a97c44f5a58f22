"""Every scenario file on the fetch path: the real sekmet-fhir server instead of prefetch.

For each ``tests/scenarios/*.json`` (any file added later too) the scenario's prefetched resources
are loaded into the session FHIR server, and the same hook request is sent without prefetch but
with ``fhirServer`` + ``fhirAuthorization`` at the scenario's ``now``. The service then fetches
with its own discovery templates; the cards (rule + indicator, in order) must be the ones the
prefetch path gives and the scenario expects. This pins the templates (statuses, codes, new keys
such as ``medicationStatements``) against the data the scenarios were written with.

Resource ids are prefixed per scenario before loading, so scenarios that reuse a chart (the same
patient id, different contents) do not see each other's resources on the shared server.

A scenario that cannot run on the fetch path says so in its file: ``"fetch": false`` and a
``"fetch_reason"`` (the test asserts the reason is there and reports the skip).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds_service import close_app
from fhir_mappings.bundles import bundle_resources
from tests.conftest import make_app
from tests.support.fhir_server import FhirServer

pytestmark = pytest.mark.fhir_server

Resource = dict[str, Any]
SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.json"))
DUMMY_TOKEN = "scenario-fetch-token"  # the spec lets the service fetch only with a token
DEADLINE_MS = 20_000  # generous: a late fetch would turn into "unavailable", not a bug


class Clock:
    """The app's clock, set to each scenario's ``now`` before its calls."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def service(
    fhir_server: FhirServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Flask, Clock]]:
    """One app that may query the session server, with a settable clock."""
    clock = Clock()
    app = make_app(
        tmp_path_factory.mktemp("scenario-fetch"),
        CDS_FHIR_ALLOWED_SERVERS=fhir_server.base_url,
        CDS_CLOCK=clock,
        CDS_REQUEST_DEADLINE_MS=DEADLINE_MS,
    )
    try:
        yield app, clock
    finally:
        close_app(app)


def test_scenarios_are_collected() -> None:
    """The fetch harness sees the scenario folder (not silently empty)."""
    assert len(SCENARIOS) >= 10


def chart_of(prefetch: dict[str, Any]) -> list[Resource]:
    """Every resource the prefetch holds (Bundle entries and single resources), once each."""
    seen: dict[tuple[str, str], Resource] = {}
    for value in prefetch.values():
        for resource in bundle_resources(value):
            if resource.get("resourceType") == "OperationOutcome" or "id" not in resource:
                continue
            seen.setdefault((resource["resourceType"], resource["id"]), resource)
    return list(seen.values())


def renamed(scenario: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The scenario with every prefetched resource id (and each reference to it) prefixed.

    Draft orders are not on the server (they are not signed): their own ids stay as they are.
    """
    scenario = copy.deepcopy(scenario)
    request = scenario["request"]
    names = {
        f"{r['resourceType']}/{r['id']}": f"{prefix}-{r['id']}"[:64]
        for r in chart_of(request.get("prefetch") or {})
    }
    patient_id = request["context"]["patientId"]
    names.setdefault(f"Patient/{patient_id}", f"{prefix}-{patient_id}"[:64])

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            out = {k: rewrite(v) for k, v in value.items()}
            key = f"{out.get('resourceType')}/{out.get('id')}"
            if key in names:
                out["id"] = names[key]
            return out
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        if isinstance(value, str) and value in names:
            kind = value.partition("/")[0]
            return f"{kind}/{names[value]}"
        return value

    request = rewrite(request)
    request["context"]["patientId"] = names[f"Patient/{patient_id}"]
    scenario["request"] = request
    return scenario


def not_on_fetch_path(scenario: dict[str, Any], name: str) -> str | None:
    """Why the scenario is not run on the fetch path (None: it is); a bare opt-out fails."""
    if scenario.get("fetch", True) is True:
        return None
    assert scenario.get("fetch") is False, f"{name}: 'fetch' must be true or false"
    reason = scenario.get("fetch_reason")
    assert isinstance(reason, str), f"{name}: 'fetch': false needs a 'fetch_reason'"
    assert reason.strip(), f"{name}: 'fetch': false needs a 'fetch_reason'"
    return reason


def test_an_opt_out_needs_its_reason() -> None:
    """A bare "fetch": false fails; with a reason, the reason is what the skip says."""
    assert not_on_fetch_path({}, "a.json") is None
    assert not_on_fetch_path({"fetch": False, "fetch_reason": "why"}, "a.json") == "why"
    with pytest.raises(AssertionError, match="needs a 'fetch_reason'"):
        not_on_fetch_path({"fetch": False}, "a.json")
    with pytest.raises(AssertionError, match="needs a 'fetch_reason'"):
        not_on_fetch_path({"fetch": False, "fetch_reason": " "}, "a.json")


def load(server: FhirServer, resources: list[Resource]) -> None:
    """PUT the resources in one transaction (ids kept: reloading is harmless)."""
    if not resources:
        return
    server.load_bundle(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
                for r in resources
            ],
        }
    )


def cards(app: Flask, service_id: str, body: dict[str, Any]) -> list[dict[str, str]]:
    """rule + indicator of the cards the service answers, in order."""
    response = app.test_client().post(f"/cds-services/{service_id}", json=body)
    assert response.status_code == 200, response.get_json()
    return [
        {"rule": c["source"]["topic"]["code"], "indicator": c["indicator"]}
        for c in response.get_json()["cards"]
    ]


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_on_the_fetch_path(
    fhir_server: FhirServer, service: tuple[Flask, Clock], path: Path
) -> None:
    """Fetching from the FHIR server gives the same cards as the scenario's prefetch."""
    scenario = json.loads(path.read_text())
    reason = not_on_fetch_path(scenario, path.name)
    if reason is not None:
        pytest.skip(f"{path.name}: {reason}")
    app, clock = service
    clock.now = datetime.fromisoformat(scenario["now"].replace("Z", "+00:00"))
    prefix = "s" + hashlib.sha256(path.stem.encode()).hexdigest()[:8]
    scenario = renamed(scenario, prefix)
    request = scenario["request"]
    load(fhir_server, chart_of(request.get("prefetch") or {}))
    on_prefetch = cards(app, scenario["service"], request)
    fetching = {k: v for k, v in request.items() if k != "prefetch"}
    fetching["fhirServer"] = fhir_server.base_url
    fetching["fhirAuthorization"] = {
        "access_token": DUMMY_TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "voclosporin-cds",
        "patient": request["context"]["patientId"],
    }
    on_fetch = cards(app, scenario["service"], fetching)
    assert on_prefetch == scenario["expect"], scenario["story"]
    assert on_fetch == on_prefetch, scenario["story"]


def test_renaming_keeps_references_consistent() -> None:
    """Prefixed ids are prefixed in every reference too, drafts keep their own ids."""
    scenario = {
        "request": {
            "context": {
                "patientId": "p1",
                "draftOrders": {
                    "resourceType": "Bundle",
                    "entry": [
                        {
                            "resource": {
                                "resourceType": "MedicationRequest",
                                "id": "d1",
                                "subject": {"reference": "Patient/p1"},
                            }
                        }
                    ],
                },
            },
            "prefetch": {
                "patient": {"resourceType": "Patient", "id": "p1"},
                "medications": {
                    "resourceType": "Bundle",
                    "entry": [
                        {
                            "resource": {
                                "resourceType": "MedicationRequest",
                                "id": "m1",
                                "subject": {"reference": "Patient/p1"},
                            }
                        }
                    ],
                },
            },
        }
    }
    out = renamed(scenario, "sx")["request"]
    assert out["context"]["patientId"] == "sx-p1"
    draft = out["context"]["draftOrders"]["entry"][0]["resource"]
    assert (draft["id"], draft["subject"]["reference"]) == ("d1", "Patient/sx-p1")
    order = out["prefetch"]["medications"]["entry"][0]["resource"]
    assert (order["id"], order["subject"]["reference"]) == ("sx-m1", "Patient/sx-p1")
