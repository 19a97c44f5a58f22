"""The service's error tree and its single JSON error handler.

    CdsError (500)                      every error we raise on purpose
    ├── BadRequest (400)                malformed JSON or a field that breaks the spec; names it
    ├── Unauthorized (401)              missing or invalid client JWT (no detail, per best practice)
    ├── NotFound (404)                  unknown service id or unknown card uuid
    ├── PreconditionFailed (412)        prefetch missing and the FHIR server cannot be used
    ├── UnsupportedMediaType (415)      body is not application/json
    └── ServiceUnavailable (503)        a dependency the answer needs is down (e.g. replay cache)

werkzeug's own HTTP errors (405, 413 ...) get the same JSON body. Anything else is a bug: it is
logged with its traceback and answered with a 500 whose body says nothing about the internals.
Body: ``{"error": {"status": 400, "title": "Bad Request", "detail": "...", "fields": {...}}}``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class CdsError(Exception):
    status = 500
    title = "Internal Server Error"

    def __init__(
        self,
        detail: str,
        *,
        fields: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields
        self.extra = extra or {}


class BadRequest(CdsError):
    status, title = 400, "Bad Request"


class Unauthorized(CdsError):
    status, title = 401, "Unauthorized"


class NotFound(CdsError):
    status, title = 404, "Not Found"


class PreconditionFailed(CdsError):
    status, title = 412, "Precondition Failed"


class UnsupportedMediaType(CdsError):
    status, title = 415, "Unsupported Media Type"


class ServiceUnavailable(CdsError):
    status, title = 503, "Service Unavailable"


def error_response(
    status: int,
    title: str,
    detail: str | None = None,
    fields: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body: dict[str, Any] = {"status": status, "title": title}
    if detail:
        body["detail"] = detail
    if fields:
        body["fields"] = fields
    body.update(extra or {})
    response = jsonify({"error": body})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """One JSON shape for every error; no traceback ever reaches the client."""

    @app.errorhandler(CdsError)
    def _cds_error(exc: CdsError) -> Response:
        if isinstance(exc, Unauthorized):
            response = error_response(401, exc.title)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return error_response(exc.status, exc.title, exc.detail, exc.fields, exc.extra)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        response = error_response(exc.code or 500, exc.name, exc.description)
        for header, value in exc.get_headers():
            if header.lower() == "allow":
                response.headers[header] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(
            500,
            "Internal Server Error",
            "The service failed unexpectedly; the error has been logged.",
        )
