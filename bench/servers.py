"""Start gunicorn as in production (its own process, loopback only) and read its workers' memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import requests

from bench.gunicorn_hooks import READY_MARK
from tests.support.fhir_server import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class ServerError(RuntimeError):
    """gunicorn did not start; the message carries its log."""


@dataclass(frozen=True)
class WorkerSettings:
    """gunicorn's worker model: ``sync`` (one request per process) or ``gthread``."""

    workers: int = 2
    worker_class: str = "gthread"
    threads: int = 4

    def argv(self) -> list[str]:
        args = ["--workers", str(self.workers), "--worker-class", self.worker_class]
        if self.worker_class == "gthread":
            args += ["--threads", str(self.threads)]
        return args

    def label(self) -> str:
        threads = f" --threads {self.threads}" if self.worker_class == "gthread" else ""
        return f"-w {self.workers} -k {self.worker_class}{threads}"


class Gunicorn:
    """``gunicorn <app>`` bound to 127.0.0.1 on a free port, with its log in a temp dir."""

    def __init__(
        self,
        app_spec: str,
        settings: WorkerSettings,
        env: dict[str, str] | None = None,
        config: Path | None = None,
    ) -> None:
        self.app_spec = app_spec
        self.config = config or Path(__file__).with_name("gunicorn_hooks.py")
        self.settings = settings
        self.extra_env = dict(env or {})
        self.port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: object | None = None

    def __enter__(self) -> Gunicorn:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ServerError("gunicorn is not running")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        assert self._tmp is not None
        return Path(self._tmp.name) / "gunicorn.log"

    def start(self) -> None:
        """Spawn gunicorn and wait until every worker answers /healthz."""
        self._tmp = tempfile.TemporaryDirectory(prefix="cds-bench-")
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "GUNICORN"))}
        env.update(
            {
                "CDS_DATABASE_URL": f"sqlite:///{Path(self._tmp.name) / 'audit.sqlite3'}",
                "CDS_AUDIT_HASH_KEY": "bench-hash-key",
                "PYTHONPATH": str(REPO_ROOT),
            }
        )
        env.update(self.extra_env)
        log = self.log_path.open("wb")
        self._log = log
        self._proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "--bind",
                f"127.0.0.1:{self.port}",
                *self.settings.argv(),
                "--chdir",
                str(REPO_ROOT),
                "--graceful-timeout",
                "5",
                # Three masters run at once: no shared control socket in ~/.gunicorn.
                "--no-control-socket",
                "--config",
                str(self.config),
                self.app_spec,
            ],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with requests.Session() as session:
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    raise ServerError(f"gunicorn exited early:\n{self.log_text()}")
                try:
                    ok = session.get(self.url("/healthz"), timeout=2).status_code == 200
                except requests.RequestException:
                    ok = False
                # Each worker builds the app on its own: wait for all, not just the first.
                if ok and self._all_workers_booted():
                    return
                time.sleep(0.2)
        raise ServerError(f"gunicorn not ready in {STARTUP_TIMEOUT_S:.0f} s:\n{self.log_text()}")

    def _all_workers_booted(self) -> bool:
        """Every live worker has built the app (the config hook logs a line per worker)."""
        return self.log_text(limit=1_000_000).count(READY_MARK) >= self.settings.workers

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def worker_pids(self) -> list[int]:
        """Pids of the master's children (gunicorn workers), from /proc."""
        return children_of(self.pid)

    def log_text(self, limit: int = 20_000) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode("utf-8", "replace")
        except (OSError, AssertionError):
            return ""

    def stop(self) -> None:
        """Graceful stop (SIGTERM), SIGKILL after a timeout; remove the temp dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            else:
                proc.wait()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (scans /proc: no psutil needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process in KiB, from /proc/<pid>/status."""
    result: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            result[name] = int(value.split()[0])
    return result
