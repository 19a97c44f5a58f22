"""Play the EHR's side of FHIR: read the patient and answer prefetch templates from a server.

``FhirReader`` reads as a CDS Client would before it calls a service, and turns each failure
into a message a person can act on; the error-text helpers below also explain what the CDS
service answered (``service_calls``).
"""

from __future__ import annotations

from typing import Any

import requests

from cds_service.cli.exit_codes import EXIT_USAGE
from cds_service.cli.rendering import Progress
from cds_service.errors import CliError
from fhir_mappings.bundles import (
    error_outcome,
    is_bundle,
    merged_searchset,
    next_link,
    operation_outcome_texts,
    resource_ids,
    search_matches,
)
from fhir_mappings.readers import is_resource_of

FHIR_JSON = "application/fhir+json"
MAX_PAGES = 20


class FhirReader:
    """Read from the patient's FHIR server as the EHR would, with errors a person can act on."""

    def __init__(
        self,
        base: str,
        token: str | None,
        session: requests.Session,
        timeout: float,
        progress: Progress,
    ) -> None:
        self.base = base.rstrip("/")
        self.session = session
        self.timeout = timeout
        self.progress = progress
        self.headers = {"Accept": FHIR_JSON}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def get(self, path_or_url: str, label: str) -> requests.Response:
        """GET one path under the base (or an absolute URL), reporting it as a progress step."""
        with self.progress.step(label) as step:
            response = self._get(path_or_url, label)
            step["result"] = f"HTTP {response.status_code}"
        return response

    def _get(self, path_or_url: str, label: str) -> requests.Response:
        absolute = path_or_url.startswith(("http://", "https://"))
        url = path_or_url if absolute else f"{self.base}/{path_or_url}"
        try:
            return self.session.get(url, headers=self.headers, timeout=self.timeout)
        except requests.Timeout as exc:
            raise CliError(
                f"The FHIR server {self.base} did not answer within {self.timeout:g} s "
                f"({label}); raise --timeout or check the server"
            ) from exc
        except requests.ConnectionError as exc:
            raise CliError(
                f"Cannot reach the FHIR server at {self.base}: {connection_reason(exc)}. "
                "Is it running, and is --fhir-server its base URL "
                "(e.g. http://127.0.0.1:8190/fhir)?"
            ) from exc
        except requests.RequestException as exc:
            raise CliError(f"Cannot query {url}: {exc}", EXIT_USAGE) from exc

    def read_patient(self, patient_id: str) -> dict[str, Any]:
        """Read the Patient; a wrong id or base URL stops here with what to check."""
        response = self.get(f"Patient/{patient_id}", f"GET Patient/{patient_id}")
        if response.status_code in (404, 410):
            known = self._some_patient_ids()
            hint = f" Patients on this server include: {', '.join(known)}." if known else ""
            raise CliError(
                f"Patient '{patient_id}' was not found on the FHIR server {self.base} "
                f"(HTTP {response.status_code}). --patient takes the server's resource id "
                f"(Patient.id), not a name or MRN.{hint}"
            )
        if response.status_code in (401, 403):
            raise CliError(
                f"The FHIR server {self.base} refused to read Patient/{patient_id} "
                f"(HTTP {response.status_code}): pass an access token with --fhir-token"
            )
        body = json_or_none(response)
        if not response.ok:
            raise CliError(
                f"The FHIR server {self.base} answered HTTP {response.status_code} for "
                f"Patient/{patient_id}: {fhir_error_text(body, response)}"
            )
        if not is_resource_of(body, "Patient"):
            raise CliError(
                f"{self.base}/Patient/{patient_id} did not return a FHIR Patient; is "
                "--fhir-server the FHIR base URL (the one /metadata lives under)?"
            )
        return body

    def _some_patient_ids(self) -> list[str]:
        """A few ids from the server, so a typo'd id can be corrected at once."""
        try:
            response = self.session.get(
                f"{self.base}/Patient",
                params={"_count": "5", "_elements": "id"},
                headers=self.headers,
                timeout=self.timeout,
            )
        except requests.RequestException:
            return []
        if not response.ok:
            return []
        return resource_ids(json_or_none(response), "Patient")

    def prefetch_value(self, key: str, query: str) -> Any:
        """Answer one template the way the spec asks of a client (#prefetch-template).

        A read that finds nothing is ``null``; a search is one searchset Bundle with every page
        merged; a failed query sends an OperationOutcome in its place.
        """
        with self.progress.step(f"prefetch {key}") as step:
            response = self._get(query, f"prefetch {key}")
            body = json_or_none(response)
            if "?" not in query and response.status_code in (404, 410):
                step["result"] = f"HTTP {response.status_code}, sending null (no data)"
                return None
            if not response.ok or not isinstance(body, dict):
                step["result"] = f"HTTP {response.status_code}, sending an OperationOutcome"
                if is_resource_of(body, "OperationOutcome"):
                    return body
                return error_outcome(f"HTTP {response.status_code} from {response.url}")
            if not is_bundle(body):
                step["result"] = f"HTTP {response.status_code}, {body.get('resourceType')}"
                return body
            pages = self._all_pages(key, body)
            merged = merged_searchset(pages)
            matches = search_matches(merged)
            step["result"] = f"HTTP {response.status_code}, {matches} resource(s)" + (
                f" in {len(pages)} pages" if len(pages) > 1 else ""
            )
            return merged

    def _all_pages(self, key: str, first: dict[str, Any]) -> list[dict[str, Any]]:
        """The first page and those behind its ``next`` links, up to MAX_PAGES."""
        pages = [first]
        while (url := next_link(pages[-1])) is not None and len(pages) < MAX_PAGES:
            response = self._get(url, f"prefetch {key} page {len(pages) + 1}")
            body = json_or_none(response)
            if not response.ok or not isinstance(body, dict):
                break
            pages.append(body)
        return pages


def json_or_none(response: requests.Response) -> Any:
    """The parsed JSON body, or None when the body is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def fhir_error_text(body: Any, response: requests.Response) -> str:
    """The diagnostics of an OperationOutcome, or the start of the body text."""
    if is_resource_of(body, "OperationOutcome"):
        return "; ".join(operation_outcome_texts(body)) or "OperationOutcome without text"
    return excerpt(response.text)


def excerpt(text: str, limit: int = 300) -> str:
    """Collapse whitespace and cut to ``limit`` characters, for one readable error line."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def connection_reason(exc: requests.ConnectionError) -> str:
    """Name why a connection failed (refused, unknown host, ...) without the urllib3 noise."""
    text = str(exc)
    for marker in (
        "Connection refused",
        "Name or service not known",
        "No route to host",
        "Temporary failure in name resolution",
        "Connection reset",
    ):
        if marker in text:
            return marker.lower()
    return excerpt(text, 200)
