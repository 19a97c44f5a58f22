"""The benchmark's building blocks work on tiny sizes (no timing is asserted here)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import requests

from bench.fetch_path import BASE_PLACEHOLDER, ReplayFhirServer
from bench.payloads import count_prefetched, encode, prefetch_request
from bench.run import FLOOR_APP, Budget, linear_fit, load_once
from bench.servers import Gunicorn, WorkerSettings, memory_kib
from fhir_mappings.categories import prefetch_templates
from fhir_mappings.knowledge import load_knowledge

TODAY = date(2026, 11, 1)


def test_prefetch_request_holds_the_asked_chart():
    """The bench body prefetches N Observations and 100 MedicationRequests under every key."""
    body = prefetch_request(12, TODAY)
    assert set(body["prefetch"]) == set(prefetch_templates(load_knowledge()))
    assert count_prefetched(body) == {
        "Patient": 1,
        "Condition": 1,
        "MedicationRequest": 100,
        "Observation": 12,
    }
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    assert "LUPKYNIS" in draft["medicationCodeableConcept"]["text"]


def test_linear_fit_recovers_a_line():
    """The cost-growth fit returns intercept and slope of exact points."""
    intercept, slope = linear_fit([10, 100, 1000], [7.0, 16.0, 106.0])
    assert intercept == pytest.approx(6.0)
    assert slope == pytest.approx(0.1)


def test_load_generator_drives_the_floor_under_gunicorn(tmp_path: Path):
    """A separate load-generator process gets 200s from the floor app under gunicorn."""
    body = tmp_path / "body.json"
    body.write_bytes(encode(prefetch_request(4, TODAY)))
    with Gunicorn(FLOOR_APP, WorkerSettings(workers=1, worker_class="gthread", threads=2)) as g:
        (worker,) = g.worker_pids()
        result = load_once(g.port, body, 2, Budget(6, 0, 20), warmup=False)
        memory = memory_kib(worker)
    assert result["statuses"] == {"200": 6}
    assert result["reconnects"] == 0  # gthread keeps the connections alive
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert memory["VmHWM"] >= memory["VmRSS"] > 0


def test_replay_fhir_server_answers_recordings_with_its_own_base():
    """The latency server replays a recording (base URL rewritten) and 404s anything else."""
    recording = {
        "Patient/p1": f'{{"resourceType": "Patient", "id": "p1", '
        f'"note": "{BASE_PLACEHOLDER}/Patient/p1"}}'
    }
    with ReplayFhirServer(recording, delay_s=0.01) as server, requests.Session() as session:
        found = session.get(f"{server.base_url}/Patient/p1", timeout=5)
        missing = session.get(f"{server.base_url}/Patient/p2", timeout=5)
    assert found.json()["note"] == f"{server.base_url}/Patient/p1"
    assert missing.status_code == 404
