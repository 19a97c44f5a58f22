"""Fetch path: a hook call with no prefetch, so the service queries sekmet-fhir itself.

Compares the hook call's latency with the FHIR queries it makes, each timed on its own straight
against the server (same URL, headers and paging as ``cds_service.fhir_client``): the service
runs them concurrently, so it should take little more than the slowest one, far less than their
sum. The same queries fired concurrently by a bare client show what the server itself allows.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import requests

from fhir_mappings.categories import PATIENT_TOKEN, prefetch_templates
from fhir_mappings.knowledge import load_knowledge

DUMMY_TOKEN = "bench-dummy-token"  # sekmet's default server_auth is "none": any token passes
HEADERS = {
    "Accept": "application/fhir+json, application/json",
    "Authorization": f"Bearer {DUMMY_TOKEN}",
}
MAX_PAGES = 20
QUERY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class QueryTiming:
    key: str
    path: str
    resources: int
    pages: int
    p50_ms: float


def service_queries(patient_id: str) -> dict[str, str]:
    """The FHIR queries the service makes for ``patient_id``: its discovery templates."""
    templates = prefetch_templates(load_knowledge())
    return {key: t.replace(PATIENT_TOKEN, patient_id) for key, t in templates.items()}


def run_query(session: requests.Session, base_url: str, path: str) -> tuple[int, int]:
    """Run one read or search to the end (following ``next``); return (resources, pages)."""
    url: str | None = f"{base_url}/{path}"
    resources = pages = 0
    while url is not None and pages < MAX_PAGES:
        response = session.get(url, headers=HEADERS, timeout=QUERY_TIMEOUT_S, allow_redirects=False)
        response.raise_for_status()
        body = response.json()
        pages += 1
        if body.get("resourceType") != "Bundle":
            return 1, pages
        resources += sum(
            1 for e in body.get("entry") or [] if (e.get("search") or {}).get("mode") != "outcome"
        )
        url = next(
            (link["url"] for link in body.get("link") or [] if link.get("relation") == "next"),
            None,
        )
    return resources, pages


def time_queries(
    base_url: str, queries: dict[str, str], repeats: int
) -> tuple[list[QueryTiming], float]:
    """Median time of each query alone, and of all of them fired at once by a bare client."""
    samples: dict[str, list[float]] = {key: [] for key in queries}
    shape: dict[str, tuple[int, int]] = {}
    concurrent: list[float] = []
    with requests.Session() as session, ThreadPoolExecutor(len(queries)) as pool:
        for key, path in queries.items():  # one warm-up round: connections, server caches
            shape[key] = run_query(session, base_url, path)
        for _ in range(repeats):
            for key, path in queries.items():
                started = time.perf_counter()
                run_query(session, base_url, path)
                samples[key].append((time.perf_counter() - started) * 1000)
        sessions = [requests.Session() for _ in queries]
        try:
            for _ in range(repeats):
                started = time.perf_counter()
                futures = [
                    pool.submit(run_query, s, base_url, path)
                    for s, path in zip(sessions, queries.values(), strict=True)
                ]
                for future in futures:
                    future.result()
                concurrent.append((time.perf_counter() - started) * 1000)
        finally:
            for s in sessions:
                s.close()
    timings = [
        QueryTiming(key, path, shape[key][0], shape[key][1], statistics.median(samples[key]))
        for key, path in queries.items()
    ]
    return timings, statistics.median(concurrent)


def hook_calls_from_log(log_text: str) -> list[dict[str, Any]]:
    """The service's one-line JSON ``hook-call`` records (fetched / unavailable keys)."""
    calls = []
    for line in log_text.splitlines():
        start = line.find('{"event": "hook-call"')
        if start >= 0:
            try:
                calls.append(json.loads(line[start:]))
            except ValueError:
                continue
    return calls


# ---------------------------------------------------------------------------------------------
# A FHIR server with fixed latency: replayed answers, served concurrently

BASE_PLACEHOLDER = "{{replay-base}}"


def record(base_url: str, queries: dict[str, str]) -> dict[str, str]:
    """Every response the queries produce (pages included), keyed by unquoted relative URL,
    with the server's base replaced by a placeholder for the replaying server to fill in."""
    recordings: dict[str, str] = {}
    with requests.Session() as session:
        for path in queries.values():
            url: str | None = f"{base_url}/{path}"
            while url is not None and len(recordings) < 1_000:
                response = session.get(url, headers=HEADERS, timeout=QUERY_TIMEOUT_S)
                response.raise_for_status()
                recordings[_replay_key(url[len(base_url) :])] = response.text.replace(
                    base_url, BASE_PLACEHOLDER
                )
                body = response.json()
                url = next(
                    (
                        link["url"]
                        for link in body.get("link") or []
                        if link.get("relation") == "next"
                    ),
                    None,
                )
    return recordings


def _replay_key(path: str) -> str:
    return unquote(path.lstrip("/"))


class ReplayFhirServer:
    """Answers recorded FHIR responses after ``delay_s``, each request on its own thread, like
    a remote FHIR server that can serve many queries at once (unlike a one-process test server).
    """

    def __init__(self, recordings: dict[str, str], delay_s: float) -> None:
        self.delay_s = delay_s
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ReplayHandler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/fhir"
        self._server.recordings = {  # type: ignore[attr-defined]
            key: text.replace(BASE_PLACEHOLDER, self.base_url).encode()
            for key, text in recordings.items()
        }
        self._server.delay_s = delay_s  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="replay-fhir", daemon=True
        )

    def __enter__(self) -> ReplayFhirServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class _ReplayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as FHIR clients expect
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms ACK wait

    def do_GET(self) -> None:
        key = _replay_key(self.path.removeprefix("/fhir"))
        body: bytes | None = self.server.recordings.get(key)  # type: ignore[attr-defined]
        time.sleep(self.server.delay_s)  # type: ignore[attr-defined]
        status = 200 if body is not None else 404
        payload = (
            body
            or b'{"resourceType":"OperationOutcome","issue":[{"severity":"error",'
            b'"code":"not-found"}]}'
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: one line per request would drown the benchmark's output."""
