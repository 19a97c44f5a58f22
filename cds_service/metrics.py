"""Prometheus metrics, counted at the edge (views, recorder, storage engine, error handler).

The clinical core (rules, ``fhir_mappings``) never imports this module. ``GET /metrics``
answers in the Prometheus text format (version 0.0.4) and is protected like ``/analytics``
(``operator_access``). Under gunicorn, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory
the workers can write: each worker keeps its counters in files there, a scrape sums them, and
``gunicorn.conf.py`` marks a dead worker's files (``child_exit``). Without the variable, a single
process serves its own default registry.

Metric names and labels (every label value is bounded: known service ids and hooks, rule ids,
indicators, fixed outcomes):

- ``cds_hook_calls_total{service, hook, status}`` and ``cds_hook_call_duration_seconds{service}``
- ``cds_cards_total{rule_id, indicator}``, ``cds_cards_quieted_total{rule_id}`` (repeats)
- ``cds_fhir_fetches_total{outcome}``: ``ok`` or ``failed``, one per FHIR query for a prefetch key
- ``cds_feedback_total{outcome}``: ``accepted`` or ``overridden``, per feedback item taken (200)
- ``cds_database_errors_total``, ``cds_redis_errors_total``: outages met (StorageUnavailableError,
  ReplayCacheUnavailable)
- ``cds_audit_records_total{outcome}``: ``written`` (on the hook path), ``spooled`` (to the local
  spool), ``replayed`` (spool to database), ``dropped`` (in neither, logged whole: alert on it)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The text format every Prometheus (2.x and 3.x) and agent reads; generate_latest writes it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNKNOWN = "unknown"

HOOK_CALLS = Counter(
    "cds_hook_calls",
    "Hook calls answered, by service id, hook and HTTP status.",
    ["service", "hook", "status"],
)
HOOK_CALL_DURATION = Histogram(
    "cds_hook_call_duration_seconds",
    "Time to answer a hook call (seconds), by service id.",
    ["service"],
    # Hook calls are budgeted in hundreds of milliseconds (CDS_REQUEST_DEADLINE_MS 2500).
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CARDS = Counter("cds_cards", "Cards sent, by rule id and indicator.", ["rule_id", "indicator"])
CARDS_QUIETED = Counter(
    "cds_cards_quieted",
    "Cards sent as info because the same finding was recently overridden, by rule id.",
    ["rule_id"],
)
FHIR_FETCHES = Counter(
    "cds_fhir_fetches",
    "FHIR queries for data the prefetch lacked, by outcome (ok, failed).",
    ["outcome"],
)
FEEDBACK = Counter(
    "cds_feedback",
    "Feedback items taken (answered 200), by outcome (accepted, overridden).",
    ["outcome"],
)
DATABASE_ERRORS = Counter(
    "cds_database_errors", "Audit/feedback database outages met (StorageUnavailableError)."
)
AUDIT_RECORDS = Counter(
    "cds_audit_records",
    "Audit records by what became of them (written, spooled, replayed, dropped).",
    ["outcome"],
)
REDIS_ERRORS = Counter(
    "cds_redis_errors", "Replay cache (Redis) outages met (ReplayCacheUnavailable)."
)


def count_call(service: str, hook: str | None, status: int, duration_s: float) -> None:
    """Count one hook call; ``service`` and ``hook`` must already be known values."""
    HOOK_CALLS.labels(service, hook or UNKNOWN, str(status)).inc()
    HOOK_CALL_DURATION.labels(service).observe(duration_s)


def count_cards(cards: Iterable[tuple[str, str, bool]]) -> None:
    """Count cards sent, given (rule id, indicator, quieted) per card."""
    for rule_id, indicator, quieted in cards:
        CARDS.labels(rule_id, indicator).inc()
        if quieted:
            CARDS_QUIETED.labels(rule_id).inc()


def count_fetches(fetched: Sequence[str], failed: Sequence[str]) -> None:
    """Count the FHIR queries of one call that answered and that failed."""
    if fetched:
        FHIR_FETCHES.labels("ok").inc(len(fetched))
    if failed:
        FHIR_FETCHES.labels("failed").inc(len(failed))


def count_feedback(outcomes: Iterable[str]) -> None:
    """Count stored feedback items by outcome (validated by the schema: accepted, overridden)."""
    for outcome in outcomes:
        FEEDBACK.labels(outcome).inc()


def exposition() -> tuple[bytes, str]:
    """Return the scrape body and its content type, summed over workers in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE
    return generate_latest(REGISTRY), CONTENT_TYPE


def mark_worker_dead(pid: int) -> None:
    """Let a dead gunicorn worker's live gauges go (its counters stay in the sum)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
