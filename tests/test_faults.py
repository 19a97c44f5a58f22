"""Fault injection over real HTTP: a FHIR server that misbehaves never breaks a hook call.

The service runs in-process (Flask test client) and fetches from ``FaultyFhir`` on 127.0.0.1 over
real sockets, with no prefetch, so every chart slice comes from the misbehaving server. For each
fault (issue 3): the call answers 200 with a data-unavailable card that names the missing data
and the checks that did not run, within the request deadline plus a small margin; the bearer
token goes to the allowed server only; and the service keeps answering afterwards. A fhirServer
the policy refuses is never connected to, and the call answers 412 naming the missing keys.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import close_app
from cds_service.rules.engine import DATA_UNAVAILABLE
from tests.charts.lupus import ln_initiation_clean, voclosporin_draft_order
from tests.conftest import FIXED_NOW, make_app
from tests.support.faulty_fhir import MAX_STALL_SECONDS, SLOW_SECONDS, FaultyFhir
from tests.support.hooks import chart_resources, hook_request, prefetch_for, search

PATIENT_ID = "ln-initiation-clean"
TODAY = FIXED_NOW.date()
SERVICE_URL = "/cds-services/voclosporin-order-sign"
TOKEN = "fhir-access-token-7c1d"
DEADLINE_MS = 800
# What "timely" means: the deadline plus the engine, the cards and scheduling on a 2-core box.
MARGIN_SECONDS = 0.75
ALL_KEYS = (
    "patient",
    "medications",
    "medicationStatements",
    "medicationDispenses",
    "conditions",
    "immunizations",
    "allergies",
    "egfr",
    "creatinine",
    "bloodPressure",
    "potassium",
    "upcr",
    "pregnancyLactation",
)
OBSERVATION_KEYS = (
    "egfr",
    "creatinine",
    "bloodPressure",
    "potassium",
    "upcr",
    "pregnancyLactation",
)
# Rules that need an observation slice and so cannot run without it (rules/engine.py REGISTRY).
OBSERVATION_RULES = (
    "egfr-baseline-missing",
    "egfr-baseline-low",
    "egfr-decline",
    "blood-pressure-high",
    "blood-pressure-missing",
    "hyperkalemia",
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def attacker() -> Iterator[FaultyFhir]:
    """A second server that stands for any host other than the allowed one."""
    with FaultyFhir() as server:
        yield server


@pytest.fixture(scope="module")
def fhir_module(attacker: FaultyFhir) -> Iterator[FaultyFhir]:
    """The allowed FHIR server, holding the clean lupus-nephritis chart."""
    with FaultyFhir(chart_resources(ln_initiation_clean(TODAY))) as server:
        server.other_base = attacker.base_url
        yield server


@pytest.fixture
def fhir(fhir_module: FaultyFhir, attacker: FaultyFhir) -> FaultyFhir:
    """The allowed server, healthy and with an empty request log at the start of each test."""
    fhir_module.reset()
    attacker.reset()
    return fhir_module


@pytest.fixture
def app(tmp_path: Path, fhir: FaultyFhir) -> Iterator[Flask]:
    """The service, allowed to query only the faulty server, with a short deadline."""
    application = make_app(
        tmp_path,
        CDS_FHIR_ALLOWED_SERVERS=fhir.base_url,
        CDS_REQUEST_DEADLINE_MS=DEADLINE_MS,
    )
    yield application
    close_app(application)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# --------------------------------------------------------------------------- helpers


def fetch_request(server: str, prefetch: dict[str, Any] | None = None) -> dict[str, Any]:
    """A voclosporin order-sign request that lets the service fetch from ``server``."""
    return hook_request(
        "order-sign",
        PATIENT_ID,
        [voclosporin_draft_order(PATIENT_ID, TODAY)],
        prefetch,
        fhir_server=server,
        token=TOKEN,
    )


def timed_post(client: FlaskClient, body: dict[str, Any]) -> tuple[Any, float]:
    started = time.monotonic()
    response = client.post(SERVICE_URL, json=body)
    return response, time.monotonic() - started


def unavailable_card(response: Any) -> dict[str, Any] | None:
    for card in response.get_json()["cards"]:
        if card["source"]["topic"]["code"] == DATA_UNAVAILABLE:
            return card
    return None


def _section(card: dict[str, Any], title: str) -> dict[str, str]:
    """Parse one ``**title**`` list of the card detail into {name: reason}."""
    lines = card["detail"].split(f"**{title}**", 1)[1].split("\n\n", 1)[0].splitlines()
    parsed = {}
    for line in lines:
        if line.startswith("- "):
            name, _, reason = line[2:].partition(": ")
            parsed[name] = reason
    return parsed


def missing_data(card: dict[str, Any]) -> dict[str, str]:
    """{data category: reason} from the card's "could not be obtained" list."""
    if "**Data that could not be obtained**" not in card["detail"]:
        return {}
    return _section(card, "Data that could not be obtained")


