"""HTTP surface (CDS Hooks 2.0): discovery, service calls, feedback, the contract, health
(``/healthz`` liveness, ``/readyz`` readiness), and
``GET /metrics`` (Prometheus, ``metrics_bp``, protected like ``/analytics``).

Each view: read and validate the body with a schema, hand it to the service, dump the answer.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, jsonify, request
from marshmallow import Schema, ValidationError

from cds_service import metrics
from cds_service.analytics import require_operator_token
from cds_service.errors import BadRequest, CdsError, UnsupportedMediaType
from cds_service.readiness import READINESS_EXTENSION, Readiness
from cds_service.recording import RECORDER_EXTENSION, Recorder
from cds_service.schemas import (
    DiscoveryOut,
    FeedbackSchema,
    HookRequestSchema,
    field_errors,
)
from cds_service.service import CdsService

log = logging.getLogger("cds_service.calls")
# Schema instances hold no per-request state: build them once, not on every call (hot path).
HOOK_REQUEST, FEEDBACK = HookRequestSchema(), FeedbackSchema()
bp = Blueprint("cds", __name__)
metrics_bp = Blueprint("metrics", __name__)
OPENAPI_PATH = Path(__file__).parent / "openapi.yaml"


def cds() -> CdsService:
    service: CdsService = current_app.extensions["cds_service"]
    return service


def recorder() -> Recorder:
    recording: Recorder = current_app.extensions[RECORDER_EXTENSION]
    return recording


def read_json(schema: Schema) -> dict[str, Any]:
    """Parse the body as JSON and load it with ``schema``; every failure is a named 400/415."""
    if not request.is_json:
        raise UnsupportedMediaType("Send the body as application/json")
    body = parse_json(request.get_data(cache=False))
    if not isinstance(body, dict):
        raise BadRequest("The JSON body must be an object")
    try:
        loaded: dict[str, Any] = schema.load(body)
    except ValidationError as exc:
        raise BadRequest(
            "The request does not follow CDS Hooks 2.0", fields=field_errors(exc.messages)
        ) from exc
    return loaded


def parse_json(raw: bytes) -> Any:
    """The body as JSON: orjson (several times faster than ``json``, on the hot path), and for
    what orjson refuses, the standard parser, so every answer stays as before: the same 400s
    for bad JSON, and NaN, Infinity and numbers beyond the float range read as ``json`` reads
    them (the mappings then treat them as "not a number"). orjson reads an integer beyond 64
    bits as the nearest float: the mappings read every number as a float anyway."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadRequest("The body is not UTF-8 encoded") from exc
    except RecursionError as exc:  # the C parser's own nesting guard (about 1,000 levels)
        raise BadRequest("The JSON body is nested too deeply") from exc
    except ValueError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}") from exc


def respond(body: Any) -> Response:
    """A JSON answer serialised with orjson (the hook answer is on the hot path); what orjson
    cannot write (an integer beyond 64 bits) falls back to Flask's serialiser."""
    try:
        data = orjson.dumps(body)
    except TypeError:
        return jsonify(body)
    return current_app.response_class(data, mimetype="application/json")


@bp.get("/cds-services")
def discovery() -> Response:
    services = [entry.discovery() for entry in cds().discovery_entries()]
    return jsonify(DiscoveryOut().dump({"services": services}))


@contextmanager
def call_log(service_id: str) -> Iterator[dict[str, Any]]:
    """Log one JSON line per hook call, refused ones included (412 shows an operator a
    fhirServer outside the allowlist, or an EHR that sends no prefetch), and count it for
    /metrics. The fields are the line's top-level keys (``extra``). No names, no tokens."""
    started = time.monotonic()
    entry: dict[str, Any] = {
        "event": "hook-call",
        "hookInstance": None,
        "service": service_id[:200],
        "hook": None,
        "status": 200,
        "rulesFired": [],
    }
    try:
        yield entry
    except CdsError as exc:
        entry.update(
            status=exc.status, error=exc.title, missingPrefetch=exc.extra.get("missingPrefetch", [])
        )
        raise
    except Exception:
        entry.update(status=500, error="Internal Server Error")  # the app's handler answers 500
        raise
    finally:
        elapsed = time.monotonic() - started
        entry["durationMs"] = round(elapsed * 1000, 1)
        log.info("hook-call", extra=entry)
        _count_call(entry, elapsed)


