"""A slow FHIR server holds no fetch thread past the call's deadline (issue 13).

Over real sockets (``tests.support.slow_socket``): a server that trickles its status line and
headers a byte at a time never trips a per-read socket timeout, so only a whole-request
deadline that covers connect and headers lets the fetch go. And a per-host limit keeps one slow
server from taking every fetch thread of the process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from flask import Flask

from cds_service import close_app
from cds_service.auth import KeySetUnavailable, KeyStore
from cds_service.auth import keys as keys_module
from cds_service.errors import FhirFetchError
from cds_service.fhir_client import FhirClient, HostLimits, deadline_session
from cds_service.rules.engine import DATA_UNAVAILABLE
from tests.charts.lupus import voclosporin_draft_order
from tests.conftest import FIXED_NOW, make_app
from tests.support.hooks import hook_request
from tests.support.slow_socket import SlowSocketServer

PATIENT_ID = "ln-initiation-clean"
DEADLINE_SECONDS = 0.6
# The deadline plus scheduling on a shared 2-core box; the trickle itself lasts 45 s.
MARGIN_SECONDS = 0.9


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """The service's own FHIR session (watchdog-aware connections, no retries)."""
    with deadline_session(pool_size=8) as made:
        yield made


def test_trickled_headers_end_at_the_deadline(session: requests.Session) -> None:
    """A server trickling its headers: the fetch fails at the deadline and the socket closes."""
    with SlowSocketServer("trickle-headers") as server:
        client = FhirClient(server.base_url, "t", session, time.monotonic() + DEADLINE_SECONDS)
        started = time.monotonic()
        with pytest.raises(FhirFetchError, match="did not answer before the deadline"):
            client.search("MedicationRequest?patient=p")
        assert time.monotonic() - started < DEADLINE_SECONDS + MARGIN_SECONDS
        [held] = server.wait_until_closed(1)
        assert held < DEADLINE_SECONDS + MARGIN_SECONDS


def test_a_trickling_server_holds_no_fetch_thread_after_the_call(tmp_path: Path) -> None:
    """A hook call against a trickling server answers in time and every fetch thread is free.

    Before: the call answered, but ten fetch threads stayed blocked in header reads for as long
    as the server trickled, and every later call got no data.
    """
    with SlowSocketServer("trickle-headers") as server:
        app = make_app(
            tmp_path,
            CDS_FHIR_ALLOWED_SERVERS=server.base_url,
            CDS_REQUEST_DEADLINE_MS=int(DEADLINE_SECONDS * 1000),
            CDS_FHIR_MAX_PER_HOST=16,
        )
        try:
            body = hook_request(
                "order-sign",
                PATIENT_ID,
                [voclosporin_draft_order(PATIENT_ID, FIXED_NOW.date())],
                None,
                fhir_server=server.base_url,
                token="t",
            )
            started = time.monotonic()
            response = app.test_client().post("/cds-services/voclosporin-order-sign", json=body)
            elapsed = time.monotonic() - started
            assert response.status_code == 200, response.get_data(as_text=True)[:300]
            codes = [c["source"]["topic"]["code"] for c in response.get_json()["cards"]]
            assert DATA_UNAVAILABLE in codes
            assert elapsed < DEADLINE_SECONDS + MARGIN_SECONDS
            opened = server.max_open
            held = server.wait_until_closed(opened, timeout=5.0)
            assert len(held) == opened, f"{opened - len(held)} fetches still held by the server"
            assert max(held) < DEADLINE_SECONDS + MARGIN_SECONDS
        finally:
            close_app(app)


def test_per_host_limit_caps_concurrent_fetches(session: requests.Session) -> None:
    """Six fetches to one host with a limit of two: never more than two open at once."""
    limits = HostLimits(2)
    with SlowSocketServer("slow", interval=0.2) as server:
        deadline = time.monotonic() + 10
        client = FhirClient(server.base_url, "t", session, deadline, host_limits=limits)
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(lambda _: client.search("Condition?patient=p"), range(6)))
        assert results == [[]] * 6
        assert server.max_open == 2
        assert limits.active() == 0


def test_waiting_for_a_host_slot_ends_at_the_deadline(session: requests.Session) -> None:
    """A fetch that cannot get a slot before its deadline fails saying the server is busy."""
    limits = HostLimits(1)
    with SlowSocketServer("slow", interval=1.0) as server:
        client = FhirClient(server.base_url, "t", session, time.monotonic() + 5, host_limits=limits)
        late = FhirClient(server.base_url, "t", session, time.monotonic() + 0.3, host_limits=limits)
        with ThreadPoolExecutor(max_workers=1) as pool:
            holding = pool.submit(client.search, "Condition?patient=p")
            time.sleep(0.1)
            with pytest.raises(FhirFetchError, match="FHIR server busy"):
                late.search("Condition?patient=p")
            assert holding.result() == []


def test_per_host_limit_is_a_setting(tmp_path: Path) -> None:
    """CDS_FHIR_MAX_PER_HOST reaches the chart settings the fetches use."""
    app: Flask = make_app(tmp_path, CDS_FHIR_MAX_PER_HOST=3)
    try:
        assert app.extensions["cds_service"].chart_settings.host_limits.per_host == 3
    finally:
        close_app(app)


def test_a_jwks_host_trickling_its_headers_is_cut_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issuer's key endpoint trickles its headers: the load fails at the deadline.

    The load runs under the issuer's lock, so before, every call of that issuer waited for as
    long as the key host trickled.
    """
    monkeypatch.setattr(keys_module, "JWKS_DEADLINE_SECONDS", DEADLINE_SECONDS)
    with SlowSocketServer("trickle-headers", tls_folder=tmp_path) as server:
        session = deadline_session(2)
        session.verify = str(server.certificate)
        session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would win over verify
        jwks_url = server.base_url.replace("/fhir", "/jwks.json")
        store = KeyStore({"https://ehr.example.org": jwks_url}, http_session=session)
        started = time.monotonic()
        try:
            with pytest.raises(KeySetUnavailable, match="not read within"):
                store.get_key("https://ehr.example.org", "k1", "ES256")
        finally:
            store.close()
            session.close()
        assert time.monotonic() - started < DEADLINE_SECONDS + MARGIN_SECONDS
        [held] = server.wait_until_closed(1)
        assert held < DEADLINE_SECONDS + MARGIN_SECONDS


def test_explicit_default_port_is_the_same_host() -> None:
    """https://h/ and https://h:443/ share one host's slots (no doubling the limit by spelling)."""
    limits = HostLimits(1)
    same_host = limits.slot("https://EHR.example.org:443/fhir/Condition", time.monotonic())
    with (
        limits.slot("https://ehr.example.org/fhir/Patient/1", time.monotonic() + 5),
        pytest.raises(FhirFetchError, match="FHIR server busy"),
        same_host,
    ):
        pass
    assert limits.active() == 0


def test_a_fetch_that_ends_in_time_is_not_cut_later(session: requests.Session) -> None:
    """A socket reused after its fetch ended in time is not cut at that fetch's old deadline."""
    with SlowSocketServer("slow", interval=0.05) as server:
        first = FhirClient(server.base_url, "t", session, time.monotonic() + 0.4)
        assert first.search("Condition?patient=p") == []
        time.sleep(0.5)  # past the first deadline
        later = FhirClient(server.base_url, "t", session, time.monotonic() + 5)
        assert later.search("Condition?patient=p") == []
