"""The only user of ``requests``: FHIR R4 reads and searches when prefetch is missing.

Every call is bounded by the request's deadline, sends the bearer token only to the allowed
``fhirServer`` (redirects are not followed; paging ``next`` links must stay under the base URL),
and ends in either data or a ``FhirFetchError`` whose message is safe to show on a card (no
token, no response body).

The deadline is whole-request, not per read: socket timeouts bound each connect and each read,
but a server that trickles its status line and headers a byte at a time never trips them. So
the session from ``deadline_session`` uses connections that register their socket with a watchdog
thread while a fetch runs (``deadline_scope``); at the deadline the watchdog shuts the socket
down, the blocked read returns at once and the fetch thread is free again. ``HostLimits`` caps
how many fetches of this process talk to one FHIR host at a time, so one slow server cannot
take every fetch thread. DNS resolution is not covered (the system resolver cannot be
interrupted); an allowlist of FHIR servers (``CDS_FHIR_ALLOWED_SERVERS``) keeps it to known
hosts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
import urllib3.connection
from requests.adapters import HTTPAdapter

from cds_service.errors import FhirFetchError
from cds_service.fhir_policy import safe_next_link
from fhir_mappings.bundles import (
    answer_problem,
    bundle_error,
    bundle_resources,
    is_bundle,
    next_link,
    outcome_issue_codes,
)

log = logging.getLogger(__name__)

Resource = dict[str, Any]
MIN_TIMEOUT_SECONDS = 0.05
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A patient's search page is well under this; anything bigger is a fault, not a chart.
MAX_RESPONSE_BYTES = 32 * 1_048_576


class _Watchdog:
    """One daemon thread that shuts down the sockets of fetches that outlived their deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watched: dict[int, tuple[float, socket.socket]] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self.shut_down = 0  # sockets cut at a deadline (for tests and metrics)

    def watch(self, deadline: float, sock: socket.socket) -> int:
        """Shut ``sock`` down at ``deadline`` unless ``unwatch`` comes first; return a token."""
        with self._cond:
            token = next(self._tokens)
            self._watched[token] = (deadline, sock)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fhir-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()
            return token

    def unwatch(self, token: int) -> None:
        """Forget a socket whose fetch ended (under the lock: it is never shut down after)."""
        with self._cond:
            self._watched.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (deadline, sock) in list(self._watched.items()):
                    if deadline <= now:
                        del self._watched[token]
                        self.shut_down += 1
                        with contextlib.suppress(OSError):  # already closed: nothing to cut
                            sock.shutdown(socket.SHUT_RDWR)
                soonest = min((d for d, _ in self._watched.values()), default=None)
                self._cond.wait(None if soonest is None else max(soonest - now, 0.001))


WATCHDOG = _Watchdog()
_scope = threading.local()


@contextlib.contextmanager
def deadline_scope(deadline: float) -> Iterator[None]:
    """Within the block, every socket this thread opens or reuses is cut at ``deadline``."""
    outer = getattr(_scope, "deadline", None), getattr(_scope, "tokens", [])
    inner = deadline if outer[0] is None else min(deadline, outer[0])  # nested: the earlier
    _scope.deadline, _scope.tokens = inner, []
    try:
        yield
    finally:
        for token in _scope.tokens:
            WATCHDOG.unwatch(token)
        _scope.deadline, _scope.tokens = outer


def _guard(sock: socket.socket | None) -> None:
    """Put ``sock`` under the current thread's deadline, if a fetch is running."""
    deadline = getattr(_scope, "deadline", None)
    if sock is not None and deadline is not None:
        _scope.tokens.append(WATCHDOG.watch(deadline, sock))


class _DeadlineHTTPConnection(urllib3.connection.HTTPConnection):
    """A connection whose socket the watchdog may cut: from TCP connect to the last body byte."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _guard(sock)  # before the TLS handshake: a trickled handshake is cut too
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _guard(self.sock)  # a pooled connection made during an earlier fetch
        super().request(*args, **kwargs)


class _DeadlineHTTPSConnection(urllib3.connection.HTTPSConnection):
    """The https twin of ``_DeadlineHTTPConnection``."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _guard(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _guard(self.sock)
        super().request(*args, **kwargs)


class _DeadlineHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


