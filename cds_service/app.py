"""The Flask app factory: every blueprint, extension and error handler is wired here, once.

``create_app(test_config=None)``: defaults -> environment (``CDS_*``) -> test config. The
knowledge data is loaded and validated here, once, so bad data or a bad setting stops start-up.
Run with ``flask --app cds_service run`` or ``gunicorn 'cds_service:create_app()'``.

What the app holds (``app.extensions``):

- ``cds_service``: the ``CdsService`` (knowledge, terminology, chart settings; no Flask);
- ``cds_recorder``: the ``Recorder`` (audit trail and feedback, over ``storage``);
- ``cds_storage`` / ``cds_audit_writer`` / ``cds_audit_hash_key``: storage (``init_storage``);
- ``cds_authenticator``: the JWT verifier when ``CDS_JWT_ISSUERS`` is set (``init_security``);
- ``cds_readiness``: the dependency checks of ``/readyz``; ``CDS_SETTINGS_FINGERPRINT`` (config):
  the digest ``/healthz`` and ``/readyz`` show (``cds_service.fingerprint``);
- ``cds_closers``: what ``close_app`` releases (sockets, threads, connections).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from cds_service import metrics, security
from cds_service.analytics import analytics_bp
from cds_service.api import bp, metrics_bp
from cds_service.chart import ChartSettings
from cds_service.config import from_environment
from cds_service.docs import docs_bp
from cds_service.errors import CdsError, HeaderTooLarge, ReplayCacheUnavailable, error_document
from cds_service.fhir_client import HostLimits, deadline_session
from cds_service.fhir_policy import FhirServerPolicy, parse_allowed_servers
from cds_service.fingerprint import settings_fingerprint
from cds_service.logs import LogFormat, configure_root
from cds_service.readiness import READINESS_EXTENSION, Readiness
from cds_service.recording import RECORDER_EXTENSION, Recorder, StoredOverrides
from cds_service.service import CdsService
from cds_service.storage import db_cli, init_storage, shutdown_storage
from fhir_mappings.knowledge import load_knowledge

log = logging.getLogger(__name__)
CLOSERS_EXTENSION = "cds_closers"
# Longest request header line (name + value) the service reads: room for a bearer JWT up to the
# verifier's MAX_TOKEN_LENGTH (16 KiB) and more. gunicorn's own limit
# (``limit_request_field_size``, default 8190) must be higher, or it answers first with HTML;
# ``voclosporin-cds serve --production`` sets it to GUNICORN_HEADER_FIELD_BYTES.
MAX_HEADER_FIELD_BYTES = 20_480
GUNICORN_HEADER_FIELD_BYTES = 32_768
SERVICE_EXTENSION = "cds_service"


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app; every dependency is created here and closed by ``close_app``."""
    app = Flask("cds_service", instance_relative_config=True)
    app.config.update(from_environment())
    app.config["CDS_CLOCK"] = lambda: datetime.now(UTC)
    if test_config:
        app.config.update(test_config)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    _configure_logging(app.config["CDS_LOG_FORMAT"])

    knowledge = load_knowledge().with_local_policy(
        egfr_baseline_max_days=app.config["CDS_EGFR_BASELINE_MAX_DAYS"],
        bp_max_age_days=app.config["CDS_BP_MAX_AGE_DAYS"],
        potassium_high_default=app.config["CDS_POTASSIUM_HIGH_DEFAULT"],
        course_max_gap_days=app.config["CDS_COURSE_MAX_GAP_DAYS"],
        course_default_span_days=app.config["CDS_COURSE_DEFAULT_SPAN_DAYS"],
        potassium_near_limit=app.config["CDS_POTASSIUM_NEAR_LIMIT"],
    )
    workers = int(app.config["CDS_FHIR_WORKERS"])
    session = deadline_session(pool_size=workers)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fhir")
    chart_settings = ChartSettings(
        policy=FhirServerPolicy(parse_allowed_servers(app.config["CDS_FHIR_ALLOWED_SERVERS"])),
        session=session,
        executor=executor,
        allow_unauthenticated=bool(app.config["CDS_ALLOW_UNAUTHENTICATED_FHIR"]),
        max_pages=int(app.config["CDS_FHIR_MAX_PAGES"]),
        host_limits=HostLimits(int(app.config["CDS_FHIR_MAX_PER_HOST"])),
    )
    # Storage: audit trail and feedback (SQLite by default), then what records through it and
    # what reads past overrides back for repeated alerts.
    storage, writer, hash_key = init_storage(app)
    app.extensions[RECORDER_EXTENSION] = Recorder(
        storage,
        writer,
        hash_key,
        knowledge.override_reason_displays,
        feedback_slots=int(app.config["CDS_FEEDBACK_CONCURRENCY"]),
    )
    app.extensions[SERVICE_EXTENSION] = CdsService(
        knowledge,
        chart_settings,
        deadline_ms=int(app.config["CDS_REQUEST_DEADLINE_MS"]),
        clock=app.config["CDS_CLOCK"],
        overrides=StoredOverrides(storage, hash_key),
        repeat_window_days=int(app.config["CDS_REPEAT_WINDOW_DAYS"]),
        max_draft_orders=int(app.config["CDS_MAX_DRAFT_ORDERS"]),
        max_cards=int(app.config["CDS_MAX_CARDS"]),
    )
    app.extensions[CLOSERS_EXTENSION] = [session.close, lambda: executor.shutdown(wait=False)]
    readiness = Readiness(
        storage, app.config["CDS_REDIS_URL"], timeout_ms=int(app.config["CDS_READY_TIMEOUT_MS"])
    )
    app.extensions[READINESS_EXTENSION] = readiness
    app.extensions[CLOSERS_EXTENSION].append(readiness.close)
    app.extensions[CLOSERS_EXTENSION].append(lambda: shutdown_storage(app))
    app.config["CDS_SETTINGS_FINGERPRINT"] = settings_fingerprint(
        app.config,
        knowledge.full_version,
        f"{storage.database.dialect}:{storage.url.host or ''}:{storage.url.port or ''}"
        f"/{storage.url.database or ''}",
        hash_key,
    )
    app.cli.add_command(db_cli)

    register_error_handlers(app)
    app.before_request(_check_header_sizes)  # before the JWT check reads Authorization
    security.init_security(app)
    app.register_blueprint(bp)
    app.register_blueprint(docs_bp)
    app.register_blueprint(analytics_bp)
    app.register_blueprint(metrics_bp)
    app.after_request(_no_store)
    return app


