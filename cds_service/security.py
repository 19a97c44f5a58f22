"""Trusting CDS clients (JWT, CDS Hooks 2.0 #trusting-cds-clients) and CORS for browser clients.

When ``CDS_JWT_ISSUERS`` is set, every service call and feedback call must carry a valid
``Authorization: Bearer <JWT>``; failures get a bare 401 (best practice: no detail). Discovery,
health, the contract and CORS preflights stay open. ``file:`` key sets are read at start-up, so
a missing or broken one stops the service. When unset, authentication is off and the service says
so at start-up and in ``/healthz``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask, Response, current_app, request

from cds_service.auth import (
    AuthenticationError,
    AuthUnavailable,
    ClientAuthenticator,
    MemoryReplayCache,
    RedisReplayCache,
    ReplayCache,
    bearer_token,
    endpoint_audience,
    issuer_key_sources,
)
from cds_service.logs import escape_controls, loggable

log = logging.getLogger(__name__)
PROTECTED_PREFIX = "/cds-services/"


def init_security(app: Flask) -> None:
    """Turn on JWT checks when issuers are configured, and CORS when origins are."""
    issuers = app.config["CDS_JWT_ISSUERS"]
    if issuers is not None:  # set but empty must not mean "off"
        app.extensions["cds_authenticator"] = _authenticator(app, issuers)
        app.config["CDS_AUTH_STATE"] = "on: JWT required on service and feedback calls"
        app.before_request(_require_jwt)
    else:
        app.config["CDS_AUTH_STATE"] = "OFF: CDS_JWT_ISSUERS is not set; any caller is trusted"
        log.warning(
            "CLIENT AUTHENTICATION IS OFF: set CDS_JWT_ISSUERS before exposing this "
            "service to patient data"
        )
    origins = app.config["CDS_CORS_ORIGINS"]
    if origins:
        app.config["CDS_CORS_ORIGIN_SET"] = frozenset(o.strip() for o in origins.split(","))
        app.before_request(_preflight)
        app.after_request(_cors_headers)


def _authenticator(app: Flask, issuers: Any) -> ClientAuthenticator:
    """Build the verifier and its replay cache from config; bad config stops start-up."""
    if not issuers:
        raise RuntimeError("CDS_JWT_ISSUERS names no issuer, so every client would be refused")
    if not app.config["CDS_FHIR_ALLOWED_SERVERS"]:
        log.error(
            "CDS_FHIR_ALLOWED_SERVERS is not set: the service may query any public https FHIR "
            "server a caller names; list your EHRs' FHIR base URLs in production"
        )
    if not app.config["CDS_PUBLIC_BASE_URL"]:
        raise RuntimeError(
            "CDS_PUBLIC_BASE_URL must be set when CDS_JWT_ISSUERS is set: the "
            "JWT audience is the public URL of each endpoint"
        )
    try:
        sources = issuer_key_sources(issuers)
    except ValueError as exc:
        raise RuntimeError(str(exc)) from exc
    cache: ReplayCache
    if app.config["CDS_REDIS_URL"]:
        redis_cache = RedisReplayCache(app.config["CDS_REDIS_URL"])
        app.extensions.setdefault("cds_closers", []).append(redis_cache.close)
        cache = redis_cache
    else:
        # Never silent: under gunicorn (production) this is an ERROR line; the packaged
        # gunicorn config refuses more than one worker like this (gunicorn_conf).
        (
            log.error
            if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn")
            else log.warning
        )(
            "JWT replay cache is in-process (CDS_REDIS_URL unset): replays across "
            "workers or instances are not detected; set CDS_REDIS_URL in production"
        )
        cache = MemoryReplayCache()
    authenticator = ClientAuthenticator(
        sources, cache, leeway_seconds=int(app.config["CDS_JWT_LEEWAY_SECONDS"])
    )
    app.extensions.setdefault("cds_closers", []).append(authenticator.close)
    try:
        # A missing or broken key file must stop start-up, not be a 503 at the first call.
        authenticator.check_key_files()
    except ValueError as exc:
        raise RuntimeError(str(exc)) from exc
    return authenticator


def _require_jwt() -> None:
    """Refuse a service or feedback POST whose bearer JWT does not verify."""
    if request.method != "POST" or not request.path.startswith(PROTECTED_PREFIX):
        return
    authenticator: ClientAuthenticator = current_app.extensions["cds_authenticator"]
    audience = endpoint_audience(current_app.config["CDS_PUBLIC_BASE_URL"], request.path)
    try:
        authenticator.verify(bearer_token(request.headers.get("Authorization")), audience)
    except AuthenticationError as exc:
        log.info(
            "JWT refused: %s (iss=%s kid=%s)",
            escape_controls(exc.reason),
            loggable(exc.iss),
            loggable(exc.kid),
        )
        raise
    except AuthUnavailable as exc:
        log.error("cannot verify client JWTs: %s", escape_controls(str(exc)))
        raise


def _allowed_origin() -> str | None:
    """Return the CORS origin to echo for this request, or None when it is not allowed."""
    origin = request.headers.get("Origin")
    allowed: frozenset[str] = current_app.config["CDS_CORS_ORIGIN_SET"]
    if origin and origin in allowed:
        return origin
    if "*" in allowed:
        return "*"
    return None


def _preflight() -> Response | None:
    """Answer CORS preflights before authentication (browsers send them without a JWT)."""
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    return Response(status=204)


def _cors_headers(response: Response) -> Response:
    """Add the CORS headers for an allowed origin."""
    origin = _allowed_origin()
    if origin is None:
        return response
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
    response.headers["Access-Control-Max-Age"] = "600"
    if origin != "*":
        response.headers["Vary"] = "Origin"
    return response