def checks_not_run(card: dict[str, Any]) -> dict[str, str]:
    """{rule id: reason} from the card's "checks not run" list."""
    if "**Checks not run or incomplete**" not in card["detail"]:
        return {}
    return _section(card, "Checks not run or incomplete")


def assert_still_serving(client: FlaskClient, fhir: FaultyFhir) -> None:
    """After a fault, a healthy server gives a full chart again and no data-unavailable card."""
    fhir.set_fault("none")
    response, elapsed = timed_post(client, fetch_request(fhir.base_url))
    assert response.status_code == 200
    assert unavailable_card(response) is None, unavailable_card(response)
    assert elapsed < DEADLINE_MS / 1000 + MARGIN_SECONDS


# --------------------------------------------------------------------------- a healthy server


def test_healthy_server_gives_the_whole_chart_with_the_token(
    client: FlaskClient, fhir: FaultyFhir, attacker: FaultyFhir
) -> None:
    """A healthy server gives every slice, each fetched with the token; nothing is missing."""
    response, elapsed = timed_post(client, fetch_request(fhir.base_url))
    assert response.status_code == 200
    assert unavailable_card(response) is None
    assert [c["source"]["topic"]["code"] for c in response.get_json()["cards"]] == [
        "prior-authorization"
    ]
    assert len(fhir.hits) == len(ALL_KEYS)
    assert {hit.authorization for hit in fhir.hits} == {f"Bearer {TOKEN}"}
    assert f"/fhir/Patient/{PATIENT_ID}" in fhir.paths()
    assert attacker.hits == []
    assert elapsed < DEADLINE_MS / 1000 + MARGIN_SECONDS


def test_slow_but_in_time_server_is_waited_for(client: FlaskClient, fhir: FaultyFhir) -> None:
    """A server that answers late but inside the deadline gives full data, not a gap."""
    fhir.set_fault("slow")
    response, elapsed = timed_post(client, fetch_request(fhir.base_url))
    assert response.status_code == 200
    assert unavailable_card(response) is None
    assert SLOW_SECONDS <= elapsed < DEADLINE_MS / 1000 + MARGIN_SECONDS


# --------------------------------------------------------------------------- each fault


FAULT_REASONS = {
    "401": "refused the token (401)",
    "403": "denied access (403)",
    "404": "404",
    "429": "rate limiting (429)",
    "500": "HTTP 500",
    "hang": "deadline",
    "trickle": "deadline",
    "invalid-json": "invalid JSON",
    "not-a-resource": "not a resource",
    "outcome": "OperationOutcome: too-costly: search too broad",
    "next-offhost": "outside the FHIR server",
    "next-broken": "404",
    "redirect": "HTTP 302",
}


@pytest.mark.parametrize("fault", list(FAULT_REASONS))
def test_observation_fault_gives_a_truthful_card_in_time(
    client: FlaskClient, fhir: FaultyFhir, attacker: FaultyFhir, fault: str
) -> None:
    """Each Observation fault: 200 in time, the card names the lost data and the skipped checks."""
    fhir.set_fault(fault, on="Observation")
    response, elapsed = timed_post(client, fetch_request(fhir.base_url))

    assert response.status_code == 200
    assert elapsed < DEADLINE_MS / 1000 + MARGIN_SECONDS, f"{fault}: answered in {elapsed:.2f} s"
    card = unavailable_card(response)
    assert card is not None
    assert card["indicator"] == "warning"
    missing = missing_data(card)
    assert sorted(missing) == sorted(OBSERVATION_KEYS)
    for key in OBSERVATION_KEYS:
        assert FAULT_REASONS[fault] in missing[key]
    skipped = checks_not_run(card)
    for rule_id in OBSERVATION_RULES:
        assert skipped[rule_id].startswith("not run:"), skipped
    assert "patient" not in missing
    assert "medications" not in missing
    assert "could not run" in card["summary"]
    # The token went to the allowed server only, and never to the other host.
    assert {hit.authorization for hit in fhir.hits} == {f"Bearer {TOKEN}"}
    assert attacker.hits == []
    assert attacker.connections == 0
    assert_still_serving(client, fhir)