def _count_call(entry: dict[str, Any], elapsed_s: float) -> None:
    """Count the call under known label values only, so a client cannot grow the series."""
    service = entry["service"] if entry["service"] in cds().services else metrics.UNKNOWN
    hook = entry["hook"] if entry["hook"] in cds().hooks else metrics.UNKNOWN
    metrics.count_call(service, hook, entry["status"], elapsed_s)


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    with call_log(service_id) as entry:
        endpoint = cds().service(service_id)
        hook_request = read_json(HOOK_REQUEST)
        entry.update(
            hookInstance=str(hook_request["hook_instance"]), hook=hook_request["hook"][:200]
        )
        # One id may answer several hooks (#update-stale-guidance): the request's hook picks.
        outcome = cds().call(endpoint.for_hook(hook_request["hook"]), hook_request)
        entry.update(
            rulesFired=[card.rule_id for card in outcome.cards],
            unavailable=list(outcome.unavailable),
            fetched=list(outcome.fetched),
        )
        metrics.count_cards((card.rule_id, card.indicator, card.quieted) for card in outcome.cards)
        metrics.count_fetches(outcome.fetched, outcome.fetch_failed)
    # Card bodies are built in their wire shape (cards.py): no schema dump on the hot path.
    response = respond(outcome.response())
    recorder().record_call(outcome)  # only cards that are answered go into the audit trail
    return response


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    # Cards are known by the id that issued them: a card from voclosporin-order-sign takes its
    # feedback there, one from voclosporin-orders at voclosporin-orders (spec: the feedback
    # endpoint of the service that returned the card).
    service = cds().service(service_id)
    entries = read_json(FEEDBACK)["feedback"]
    stored = recorder().store_feedback(service.id, entries)
    metrics.count_feedback(entry["outcome"] for entry in entries)
    return jsonify({"received": len(entries), "stored": stored})


@bp.get("/openapi.yaml")
def openapi() -> Response:
    return Response(OPENAPI_PATH.read_text(encoding="utf-8"), mimetype="application/yaml")


@bp.get("/healthz")
def health() -> Response:
    """Liveness: cheap, no dependency asked (a database outage must not restart instances)."""
    service = cds()
    return jsonify(
        {
            "status": "ok",
            "settingsFingerprint": current_app.config["CDS_SETTINGS_FINGERPRINT"],
            "knowledgeVersion": service.knowledge.full_version,
            "services": sorted(service.services),
            "clientAuthentication": current_app.config["CDS_AUTH_STATE"],
            "fhirServerPolicy": (
                "allowlist"
                if service.chart_settings.policy.uses_allowlist
                else "public https only (no allowlist)"
            ),
        }
    )


@bp.get("/readyz")
def ready() -> Response:
    """Readiness: database and Redis each answer within CDS_READY_TIMEOUT_MS, else 503."""
    readiness: Readiness = current_app.extensions[READINESS_EXTENSION]
    is_ready, checks = readiness.check()
    response = jsonify(
        {
            "status": "ready" if is_ready else "not ready",
            "checks": checks,
            "settingsFingerprint": current_app.config["CDS_SETTINGS_FINGERPRINT"],
            "knowledgeVersion": cds().knowledge.full_version,
        }
    )
    response.status_code = 200 if is_ready else 503
    response.headers["Cache-Control"] = "no-store"
    return response


@metrics_bp.before_request
def _require_metrics_access() -> None:
    """The /analytics rules: the metrics token (or the analytics token), 401/403 otherwise."""
    config = current_app.config
    token = config.get("CDS_METRICS_TOKEN") or config.get("CDS_ANALYTICS_TOKEN")
    require_operator_token("Metrics", token, "CDS_METRICS_TOKEN (or CDS_ANALYTICS_TOKEN)")


@metrics_bp.get("/metrics")
def prometheus_metrics() -> Response:
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})
