"""Run a real sekmet-fhir FHIR R4 server for the test suite.

``FhirServer`` starts ``sekmet serve -c settings.yaml`` (the venv's script) with its settings,
SQLite database (``db_path``/``data_dir``), key path and log in a fresh temp dir, bound to
127.0.0.1 on a free port, with ``base_url`` set to that address (paging links are built from it),
the workflow simulator off (it would act on MedicationRequests) and the traffic log off. Ready in
about 1 s; ``stop()`` takes about 0.2 s. The session fixture ``fhir_server`` errors (never skips)
when the server does not start, with the server log in the message.

What the server (sekmet-fhir 0.1.1) really does, checked against the seven Synthea charts and
the ``tests.charts.lupus`` charts (see tests/test_fhir_server_support.py):

Loading
- Transaction Bundles with POST entries and ``urn:uuid`` references load; all seven Synthea charts
  pass its strict inbound validation (fhir.resources R4B models) with no reject. Times on this
  2-core machine: Dirk 1.0 s (419 entries), Neva 0.9 s (621), Renea 0.8 s (522), Morris 0.4 s
  (237), Thanh 0.4 s (261), Tom 0.3 s (191), Junita 0.2 s (117); about 4 s for all seven.
- POST entries get NEW server ids; the ``urn:uuid`` ids and ``resource.id`` in the file are not
  kept, and references are rewritten to ``Patient/<new id>``. Read the ids from the response
  (``created_ids``). Searching ``patient=<Synthea uuid>`` (bare or ``urn:uuid:``) finds nothing.
  Loading a POST Bundle twice duplicates the patient.
- PUT entries keep their ids: reloading a chart of PUTs bumps ``meta.versionId``, no duplicates.
  Each lupus chart loads in 10-30 ms.
- A transaction is atomic: an entry failing validation (e.g. ``valueQuantity.value: "x"``) rolls
  back all and answers 400 with an OperationOutcome naming the element. Validation is structural
  only: a wrong code (``status: "bogus"``) and a dangling reference (``Patient/nobody``) load.
  The server stamps ``meta.lastUpdated`` with the load time.

Searches that work (``Bundle.total`` equals the count in the chart file, for every chart)
- ``Patient/{id}`` (404 OperationOutcome when unknown); ``Patient?_id=``.
- ``Observation?patient={id}&code=http://loinc.org|33914-3,http://loinc.org|98979-8
  &_sort=-date&_count=50``: comma = OR, ``system|code`` and bare ``code`` both match;
  ``_sort=-date`` orders by effective date, newest first.
- ``patient=Patient/{id}``, ``patient={base}/Patient/{id}``, ``subject=Patient/{id}`` and
  ``subject:Patient={id}`` give the same result as ``patient={id}``.
- ``MedicationRequest?patient={id}&status=active`` (also ``status=active,on-hold``);
  ``_sort=-authoredon`` and ``authoredon=ge...`` work. Beware: MedicationRequest ``date`` is
  ``dosageInstruction.timing.event``, so ``_sort=-date`` there silently sorts by nothing.
- ``Condition?patient={id}&clinical-status=active`` (bare code or ``system|code``);
  ``code=http://hl7.org/fhir/sid/icd-10-cm|M32.14`` and ``http://snomed.info/sct|68815009``.
- ``Immunization?patient={id}`` (also ``vaccine-code=http://hl7.org/fhir/sid/cvx|03``, ``date=``).
- ``AllergyIntolerance?patient={id}`` (empty for every Synthea chart; 1 for the allergy chart).
- BP: ``code=...|85354-9`` (or Synthea's 55284-4) finds the panel; ``component-code`` or
  ``combo-code=http://loinc.org|8480-6`` finds it by component; ``code=...|8480-6`` does not.
- ``date=ge2024-01-01`` (prefixes eq/ne/gt/lt/ge/le/sa/eb/ap, dates and dateTimes with offset).
  Every Synthea chart ends in 2020-2021, so ``date=ge2024-01-01`` and any "last 30 days"
  window return 0 for them. An invalid date (``2024-13-01``) answers 400.
- ``_lastUpdated=ge...`` / ``lt...`` work (against the load time, not the clinical time).
- ``_count``: default 20 per page, capped at 1000 without warning; ``_count=0`` and
  ``_summary=count`` return only ``total``. ``_elements``, ``_include``, ``_revinclude``,
  ``Patient/{id}/Observation`` and ``Patient/{id}/$everything`` answer too.
- ``code:text=`` is a case-insensitive STARTS-WITH match on the text: ``lupkynis`` finds
  "LUPKYNIS (voclosporin) 7.9 mg oral capsule", ``voclosporin`` does not.

Paging
- ``Bundle.link`` has self, first, previous (after page 1), next (while more remain) and last.
  Links are absolute, start with ``base_url`` and are correct, e.g.
  ``http://127.0.0.1:<port>/fhir/Observation?patient=<id>&_sort=-date&_count=20&_offset=20``:
  the understood parameters in request order, then ``_count`` and ``_offset``. Following ``next``
  returns every match exactly once, in sort order (checked: 266 Observations, 14 pages).

Unknown parameters
- Not silent: the search still runs without them, but the searchset gains an OperationOutcome
  entry (``search.mode = "outcome"``, warning "Unknown search parameter 'foo' for Observation;
  parameter ignored"), and they are dropped from the paging links. With
  ``Prefer: handling=strict`` the server answers 400 instead. Clients must therefore read only
  entries with ``search.mode == "match"`` (``FhirServer.search_all`` does).

Data note: /work/shared/data/README.md swaps two patients: the child born 2019 with MMR (CVX 03),
varicella (21) and rotavirus (119) is Junita Labadie; Tom Goodwin is a man born 1968 with live
zoster (CVX 121, twice). Morris, Neva and Thanh also have CVX 121.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import requests
import yaml

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0
FHIR_JSON = "application/fhir+json"


class FhirServerError(RuntimeError):
    """The test FHIR server did not start or refused a request; the message holds log or body."""


def free_port() -> int:
    """Ask the kernel for a free loopback port (a race remains: start() retries on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sekmet_executable() -> Path:
    """Return the `sekmet` script installed next to the running interpreter (the project venv)."""
    exe = Path(sys.executable).parent / "sekmet"
    if not exe.exists():
        raise FhirServerError(
            f"sekmet executable not found at {exe}; install the dev extras (sekmet-fhir) "
            "into this venv"
        )
    return exe


def created_ids(response: dict[str, Any]) -> dict[str, list[str]]:
    """Map resource type -> ids the server assigned, from a transaction-response Bundle.

    POST entries get new server ids (the Synthea ``urn:uuid`` ids are not kept), so tests must
    read the ids from ``entry.response.location`` (``{base}/Type/id/_history/1``).
    """
    ids: dict[str, list[str]] = {}
    for entry in response.get("entry", []):
        location = entry.get("response", {}).get("location", "")
        parts = location.split("/_history")[0].rstrip("/").split("/")
        if len(parts) >= 2:
            ids.setdefault(parts[-2], []).append(parts[-1])
    return ids


class FhirServer:
    """A sekmet-fhir server in a subprocess, with its settings and SQLite database in a temp dir."""

    def __init__(
        self,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        extra_settings: dict[str, Any] | None = None,
    ) -> None:
        self.startup_timeout = startup_timeout
        self.extra_settings = dict(extra_settings or {})
        self.port = 0
        self.base_url = ""
        self.workdir: Path | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._session: requests.Session | None = None

    # ---------------- lifecycle ----------------

    def __enter__(self) -> FhirServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, attempts: int = 3) -> FhirServer:
        """Start the server and wait until /metadata answers; retry on a port clash."""
        self._tmp = tempfile.TemporaryDirectory(prefix="sekmet-")
        self.workdir = Path(self._tmp.name)
        self._session = requests.Session()
        try:
            for attempt in range(1, attempts + 1):
                self._spawn()
                try:
                    self._wait_ready()
                    return self
                except FhirServerError:
                    port_clash = "address already in use" in self.log_text().lower()
                    self._terminate()
                    if not port_clash or attempt == attempts:
                        raise
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _write_settings(self) -> Path:
        """Write settings.yaml keeping every path in the temp dir so parallel runs share no DB."""
        assert self.workdir is not None
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        settings = {
            "base_url": self.base_url,  # paging links are built from it: must be the real address
            "host": "127.0.0.1",  # the default is 0.0.0.0
            "port": self.port,
            "log_inbound": False,  # no traffic log rows for every request
            "simulator": {"enabled": False},  # otherwise it acts on MedicationRequests
            "data_dir": str(self.workdir / "data"),  # bulk exports etc.
            "db_path": str(self.workdir / "data" / "sekmet.db"),
            "own_private_key_path": str(self.workdir / "keys" / "sekmet_private.pem"),
            **self.extra_settings,
        }
        path = self.workdir / "settings.yaml"
        path.write_text(yaml.safe_dump(settings, sort_keys=False))
        return path

    def _spawn(self) -> None:
        assert self.workdir is not None
        config = self._write_settings()
        # SEKMET_* variables override the YAML (base_url, db_path, port): never inherit them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
        env["PYTHONUNBUFFERED"] = "1"
        env["_TYPER_STANDARD_TRACEBACK"] = "1"  # plain tracebacks in the log, not rich boxes
        if self._log_file is not None:
            self._log_file.close()
        self._log_file = (self.workdir / "server.log").open("wb")
        self._proc = subprocess.Popen(
            [str(sekmet_executable()), "serve", "-c", str(config)],
            cwd=self.workdir,  # any relative path the server still uses lands in the temp dir
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def _wait_ready(self) -> None:
        assert self._proc is not None
        assert self._session is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise FhirServerError(
                    f"sekmet exited with code {self._proc.returncode} before it was ready.\n"
                    f"--- server log ---\n{self.log_text()}"
                )
            try:
                resp = self._session.get(f"{self.base_url}/metadata", timeout=2)
                if resp.status_code == 200 and self._proc.poll() is None:
                    return  # still alive: the answer came from our server, not a port squatter
                last_error = f"HTTP {resp.status_code}"
            except requests.RequestException as exc:
                last_error = str(exc)
            time.sleep(0.1)
        raise FhirServerError(
            f"sekmet did not answer GET {self.base_url}/metadata within "
            f"{self.startup_timeout:.0f} s (last: {last_error}).\n"
            f"--- server log ---\n{self.log_text()}"
        )

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            else:
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Terminate the server (kill after 10 s) and remove its temp dir; safe to call twice."""
        self._terminate()
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.workdir = None

    def log_text(self, limit: int = 20_000) -> str:
        """Return the tail of the server's stdout/stderr, for error messages."""
        if self.workdir is None:
            return ""
        path = self.workdir / "server.log"
        if not path.exists():
            return ""
        return path.read_bytes()[-limit:].decode("utf-8", "replace")

    # ---------------- HTTP ----------------

    @property
    def session(self) -> requests.Session:
        """Return the HTTP session bound to this server's lifetime."""
        if self._session is None:
            raise FhirServerError("the FHIR server is not running")
        return self._session

    def url(self, path_or_url: str) -> str:
        """Make a relative FHIR path (``Patient/1``, ``Observation?x=y``) absolute."""
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return f"{self.base_url}/{path_or_url.lstrip('/')}"

    def get(self, path_or_url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """GET a resource or search Bundle; raise with the body when the status is not 2xx."""
        resp = self.session.get(
            self.url(path_or_url),
            params=params,
            headers={"Accept": FHIR_JSON},
            timeout=REQUEST_TIMEOUT_S,
        )
        if not resp.ok:
            raise FhirServerError(f"GET {resp.url} -> HTTP {resp.status_code}: {resp.text[:4000]}")
        result: dict[str, Any] = resp.json()
        return result

    def search_all(self, path_or_url: str, max_pages: int = 100) -> list[dict[str, Any]]:
        """Run a search and follow `next` links; return every matched resource (mode=match)."""
        resources: list[dict[str, Any]] = []
        url: str | None = self.url(path_or_url)
        pages = 0
        while url is not None:
            pages += 1
            if pages > max_pages:
                raise FhirServerError(f"more than {max_pages} pages for {path_or_url}")
            bundle = self.get(url)
            resources += [
                e["resource"]
                for e in bundle.get("entry", [])
                if e.get("search", {}).get("mode", "match") == "match"
            ]
            links = bundle.get("link", [])
            url = next((li["url"] for li in links if li["relation"] == "next"), None)
        return resources

    def load_bundle(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction or batch Bundle; return the response, raise with the body on error."""
        resp = self.session.post(
            self.base_url,
            json=bundle,
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
            timeout=REQUEST_TIMEOUT_S,
        )
        if not resp.ok:
            raise FhirServerError(
                f"POST {self.base_url} ({bundle.get('type')} Bundle, "
                f"{len(bundle.get('entry', []))} entries) -> HTTP {resp.status_code}: "
                f"{resp.text[:4000]}"
            )
        result: dict[str, Any] = resp.json()
        failed = [
            e["response"]
            for e in result.get("entry", [])
            if not str(e.get("response", {}).get("status", "")).startswith("2")
        ]
        if failed:  # only possible for batch Bundles: a transaction fails as a whole
            raise FhirServerError(f"{len(failed)} batch entries failed: {failed[:5]}")
        return result


_SESSION_SERVER = pytest.StashKey[FhirServer]()


@pytest.fixture(scope="session")
def fhir_server(request: pytest.FixtureRequest) -> Iterator[FhirServer]:
    """Yield one started server for the session; a failed start errors the tests, never skips.

    Importing this fixture into both conftest.py and a test module registers it twice; the stash
    makes the second registration reuse the first server instead of starting another.
    """
    stash = request.config.stash
    if _SESSION_SERVER in stash:
        yield stash[_SESSION_SERVER]
        return
    with FhirServer() as server:
        stash[_SESSION_SERVER] = server
        try:
            yield server
        finally:
            del stash[_SESSION_SERVER]