def test_patient_not_found_is_reported_and_its_checks_skipped(
    client: FlaskClient, fhir: FaultyFhir
) -> None:
    """A 404 on the Patient read leaves the patient unknown; age and renal checks say so."""
    fhir.set_fault("404", on="Patient")
    response, _ = timed_post(client, fetch_request(fhir.base_url))
    assert response.status_code == 200
    card = unavailable_card(response)
    assert card is not None
    assert missing_data(card) == {"patient": "patient not found on the FHIR server (404)"}
    skipped = checks_not_run(card)
    assert skipped["pediatric"] == "not run: patient unavailable"
    assert skipped["egfr-baseline-low"].startswith("not run:")
    assert_still_serving(client, fhir)


def test_every_query_failing_still_answers_with_every_gap_named(
    client: FlaskClient, fhir: FaultyFhir
) -> None:
    """When the server fails every query, the call still answers 200 and names all ten slices."""
    fhir.set_fault("500")
    response, elapsed = timed_post(client, fetch_request(fhir.base_url))
    assert response.status_code == 200
    assert elapsed < DEADLINE_MS / 1000 + MARGIN_SECONDS
    card = unavailable_card(response)
    assert card is not None
    assert sorted(missing_data(card)) == sorted(ALL_KEYS)
    assert "hypersensitivity" in checks_not_run(card)
    assert_still_serving(client, fhir)


def test_stalled_fetches_do_not_starve_later_calls(client: FlaskClient, fhir: FaultyFhir) -> None:
    """Calls to a trickling server stay timely, and a healthy call after them gets its data."""
    fhir.set_fault("trickle", on="Observation")
    for _ in range(4):  # 4 x 5 stalled Observation queries > the 16 fetch threads
        response, elapsed = timed_post(client, fetch_request(fhir.base_url))
        assert response.status_code == 200
        assert elapsed < DEADLINE_MS / 1000 + MARGIN_SECONDS, f"answered in {elapsed:.2f} s"
    fhir.set_fault("none")
    response, elapsed = timed_post(client, fetch_request(fhir.base_url))
    assert response.status_code == 200
    card = unavailable_card(response)
    assert card is None, f"stalled fetches still hold the pool: {card and missing_data(card)}"
    assert elapsed < DEADLINE_MS / 1000 + MARGIN_SECONDS
    assert MAX_STALL_SECONDS > DEADLINE_MS / 1000  # the stall really outlasts the deadline


# --------------------------------------------------------------------------- prefetch paging


def _prefetch(templates: dict[str, str]) -> dict[str, Any]:
    return prefetch_for(chart_resources(ln_initiation_clean(TODAY)), PATIENT_ID, templates)


def _templates(app: Flask) -> dict[str, str]:
    return dict(app.extensions["cds_service"].services["voclosporin-order-sign"].prefetch)


def test_prefetch_next_link_to_another_host_is_not_followed(
    app: Flask, client: FlaskClient, fhir: FaultyFhir, attacker: FaultyFhir
) -> None:
    """A prefetched next link to another host is not followed; the slice is reported missing."""
    prefetch = _prefetch(_templates(app))
    prefetch["egfr"]["link"] = [
        {"relation": "next", "url": f"{attacker.base_url}/Observation?page=2"}
    ]
    response, _ = timed_post(client, fetch_request(fhir.base_url, prefetch))
    assert response.status_code == 200
    card = unavailable_card(response)
    assert card is not None
    assert "outside the FHIR server" in missing_data(card)["egfr"]
    assert attacker.connections == 0
    assert fhir.hits == []


def test_prefetch_next_link_outside_the_base_path_is_not_followed(
    app: Flask, client: FlaskClient, fhir: FaultyFhir
) -> None:
    """Same host and port but outside the allowed base path is another server: not contacted."""
    prefetch = _prefetch(_templates(app))
    outside = fhir.base_url.removesuffix("/fhir") + "/admin/Observation?page=2"
    prefetch["potassium"]["link"] = [{"relation": "next", "url": outside}]
    response, _ = timed_post(client, fetch_request(fhir.base_url, prefetch))
    assert response.status_code == 200
    card = unavailable_card(response)
    assert card is not None
    assert "potassium" in missing_data(card)
    assert fhir.hits == []


