"""A real HTTP FHIR R4 server on 127.0.0.1 that misbehaves on demand, for fault-injection tests.

Why a real server and not ``responses``: the faults that matter (a socket that never answers, a
body that trickles in past the deadline, a redirect, a ``next`` link to another host) live in the
HTTP client's timeouts and redirect handling, which a mock replaces. The server answers reads
(``Type/id``) and searches (``Type?...``, evaluated by ``tests.support.hooks.search``) over a
fixed list of resources, and records every request and every TCP connection, so a test can prove
that a server was never contacted and that the bearer token went nowhere else.

    with FaultyFhir(resources) as fhir:
        fhir.set_fault("hang", on="Observation")   # only Observation requests misbehave
        ...
        assert all(hit.authorization == "Bearer t" for hit in fhir.hits)

Faults (``FAULTS``): an HTTP status with an OperationOutcome body (401, 403, 404, 429, 500),
``hang`` (no answer until the server closes), ``slow`` (answers after ``SLOW_SECONDS``, inside the
deadline), ``trickle`` (headers at once, then one byte every ``TRICKLE_INTERVAL`` seconds, so no
single read times out), ``invalid-json``, ``not-a-resource`` (a JSON array), ``outcome`` (an
OperationOutcome with status 200), ``next-offhost`` (a searchset whose ``next`` link points at
``other_base``), ``next-broken`` (a ``next`` link that answers 404) and ``redirect`` (302 to
``other_base``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.wrappers import Request, Response

from tests.support.hooks import search

Resource = dict[str, Any]

STATUS_FAULTS = ("401", "403", "404", "429", "500")
FAULTS = (
    *STATUS_FAULTS,
    "hang",
    "slow",
    "trickle",
    "invalid-json",
    "not-a-resource",
    "outcome",
    "next-offhost",
    "next-broken",
    "redirect",
)
SLOW_SECONDS = 0.25
TRICKLE_INTERVAL = 0.1
# Upper bound for a hung or trickling answer, so no handler thread outlives a test run by much.
MAX_STALL_SECONDS = 20.0
BROKEN_PAGE = "_getpages"
FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True)
class Hit:
    """One request as the server saw it."""

    method: str
    path: str
    query: str
    authorization: str | None


def operation_outcome(code: str, diagnostics: str) -> Resource:
    """Return an OperationOutcome with one error issue."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


