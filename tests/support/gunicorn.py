"""Two gunicorn workers on 127.0.0.1 sharing one database, as production runs the service.

The access log records, per request, the worker pid, the status and the ``X-Probe`` header the
test sent, so a test can tell which worker answered which request.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Gunicorn:
    """A gunicorn master with its access log (pid, status and our probe header per line)."""

    base_url: str
    access_log: Path
    process: subprocess.Popen[bytes]

    def served(self) -> dict[str, tuple[int, int]]:
        """{probe id: (worker pid, status)} from the access log."""
        result = {}
        for line in self.access_log.read_text().splitlines():
            match = re.fullmatch(r"<?(\d+)>? (\d{3}) (\S+)", line.strip())  # %(p)s is "<pid>"
            if match and match.group(3) != "-":
                result[match.group(3)] = (int(match.group(1)), int(match.group(2)))
        return result

    def wait_for_probes(
        self, probes: list[str], timeout: float = 10.0
    ) -> dict[str, tuple[int, int]]:
        """Access lines are written after the answer is sent: wait until all are there."""
        give_up = time.monotonic() + timeout
        while True:
            served = self.served()
            if all(p in served for p in probes) or time.monotonic() > give_up:
                return {p: served[p] for p in probes if p in served}
            time.sleep(0.05)

    def served_by(self, probe: str) -> int:
        """The pid of the worker that answered the request with ``X-Probe: probe``."""
        served = self.wait_for_probes([probe])
        if probe not in served:
            raise AssertionError(f"request {probe} is not in the access log")
        return served[probe][0]

    def post(self, path: str, body: dict[str, Any], probe: str) -> requests.Response:
        """POST JSON on a fresh connection (no keep-alive), so either worker may take it."""
        with requests.Session() as session:
            return session.post(
                f"{self.base_url}{path}",
                json=body,
                timeout=20,
                headers={"Connection": "close", "X-Probe": probe},
            )

    def wait_for_both_workers(self, timeout: float = 30.0) -> None:
        """The master answers once one worker is up; wait until both have served a request."""
        give_up = time.monotonic() + timeout
        with ThreadPoolExecutor(max_workers=4) as pool:
            for attempt in range(1000):
                probes = [f"health-{attempt}-{n}" for n in range(8)]
                list(pool.map(lambda p: _get_health(self.base_url, p), probes))
                if len({pid for pid, _ in self.wait_for_probes(probes).values()}) == 2:
                    return
                if time.monotonic() > give_up:
                    pytest.fail("the second gunicorn worker never served a request")


@contextmanager
def two_workers(tmp_path: Path, port: int, settings: Mapping[str, str]) -> Iterator[Gunicorn]:
    """``gunicorn -w 2`` (sync) with ``settings`` (CDS_* variables) until the block ends.

    The database in ``settings["CDS_DATABASE_URL"]`` must already be migrated, so the two
    workers do not race to create the schema.
    """
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CDS_")},
        **settings,
    }
    access_log = tmp_path / "access.log"
    access_log.touch()
    error_log = tmp_path / "gunicorn.log"
    with error_log.open("wb") as errors:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("gunicorn")),
                *("-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}"),
                *("--access-logfile", str(access_log)),
                *("--access-logformat", "%(p)s %(s)s %({x-probe}i)s"),
                "cds_service:create_app()",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            cwd=ROOT,
        )
    server = Gunicorn(f"http://127.0.0.1:{port}", access_log, process)
    try:
        give_up = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{server.base_url}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass  # workers still booting
            if process.poll() is not None or time.monotonic() > give_up:
                pytest.fail(f"gunicorn did not start:\n{error_log.read_text()[-3000:]}")
            time.sleep(0.1)
        server.wait_for_both_workers()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _get_health(base_url: str, probe: str) -> int:
    with requests.Session() as session:
        response = session.get(
            f"{base_url}/healthz", timeout=10, headers={"Connection": "close", "X-Probe": probe}
        )
        return response.status_code