def test_prefetch_next_link_on_the_allowed_server_is_followed(
    app: Flask, client: FlaskClient, fhir: FaultyFhir
) -> None:
    """A first-page-only prefetch is completed from the allowed server, with the token."""
    templates = _templates(app)
    prefetch = _prefetch(templates)
    query = templates["egfr"].replace("{{context.patientId}}", PATIENT_ID)
    first_page = search([], query, PATIENT_ID)  # the EHR sent an empty first page
    first_page["link"] = [{"relation": "next", "url": f"{fhir.base_url}/{query}"}]
    prefetch["egfr"] = first_page
    response, _ = timed_post(client, fetch_request(fhir.base_url, prefetch))
    assert response.status_code == 200
    assert unavailable_card(response) is None  # the eGFR from page 2 made the baseline known
    assert [hit.authorization for hit in fhir.hits] == [f"Bearer {TOKEN}"]
    assert fhir.hits[0].path == "/fhir/Observation"


# --------------------------------------------------------------------------- refused servers


def test_server_outside_the_allowlist_is_never_contacted(
    tmp_path: Path, fhir: FaultyFhir, caplog: pytest.LogCaptureFixture
) -> None:
    """A fhirServer not on the allowlist gets no connection; the call is a 412 naming every key."""
    application = make_app(
        tmp_path,
        CDS_FHIR_ALLOWED_SERVERS="https://fhir.example.org/r4",
        CDS_REQUEST_DEADLINE_MS=DEADLINE_MS,
    )
    try:
        with caplog.at_level(logging.INFO):
            response = application.test_client().post(
                SERVICE_URL, json=fetch_request(fhir.base_url)
            )
    finally:
        close_app(application)
    assert response.status_code == 412
    error = response.get_json()["error"]
    assert sorted(error["missingPrefetch"]) == sorted(ALL_KEYS)
    assert "fhirServer not allowed" in error["detail"]
    assert "127.0.0.1 is not under an allowed FHIR server" in error["detail"]
    assert fhir.connections == 0
    assert fhir.hits == []
    assert any("fhirServer refused" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text


def test_server_outside_the_allowlist_is_not_needed_with_full_prefetch(
    tmp_path: Path, fhir: FaultyFhir
) -> None:
    """With every key prefetched, a refused fhirServer costs nothing: 200 and no connection."""
    application = make_app(tmp_path, CDS_FHIR_ALLOWED_SERVERS="https://fhir.example.org/r4")
    try:
        templates = _templates(application)
        response = application.test_client().post(
            SERVICE_URL, json=fetch_request(fhir.base_url, _prefetch(templates))
        )
    finally:
        close_app(application)
    assert response.status_code == 200
    assert unavailable_card(response) is None
    assert fhir.connections == 0


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("http://127.0.0.1:{port}/fhir", "must use https", id="http-loopback"),
        pytest.param("https://127.0.0.1:{port}/fhir", "loopback address", id="https-loopback"),
        pytest.param("https://localhost:{port}/fhir", "loopback name", id="localhost"),
        pytest.param("https://2130706433:{port}/fhir", "resolves to a loopback", id="decimal"),
        pytest.param("https://[::1]:{port}/fhir", "::1 is a loopback address", id="ipv6-loopback"),
    ],
)
def test_default_policy_refuses_loopback_without_contacting_it(
    tmp_path: Path, fhir: FaultyFhir, url: str, reason: str
) -> None:
    """With no allowlist, loopback servers are refused before any connection: 412 and a reason."""
    application = make_app(tmp_path, CDS_FHIR_ALLOWED_SERVERS=None)
    try:
        assert not application.extensions["cds_service"].chart_settings.policy.uses_allowlist
        response = application.test_client().post(
            SERVICE_URL, json=fetch_request(url.format(port=fhir.port))
        )
    finally:
        close_app(application)
    assert response.status_code == 412
    error = response.get_json()["error"]
    assert reason in error["detail"]
    assert sorted(error["missingPrefetch"]) == sorted(ALL_KEYS)
    assert fhir.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://127.1:{port}/fhir", id="short-ipv4"),
        pytest.param("https://[::ffff:127.0.0.1]:{port}/fhir", id="v4-mapped-ipv6"),
        pytest.param("file:///etc/passwd", id="file-scheme"),
        pytest.param("gopher://127.0.0.1:{port}/fhir", id="gopher"),
    ],
)
def test_unparseable_server_urls_are_a_400_naming_fhir_server(
    tmp_path: Path, fhir: FaultyFhir, url: str
) -> None:
    """URLs the wire schema cannot read as http(s) are refused as 400 on fhirServer, uncontacted."""
    application = make_app(tmp_path, CDS_FHIR_ALLOWED_SERVERS=None)
    try:
        response = application.test_client().post(
            SERVICE_URL, json=fetch_request(url.format(port=fhir.port))
        )
    finally:
        close_app(application)
    assert response.status_code == 400
    assert "fhirServer" in response.get_json()["error"]["fields"]
    assert fhir.connections == 0
