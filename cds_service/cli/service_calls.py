"""Call the CDS service as a CDS Client does: find it by discovery, then POST the hook.

Each failure (unreachable, an HTTP error, not a CDS Hooks endpoint) becomes a ``CliError``
that says what to check; ``STATUS_HINTS`` says what to try after an error answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from cds_service.cli.ehr_client import connection_reason, excerpt, fhir_error_text, json_or_none
from cds_service.cli.exit_codes import EXIT_HTTP_ERROR, EXIT_USAGE
from cds_service.cli.rendering import Progress
from cds_service.cli.signing import JwtSigner
from cds_service.errors import CliError


@dataclass(frozen=True)
class ServiceTarget:
    """Where the CDS service lives: its discovery URL and (once known) the service id."""

    services_url: str  # {base}/cds-services, the discovery endpoint
    service_id: str | None

    @property
    def url(self) -> str:
        return f"{self.services_url}/{self.service_id}"


def parse_service_target(service_url: str, service_id: str | None) -> ServiceTarget:
    """Accept ``{base}/cds-services/{id}``, or a base (with or without /cds-services) plus id."""
    parts = urlsplit(service_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"--service-url must be an http(s) URL, got {service_url!r}", EXIT_USAGE)
    url = service_url.rstrip("/")
    if service_id:
        base = url if url.endswith("/cds-services") else url + "/cds-services"
        return ServiceTarget(base, service_id)
    head, sep, tail = url.rpartition("/cds-services/")
    if sep and tail and "/" not in tail:
        return ServiceTarget(head + "/cds-services", tail)
    base = url if url.endswith("/cds-services") else url + "/cds-services"
    return ServiceTarget(base, None)  # chosen from discovery by --hook


def discover(
    target: ServiceTarget,
    session: requests.Session,
    signer: JwtSigner,
    timeout: float,
    progress: Progress,
) -> list[dict[str, Any]]:
    """GET {base}/cds-services; the services array, or an error that says what went wrong."""
    url = target.services_url
    with progress.step(f"GET {url}") as step:
        try:
            response = session.get(
                url, headers={"Accept": "application/json", **signer.headers(url)}, timeout=timeout
            )
        except requests.Timeout as exc:
            raise CliError(f"The CDS service at {url} did not answer within {timeout:g} s") from exc
        except requests.ConnectionError as exc:
            raise _unreachable(url, exc) from exc
        step["result"] = f"HTTP {response.status_code}"
    body = json_or_none(response)
    if not response.ok:
        raise CliError(
            f"Discovery {url} answered HTTP {response.status_code}: "
            f"{service_error_text(body, response)}. Is --service-url a CDS Hooks "
            "service (its discovery endpoint is {base}/cds-services)?",
            EXIT_HTTP_ERROR,
        )
    services = body.get("services") if isinstance(body, dict) else None
    if not isinstance(services, list):
        raise CliError(
            f"{url} is not a CDS Hooks discovery endpoint (no 'services' array); "
            "check --service-url",
            EXIT_HTTP_ERROR,
        )
    return [s for s in services if isinstance(s, dict)]


def choose_service(
    services: Sequence[Mapping[str, Any]], service_id: str | None, hook: str | None, url: str
) -> Mapping[str, Any]:
    """Pick the entry to call: by id (and hook, when the id serves several), else by hook.

    Several entries for one hook: the one whose id discovery lists for several hooks wins, as
    a client doing #update-stale-guidance would register it (``voclosporin-orders``).
    """
    listed = ", ".join(f"{s.get('id')} ({s.get('hook')})" for s in services) or "none"
    if service_id:
        matches = [s for s in services if s.get("id") == service_id]
        if not matches:
            raise CliError(
                f"{url} lists no service '{service_id}'. Services: {listed}. An id discovery "
                "does not list can still be called with --hook and without --prefetch.",
                EXIT_USAGE,
            )
        if hook:  # a hook the id does not serve is sent anyway: the service's 400 says why
            return next((s for s in matches if s.get("hook") == hook), matches[0])
        if len(matches) > 1:
            hooks = ", ".join(str(s.get("hook")) for s in matches)
            raise CliError(f"Service '{service_id}' serves {hooks}: give --hook", EXIT_USAGE)
        return matches[0]
    matches = [s for s in services if hook is None or s.get("hook") == hook]
    if hook is not None and len(matches) > 1:
        shared = [s for s in matches if _hook_count(services, s.get("id")) > 1]
        if len(shared) == 1:
            return shared[0]
    if len(matches) != 1:
        raise CliError(
            f"Cannot tell which service to call at {url}: give --service-id, or a "
            f"--service-url ending in /cds-services/{{id}}. Services: {listed}",
            EXIT_USAGE,
        )
    return matches[0]


def _hook_count(services: Sequence[Mapping[str, Any]], service_id: object) -> int:
    """How many distinct hooks discovery lists for ``service_id``."""
    return len({str(s.get("hook")) for s in services if s.get("id") == service_id})


def service_error_text(body: Any, response: requests.Response) -> str:
    """Our error body, a FHIR OperationOutcome (3.0 style), or the start of the text."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        text = str(error.get("title") or "")
        if error.get("detail"):
            text += f": {error['detail']}"
        for field, problems in (error.get("fields") or {}).items():
            text += f"\n  {field}: {problems}"
        return text
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return fhir_error_text(body, response)
    return excerpt(response.text) or response.reason or "(empty body)"


STATUS_HINTS = {
    401: "The service wants a client JWT: sign one with --jwt-key PEM --jwt-iss ISS --jwt-kid "
    "KID (the service must trust that iss and key), or pass --jwt TOKEN.",
    404: "No such service: check the id in --service-url against GET {services}.",
    412: "The service lacks chart data and could not fetch it. Add --prefetch, or pass "
    "--fhir-token, or (sandbox only) let it query the FHIR server without a token: "
    "CDS_ALLOW_UNAUTHENTICATED_FHIR=true and the server in CDS_FHIR_ALLOWED_SERVERS.",
}


def send_hook(
    target: ServiceTarget,
    request: Mapping[str, Any],
    session: requests.Session,
    signer: JwtSigner,
    timeout: float,
    progress: Progress,
) -> tuple[requests.Response, float]:
    """POST the hook request to the service; the response and the seconds it took."""
    url = target.url
    started = time.monotonic()
    with progress.step(f"POST {url}") as step:
        try:
            response = session.post(
                url,
                data=json.dumps(request),
                headers={
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    **signer.headers(url),
                },
                timeout=timeout,
            )
        except requests.Timeout as exc:
            raise CliError(
                f"The CDS service {url} did not answer within {timeout:g} s (--timeout)"
            ) from exc
        except requests.ConnectionError as exc:
            raise _unreachable(url, exc) from exc
        step["result"] = f"HTTP {response.status_code}"
    return response, time.monotonic() - started


def _unreachable(url: str, exc: requests.ConnectionError) -> CliError:
    """The error for a CDS service that does not answer at all, with what to check."""
    return CliError(
        f"Cannot reach the CDS service at {url}: {connection_reason(exc)}. Is it "
        "running (voclosporin-cds serve), and is --service-url right?"
    )