def close_app(app: Flask) -> None:
    """Release sockets, threads and database connections (tests and orderly shutdown)."""
    for closer in app.extensions.get(CLOSERS_EXTENSION, []):
        closer()
    app.extensions[CLOSERS_EXTENSION] = []


def register_error_handlers(app: Flask) -> None:
    """One JSON shape for every error; no traceback ever reaches the client."""

    @app.errorhandler(CdsError)
    def _cds_error(exc: CdsError) -> Response:
        if isinstance(exc, ReplayCacheUnavailable):  # database outages count where they occur
            metrics.REDIS_ERRORS.inc()
        return _json_error(exc.status, exc.document(), exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        allow = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        return _json_error(status, error_document(status, exc.name, exc.description), allow)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        body = error_document(
            500,
            "Internal Server Error",
            "The service failed unexpectedly; the error has been logged.",
        )
        return _json_error(500, body, {})


def _json_error(status: int, body: dict[str, Any], headers: Mapping[str, str]) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers)
    return response


def _check_header_sizes() -> None:
    """Refuse a header line longer than MAX_HEADER_FIELD_BYTES with the JSON error shape."""
    for name, value in request.headers.items():
        if len(name) + len(value) > MAX_HEADER_FIELD_BYTES:
            raise HeaderTooLarge(
                f"The {name[:64]} header is longer than {MAX_HEADER_FIELD_BYTES} bytes"
            )


def _no_store(response: Response) -> Response:
    """Hook answers and errors carry patient-specific guidance: never cache them."""
    if request.method == "POST":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _configure_logging(log_format: LogFormat) -> None:
    """Log to stderr in ``CDS_LOG_FORMAT`` unless something (gunicorn, pytest) configured it."""
    if not logging.getLogger().handlers:
        configure_root(log_format)
