"""Fetch path: a hook call with no prefetch, so the service queries sekmet-fhir itself.

Compares the hook call's latency with the FHIR queries it makes, each timed on its own straight
against the server (same URL, headers and paging as ``cds_service.fhir_client``): the service
runs them concurrently, so it should take little more than the slowest one, far less than their
sum. The same queries fired concurrently by a bare client show what the server itself allows.
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from cds_service.chart import PATIENT_TOKEN, prefetch_templates
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
        response = session.get(url, headers=HEADERS, timeout=QUERY_TIMEOUT_S,
                               allow_redirects=False)
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
