"""Voclosporin (LUPKYNIS) CDS Hooks 2.0 service.

``create_app(test_config=None)``: defaults -> environment (``CDS_*``) -> test config. The
knowledge data is loaded and validated here, once, so bad data or a bad setting stops start-up.
Run with ``flask --app cds_service run`` or ``gunicorn 'cds_service:create_app()'``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import requests
from flask import Flask, Response, request
from requests.adapters import HTTPAdapter

from cds_service import security
from cds_service.api import bp
from cds_service.chart import ChartSettings
from cds_service.config import from_environment
from cds_service.docs import docs_bp
from cds_service.errors import register_error_handlers
from cds_service.fhir_access import FhirServerPolicy, parse_allowed_servers
from cds_service.recording import init_recording
from cds_service.service import CdsService
from fhir_mappings.knowledge import load_knowledge

log = logging.getLogger(__name__)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app; every dependency is created here and closed at teardown."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.update(from_environment())
    app.config["CDS_CLOCK"] = lambda: datetime.now(UTC)
    if test_config:
        app.config.update(test_config)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    _configure_logging(app)

    knowledge = load_knowledge().with_local_policy(
        egfr_baseline_max_days=app.config["CDS_EGFR_BASELINE_MAX_DAYS"],
        bp_max_age_days=app.config["CDS_BP_MAX_AGE_DAYS"],
        potassium_high_default=app.config["CDS_POTASSIUM_HIGH_DEFAULT"],
    )
    workers = int(app.config["CDS_FHIR_WORKERS"])
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=workers, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fhir")
    chart_settings = ChartSettings(
        policy=FhirServerPolicy(parse_allowed_servers(app.config["CDS_FHIR_ALLOWED_SERVERS"])),
        session=session,
        executor=executor,
        allow_unauthenticated=bool(app.config["CDS_ALLOW_UNAUTHENTICATED_FHIR"]),
        max_pages=int(app.config["CDS_FHIR_MAX_PAGES"]),
    )
    app.extensions["cds_service"] = CdsService(
        knowledge,
        chart_settings,
        deadline_ms=int(app.config["CDS_REQUEST_DEADLINE_MS"]),
        clock=app.config["CDS_CLOCK"],
    )
    app.extensions["cds_closers"] = [session.close, lambda: executor.shutdown(wait=False)]

    register_error_handlers(app)
    security.init_security(app)
    init_recording(app)
    app.register_blueprint(bp)
    app.register_blueprint(docs_bp)
    app.after_request(_no_store)
    return app


def _no_store(response: Response) -> Response:
    """Hook answers and errors carry patient-specific guidance: never cache them."""
    if request.method == "POST":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _configure_logging(app: Flask) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )


def close_app(app: Flask) -> None:
    """Release sockets, threads and database connections (tests and orderly shutdown)."""
    for closer in app.extensions.get("cds_closers", []):
        closer()
    app.extensions["cds_closers"] = []