class _QuietHandler(WSGIRequestHandler):
    """Keep werkzeug's per-request access lines out of the test logs."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


class _CountingServer(ThreadedWSGIServer):
    """Count accepted TCP connections: a refused fhirServer must not even be connected to."""

    def __init__(self, owner: FaultyFhir, *args: Any, **kwargs: Any) -> None:
        self.owner = owner
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.owner.lock:
            self.owner.connections += 1
        return True


class FaultyFhir:
    """A FHIR server under ``/fhir`` on 127.0.0.1 whose fault the test sets per resource type."""

    def __init__(self, resources: Iterable[Resource] = (), *, base_path: str = "/fhir") -> None:
        self.resources = list(resources)
        self.base_path = base_path.rstrip("/")
        self.lock = threading.Lock()
        self.hits: list[Hit] = []
        self.connections = 0
        self.fault = "none"
        self.fault_on = ""
        self.other_base = "http://127.0.0.1:9/fhir"
        self._release = threading.Event()
        self._server = _CountingServer(self, "127.0.0.1", 0, self._wsgi, handler=_QuietHandler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="faulty-fhir",
            daemon=True,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Return the FHIR base URL, e.g. ``http://127.0.0.1:40123/fhir``."""
        return f"http://127.0.0.1:{self._server.server_port}{self.base_path}"

    @property
    def port(self) -> int:
        """Return the TCP port the server listens on."""
        return int(self._server.server_port)

    def start(self) -> FaultyFhir:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Release stalled answers, stop serving and close the listening socket."""
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultyFhir:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- control ---------------------------------------------------------------------------------

    def set_fault(self, fault: str, *, on: str = "") -> None:
        """Misbehave with ``fault`` on requests for resource type ``on`` ("" = every request)."""
        if fault != "none" and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose from {FAULTS}")
        with self.lock:
            self.fault, self.fault_on = fault, on

    def reset(self) -> None:
        """Behave again and forget recorded requests and connections."""
        with self.lock:
            self.fault, self.fault_on = "none", ""
            self.hits.clear()
            self.connections = 0

    def paths(self) -> list[str]:
        """Return the paths requested so far (with query), in order."""
        with self.lock:
            return [f"{h.path}?{h.query}" if h.query else h.path for h in self.hits]

    # -- serving ---------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        with self.lock:
            self.hits.append(
                Hit(
                    request.method,
                    request.path,
                    request.query_string.decode("latin-1"),
                    request.headers.get("Authorization"),
                )
            )
            fault, fault_on = self.fault, self.fault_on
        response = self._answer(request, fault, fault_on)
        return response(environ, start_response)

    def _answer(self, request: Request, fault: str, fault_on: str) -> Response:
        if not request.path.startswith(self.base_path + "/"):
            return _json(operation_outcome("not-found", "outside the FHIR base"), 404)
        relative = request.path[len(self.base_path) + 1 :]
        resource_type = relative.split("/", 1)[0]
        if BROKEN_PAGE in request.args:
            return _json(operation_outcome("not-found", "paging session expired"), 404)
        if fault == "none" or (fault_on and resource_type != fault_on):
            return self._normal(request, relative, "none")
        faulty = self._fault(fault, request, relative)
        return faulty if faulty is not None else self._normal(request, relative, fault)

    def _fault(self, fault: str, request: Request, relative: str) -> Response | None:
        if fault in STATUS_FAULTS:
            response = _json(operation_outcome("forbidden", f"injected {fault}"), int(fault))
            if fault == "429":
                response.headers["Retry-After"] = "30"
            return response
        if fault == "hang":
            self._release.wait(MAX_STALL_SECONDS)
            return _json(operation_outcome("timeout", "answered too late"), 503)
        if fault == "slow":
            time.sleep(SLOW_SECONDS)
            return None  # then answer normally
        if fault == "trickle":
            # Padded so that even a small Bundle keeps trickling until MAX_STALL_SECONDS.
            padding = b" " * int(MAX_STALL_SECONDS / TRICKLE_INTERVAL)
            body = json.dumps(self._bundle(relative, request)).encode() + padding
            return Response(
                self._trickle(body),
                status=200,
                mimetype=FHIR_JSON,
                headers={"Content-Length": str(len(body))},
                direct_passthrough=True,
            )
        if fault == "invalid-json":
            return Response('{"resourceType": "Bundle", "entry": [', 200, mimetype=FHIR_JSON)
        if fault == "not-a-resource":
            return Response("[1, 2, 3]", 200, mimetype=FHIR_JSON)
        if fault == "outcome":
            return _json(operation_outcome("too-costly", "search too broad"), 200)
        if fault == "redirect":
            location = f"{self.other_base}/{relative}"
            if request.query_string:
                location += "?" + request.query_string.decode("latin-1")
            return Response("", 302, headers={"Location": location})
        return None  # next-* faults shape the normal answer

    def _trickle(self, body: bytes) -> Iterator[bytes]:
        deadline = time.monotonic() + MAX_STALL_SECONDS
        for byte in body:
            if self._release.is_set() or time.monotonic() > deadline:
                return
            yield bytes([byte])
            time.sleep(TRICKLE_INTERVAL)

    def _normal(self, request: Request, relative: str, fault: str) -> Response:
        if "?" not in relative and "/" in relative:
            resource_type, _, resource_id = relative.partition("/")
            for resource in self.resources:
                if (resource.get("resourceType"), resource.get("id")) == (
                    resource_type,
                    resource_id,
                ):
                    return _json(resource, 200)
            return _json(operation_outcome("not-found", f"{relative} is not known"), 404)
        bundle = self._bundle(relative, request)
        if fault == "next-offhost":
            bundle["link"] = [{"relation": "next", "url": f"{self.other_base}/{relative}?page=2"}]
        elif fault == "next-broken":
            query = urlencode({**dict(parse_qsl(request.query_string.decode())), BROKEN_PAGE: 1})
            bundle["link"] = [{"relation": "next", "url": f"{self.base_url}/{relative}?{query}"}]
        return _json(bundle, 200)

    def _bundle(self, relative: str, request: Request) -> Resource:
        query = f"{relative}?{request.query_string.decode()}"
        patient = request.args.get("patient", "")
        return search(self.resources, query, patient)


def _json(body: Any, status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype=FHIR_JSON)
