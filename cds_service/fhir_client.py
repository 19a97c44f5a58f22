"""The only user of ``requests``: FHIR R4 reads and searches when prefetch is missing.

Every call is bounded by the request's deadline, sends the bearer token only to the allowed
``fhirServer`` (redirects are not followed; paging ``next`` links must stay under the base URL),
and ends in either data or a ``FhirFetchError`` whose message is safe to show on a card (no
token, no response body).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

import requests
import urllib3

from cds_service.errors import FhirFetchError
from cds_service.fhir_policy import safe_next_link
from fhir_mappings.bundles import (
    answer_problem,
    bundle_error,
    bundle_resources,
    is_bundle,
    next_link,
)

log = logging.getLogger(__name__)

Resource = dict[str, Any]
MIN_TIMEOUT_SECONDS = 0.05
# A patient's search page is well under this; anything bigger is a fault, not a chart.
MAX_RESPONSE_BYTES = 32 * 1_048_576


class FhirClient:
    """A small FHIR R4 client for one hook call (one server, one token, one deadline)."""

    def __init__(
        self,
        base_url: str,
        access_token: str | None,
        session: requests.Session,
        deadline: float,
        *,
        connect_timeout: float = 2.0,
        max_pages: int = 20,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = access_token
        self._session = session
        self._deadline = deadline
        self._connect_timeout = connect_timeout
        self._max_pages = max_pages

    def _timeout(self) -> tuple[float, float]:
        remaining = self._deadline - time.monotonic()
        if remaining < MIN_TIMEOUT_SECONDS:
            raise FhirFetchError("request deadline reached before the FHIR query")
        return min(self._connect_timeout, remaining), remaining

    def _get(self, url: str) -> Any:
        headers = {"Accept": "application/fhir+json, application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            response = self._session.get(
                url,
                headers=headers,
                timeout=self._timeout(),
                allow_redirects=False,
                stream=True,
            )
        except requests.Timeout as exc:
            raise FhirFetchError("FHIR server did not answer before the deadline") from exc
        except requests.RequestException as exc:
            raise FhirFetchError(f"FHIR server unreachable ({type(exc).__name__})") from exc
        with response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise FhirFetchError(_status_reason(response))
            raw = self._read_body(response)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise FhirFetchError("FHIR server answered with invalid JSON") from exc
        problem = answer_problem(body)
        if problem is not None:
            raise FhirFetchError(problem)
        return body

    def _read_body(self, response: requests.Response) -> bytes:
        """Read the body by the deadline and up to a size cap.

        The read timeout bounds each socket read, not the whole body: a server that trickles a
        byte at a time would otherwise hold a fetch thread long after the hook call answered.
        """
        body = bytearray()
        try:
            while True:
                if time.monotonic() >= self._deadline:
                    raise FhirFetchError("FHIR server did not answer before the deadline")
                chunk = response.raw.read1(65_536, decode_content=True)
                if not chunk:
                    return bytes(body)
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise FhirFetchError(
                        f"FHIR response larger than {MAX_RESPONSE_BYTES // 1_048_576} MB"
                    )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
                raise FhirFetchError("FHIR server did not answer before the deadline") from exc
            raise FhirFetchError(f"FHIR answer broke off ({type(exc).__name__})") from exc

    def read(self, path: str) -> Resource | None:
        """Read one resource; None when the server says 404."""
        result = self._get(f"{self.base_url}/{path}")
        return result if isinstance(result, dict) else None

    def search(self, path: str) -> list[Resource]:
        """Run a search and follow ``next`` links (bounded) to collect every entry."""
        return list(self.iter_search(path))

    def iter_search(self, path: str) -> Iterator[Resource]:
        """Entries of a search given relative to the base (or as an already-checked URL)."""
        absolute = path.startswith(("http://", "https://"))
        url: str | None = path if absolute else f"{self.base_url}/{path}"
        pages = 0
        while url is not None:
            bundle = self._get(url)
            if bundle is None:
                raise FhirFetchError("FHIR server answered 404 to a search")
            if not is_bundle(bundle):
                raise FhirFetchError("FHIR search did not return a Bundle")
            error = bundle_error(bundle)
            if error is not None:
                raise FhirFetchError(error)
            yield from bundle_resources(bundle)
            pages += 1
            url = next_link(bundle)
            if url is None:
                return
            if pages >= self._max_pages:
                raise FhirFetchError(f"more than {self._max_pages} pages of results")
            if not safe_next_link(self.base_url, url):
                raise FhirFetchError("paging link points outside the FHIR server; not followed")

    def continue_paging(self, bundle: Resource) -> list[Resource]:
        """Entries of a prefetched Bundle plus any pages behind its ``next`` link."""
        entries = bundle_resources(bundle)
        url = next_link(bundle)
        if url is None:
            return entries
        if not safe_next_link(self.base_url, url):
            raise FhirFetchError("prefetch paging link points outside the FHIR server")
        return entries + self.search(url)


def _status_reason(response: requests.Response) -> str:
    reasons = {
        401: "FHIR server refused the token (401)",
        403: "FHIR server denied access (403)",
        429: "FHIR server is rate limiting (429)",
    }
    if response.status_code in reasons:
        return reasons[response.status_code]
    return f"FHIR server error (HTTP {response.status_code})"


def run_concurrently(
    executor: Executor, jobs: dict[str, Callable[[], Any]], deadline: float
) -> dict[str, Any | FhirFetchError]:
    """Run independent fetches at once; each result is its value or a FhirFetchError."""
    futures: dict[str, Future[Any]] = {key: executor.submit(job) for key, job in jobs.items()}
    results: dict[str, Any | FhirFetchError] = {}
    cutoff = deadline + 0.5  # one grace period for the whole call, not one per query
    for key, future in futures.items():
        try:
            results[key] = future.result(timeout=max(cutoff - time.monotonic(), 0))
        except FhirFetchError as exc:
            results[key] = exc
        except TimeoutError:
            future.cancel()
            results[key] = FhirFetchError("FHIR query still running at the request deadline")
        except Exception as exc:  # a bug in one fetch must not fail the whole hook call
            log.exception("FHIR fetch %s failed unexpectedly", key)
            results[key] = FhirFetchError(f"unexpected error while fetching ({type(exc).__name__})")
    return results
