"""The service's one error tree. Flask-free: ``cds_service.app`` turns it into HTTP, once.

Every error the service raises on purpose derives from ``CdsError`` and carries its HTTP status
and title, so one handler writes every JSON error body and no module translates by hand::

    CdsError (500)                          every error we raise on purpose
    ├── BadRequest (400)                    malformed JSON or a field that breaks the spec; names it
    ├── Unauthorized (401)                  no or bad credentials (client JWT, analytics token)
    │   └── AuthenticationError             the client JWT is refused; ``reason`` is for logs only
    ├── Forbidden (403)                     a resource this deployment keeps closed (analytics)
    ├── NotFound (404)                      unknown service id
    │   └── UnknownCardError                feedback names a card this service never issued
    ├── PreconditionFailed (412)            prefetch missing and the FHIR server cannot be used
    ├── LimitExceeded (413)                 the call is bigger than a configured bound; names it
    │   ├── TooManyDraftOrders              more draft orders than CDS_MAX_DRAFT_ORDERS
    │   └── TooManyCards                    the answer would hold more than CDS_MAX_CARDS cards
    ├── UnsupportedMediaType (415)          body is not application/json
    ├── HeaderTooLarge (431)                a request header over MAX_HEADER_FIELD_BYTES
    ├── ServiceUnavailable (503)            a dependency the answer needs is down
    │   ├── StorageUnavailableError         the audit/feedback database cannot be used now
    │   ├── FeedbackBusy                    every feedback write slot is taken (Retry-After)
    │   ├── CardNotYetRecorded              the card's audit record waits in the spool (Retry-After)
    │   └── AuthUnavailable                 client JWTs cannot be checked now (never let through)
    │       ├── ReplayCacheUnavailable      the shared replay cache (Redis) cannot be reached
    │       └── KeySetUnavailable           the issuer's JWK Set cannot be fetched or read
    ├── FhirError (502)                     the EHR's FHIR server, as this call meets it
    │   ├── FhirServerNotAllowed            the fhirServer URL breaks the SSRF policy
    │   └── FhirFetchError                  a read or search failed; the message is card-safe
    └── CliError                            a ``voclosporin-cds`` command failed; carries its
                                            process exit code (see ``cds_service.cli``)

``FhirError`` never reaches a client as such: a refused or failed FHIR server leaves data
unavailable (named on the data-unavailable card) or, for required data, a ``PreconditionFailed``.
The knowledge-data error that stops start-up (``fhir_mappings.knowledge.KnowledgeError``) stays
outside this tree: it belongs to the data, not to a request.

JSON body: ``{"error": {"status": 400, "title": "Bad Request", "detail": "...", "fields": {...}}}``;
``detail`` is left out when empty (a refused JWT gets a bare 401, by best practice).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar


class CdsError(Exception):
    """Root of every error the service raises on purpose; carries its HTTP status and title."""

    status: ClassVar[int] = 500
    title: str = "Internal Server Error"  # a class default; an instance may name itself
    # Headers every error of the class is answered with (``headers=`` adds to them).
    default_headers: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        detail: str = "",
        *,
        fields: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        title: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields
        self.extra = extra or {}
        self.headers = {**self.default_headers, **(headers or {})}
        if title is not None:
            self.title = title

    def document(self) -> dict[str, Any]:
        """The JSON error body for this error."""
        return error_document(self.status, self.title, self.detail, self.fields, self.extra)


def error_document(
    status: int,
    title: str,
    detail: str | None = None,
    fields: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The uniform JSON error body (also used for werkzeug's own HTTP errors)."""
    body: dict[str, Any] = {"status": status, "title": title}
    if detail:
        body["detail"] = detail
    if fields:
        body["fields"] = fields
    body.update(extra or {})
    return {"error": body}


class BadRequest(CdsError):
    status, title = 400, "Bad Request"


class Unauthorized(CdsError):
    status, title = 401, "Unauthorized"
    default_headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


class AuthenticationError(Unauthorized):
    """The client JWT is not acceptable: answer a bare 401 and log ``reason`` only."""

    def __init__(
        self,
        reason: str,
        *,
        iss: str | None = None,
        kid: str | None = None,
        jti: str | None = None,
    ) -> None:
        super().__init__("")
        self.reason = reason
        self.iss = iss
        self.kid = kid
        self.jti = jti

    def __str__(self) -> str:
        return self.reason


class Forbidden(CdsError):
    status, title = 403, "Forbidden"


class NotFound(CdsError):
    status, title = 404, "Not Found"