_DEADLINE_POOLS: dict[str, type[urllib3.HTTPConnectionPool]] = {
    "http": _DeadlineHTTPPool,
    "https": _DeadlineHTTPSPool,
}


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter over the watchdog-aware connection pools."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _DEADLINE_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # SOCKS managers bring their own pools
            manager.pool_classes_by_scheme = _DEADLINE_POOLS
        return manager


def deadline_session(pool_size: int) -> requests.Session:
    """The session FHIR fetches use: no retries, sockets cut at each fetch's deadline."""
    session = requests.Session()
    adapter = _DeadlineAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class HostLimits:
    """At most ``per_host`` fetches of this process talk to one FHIR host at a time.

    A bounded semaphore per (scheme, host, port), made when first needed and dropped when idle,
    so hosts a caller names cannot grow it. A fetch waits for a slot until its deadline.
    """

    def __init__(self, per_host: int) -> None:
        if per_host < 1:
            raise ValueError("per_host must be 1 or more")
        self.per_host = per_host
        self._cond = threading.Condition()
        self._active: dict[tuple[str, str, int | None], int] = {}

    @contextlib.contextmanager
    def slot(self, url: str, deadline: float) -> Iterator[None]:
        """Hold one of the host's slots for the block; ``FhirFetchError`` if none by deadline."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        key = (scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme))
        with self._cond:
            free = self._cond.wait_for(
                lambda: self._active.get(key, 0) < self.per_host,
                timeout=max(deadline - time.monotonic(), 0),
            )
            if not free:
                raise FhirFetchError(
                    f"FHIR server busy: {self.per_host} queries already running to it "
                    "(CDS_FHIR_MAX_PER_HOST) until the deadline"
                )
            self._active[key] = self._active.get(key, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._active[key] -= 1
                if not self._active[key]:
                    del self._active[key]
                self._cond.notify_all()

    def active(self) -> int:
        """How many fetches hold a slot now, over every host."""
        with self._cond:
            return sum(self._active.values())


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
        host_limits: HostLimits | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = access_token
        self._session = session
        self._deadline = deadline
        self._connect_timeout = connect_timeout
        self._max_pages = max_pages
        self._host_limits = host_limits

    def _timeout(self) -> tuple[float, float]:
        remaining = self._deadline - time.monotonic()
        if remaining < MIN_TIMEOUT_SECONDS:
            raise FhirFetchError("request deadline reached before the FHIR query")
        return min(self._connect_timeout, remaining), remaining

    def _get(self, url: str) -> Any:
        limit = (
            self._host_limits.slot(url, self._deadline)
            if self._host_limits is not None
            else contextlib.nullcontext()
        )
        with limit, deadline_scope(self._deadline):
            raw = self._fetch(url)
        if raw is None:
            return None
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise FhirFetchError("FHIR server answered with invalid JSON") from exc
        problem = answer_problem(body)
        if problem is not None:
            raise FhirFetchError(problem, log_reason=outcome_log_reason(problem, body))
        return body

    def _fetch(self, url: str) -> bytes | None:
        """The body of a 200 answer, None for 404; any other outcome is a ``FhirFetchError``."""
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
            if time.monotonic() >= self._deadline:  # the watchdog cut the socket
                raise FhirFetchError("FHIR server did not answer before the deadline") from exc
            raise FhirFetchError(f"FHIR server unreachable ({type(exc).__name__})") from exc
        with response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise FhirFetchError(_status_reason(response))
            return self._read_body(response)

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
                    if time.monotonic() >= self._deadline:  # cut by the watchdog, not the end
                        raise FhirFetchError("FHIR server did not answer before the deadline")
                    return bytes(body)
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise FhirFetchError(
                        f"FHIR response larger than {MAX_RESPONSE_BYTES // 1_048_576} MB"
                    )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            late = time.monotonic() >= self._deadline  # the watchdog cut the socket
            if late or isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
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
                raise FhirFetchError(error, log_reason=outcome_log_reason(error, bundle))
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


def outcome_log_reason(problem: str, value: Any) -> str:
    """``problem`` for logs: an OperationOutcome's issue codes instead of its free text."""
    kind = value.get("resourceType") if isinstance(value, dict) else None
    if kind not in ("OperationOutcome", "Bundle"):
        return problem
    return f"{problem.partition(':')[0]} ({outcome_issue_codes(value)})"


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