class UnknownCardError(NotFound):
    """Feedback names card uuids this service never issued; nothing was stored."""

    def __init__(self, service_id: str, card_uuids: Iterable[str]) -> None:
        self.service_id = service_id
        self.card_uuids: tuple[str, ...] = tuple(card_uuids)
        super().__init__(
            f"No card issued by service '{service_id}' has uuid "
            + ", ".join(self.card_uuids)
            + "; nothing was stored",
            extra={"unknownCards": list(self.card_uuids)},
        )


class PreconditionFailed(CdsError):
    status, title = 412, "Precondition Failed"


class LimitExceeded(CdsError):
    """The call is bigger than a bound the operator set; nothing was answered or recorded.

    413 like a body over ``MAX_CONTENT_LENGTH``: the client sent more than this service takes.
    """

    status, title = 413, "Content Too Large"


class TooManyDraftOrders(LimitExceeded):
    """More draft orders than ``CDS_MAX_DRAFT_ORDERS``: refused before any work is done."""

    def __init__(self, field: str, count: int, limit: int) -> None:
        super().__init__(
            f"The request holds {count} draft orders; this service checks at most {limit} per "
            "call (CDS_MAX_DRAFT_ORDERS). Send the orders in smaller groups.",
            fields={field: [f"at most {limit} entries"]},
            extra={"limit": limit, "count": count},
        )


class TooManyCards(LimitExceeded):
    """The answer would hold more cards than ``CDS_MAX_CARDS``: refused rather than cut.

    Cutting would drop cards without the clinician knowing which; the whole answer is refused,
    so the EHR shows that the check failed, and nothing goes into the audit trail.
    """

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(
            f"The checks found {count} problems, more than the {limit} cards this service "
            "answers per call (CDS_MAX_CARDS); no card was sent. Send fewer draft orders per "
            "call.",
            extra={"limit": limit, "count": count},
        )


class UnsupportedMediaType(CdsError):
    status, title = 415, "Unsupported Media Type"


class HeaderTooLarge(CdsError):
    """A request header line is longer than the service reads; answered as JSON, not gunicorn's
    HTML (gunicorn's own limit is set higher, see ``cds_service.cli.commands``)."""

    status, title = 431, "Request Header Fields Too Large"


class ServiceUnavailable(CdsError):
    status, title = 503, "Service Unavailable"


class StorageUnavailableError(ServiceUnavailable):
    """The database cannot be reached or used now.

    ``str(error)`` is the reason, for logs; the client is told only that it may retry.
    """

    default_headers: ClassVar[dict[str, str]] = {"Retry-After": "30"}

    def __init__(self, reason: str, *, detail: str = "", title: str | None = None) -> None:
        super().__init__(
            detail or "The audit database cannot be reached; try again later.", title=title
        )
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class FeedbackBusy(ServiceUnavailable):
    """Every feedback write slot is taken (a slow database): retry soon, keep the hook path free."""

    default_headers: ClassVar[dict[str, str]] = {"Retry-After": "2"}

    def __init__(self) -> None:
        super().__init__("Feedback is busy; please retry shortly")


class CardNotYetRecorded(ServiceUnavailable):
    """The card was issued but its audit record is still in the local spool: retry later."""

    default_headers: ClassVar[dict[str, str]] = {"Retry-After": "5"}

    def __init__(self) -> None:
        super().__init__(
            "The card's audit record is not yet in the database; please retry; nothing was stored"
        )


class AuthUnavailable(ServiceUnavailable):
    """A dependency of the JWT check is down: 503 rather than let an unchecked token through.

    ``str(error)`` is the reason, for logs; the client is told only that it may retry.
    """

    def __init__(self, reason: str) -> None:
        super().__init__("Client authentication is temporarily unavailable")
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class ReplayCacheUnavailable(AuthUnavailable):
    """The shared replay cache cannot be reached, so a replayed token could not be detected."""


class KeySetUnavailable(AuthUnavailable):
    """The issuer's JWK Set cannot be fetched or read, so no signature can be checked."""


class FhirError(CdsError):
    status, title = 502, "Bad Gateway"


class FhirServerNotAllowed(FhirError):
    """The fhirServer URL breaks the SSRF policy; the message names the host and the rule."""


class FhirFetchError(FhirError):
    """A FHIR read or search failed; the message is safe to show on a card (no token, no body).

    ``log_reason`` is what logs may say: the message without an OperationOutcome's free text
    (``diagnostics`` can hold a patient's name and birth date), just its issue codes.
    """

    def __init__(self, message: str, *, log_reason: str | None = None) -> None:
        super().__init__(message)
        self.log_reason = log_reason or message


class CliError(CdsError):
    """A CLI failure the user can act on: the message says what happened and what to try."""

    title = "voclosporin-cds error"

    def __init__(self, message: str, exit_code: int = 3) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # 3: could not reach or use a server (cds_service.cli)
