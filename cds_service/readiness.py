"""Readiness: can this instance serve hook calls and feedback now? (``GET /readyz``)

Liveness (``/healthz``) only says the process answers, so a load balancer does not restart an
instance for a database outage. Readiness asks the dependencies a call needs, each within
``timeout_ms``, in parallel: the database (``SELECT 1``) and, when configured, the Redis
replay cache (``PING``; without it every authenticated call is a 503). A dependency that does
not answer in time counts as failed: a stalled database is not ready. Flask-free.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import redis

from cds_service.storage import Storage

log = logging.getLogger(__name__)
READINESS_EXTENSION = "cds_readiness"


class Readiness:
    """The dependency checks behind ``/readyz``; one small thread pool, closed with the app."""

    def __init__(self, storage: Storage, redis_url: str | None, timeout_ms: int = 1000) -> None:
        self.storage = storage
        self.timeout_ms = timeout_ms
        self._redis = (
            redis.Redis.from_url(
                redis_url,
                socket_connect_timeout=timeout_ms / 1000,
                socket_timeout=timeout_ms / 1000,
            )
            if redis_url
            else None
        )
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readiness")

    def check(self) -> tuple[bool, dict[str, str]]:
        """Return (ready, {dependency: "ok" or what failed})."""
        checks: dict[str, Callable[[], object]] = {
            "database": lambda: self.storage.ping(self.timeout_ms)
        }
        if self._redis is not None:
            checks["replayCache"] = self._redis.ping
        futures: dict[str, Future[object]] = {
            name: self._pool.submit(run) for name, run in checks.items()
        }
        results: dict[str, str] = {}
        for name, future in futures.items():
            try:
                future.result(timeout=self.timeout_ms / 1000)
                results[name] = "ok"
            except FutureTimeout:
                results[name] = f"failed: no answer within {self.timeout_ms} ms"
            except Exception as exc:  # any failure of a dependency means "not ready"
                log.warning("readiness: %s failed: %s", name, exc)
                results[name] = f"failed: {type(exc).__name__}"
        if self._redis is None:
            results["replayCache"] = "in-process (no CDS_REDIS_URL)"
        ready = all(v == "ok" for k, v in results.items() if k in checks)
        return ready, results

    def close(self) -> None:
        """Stop the pool and close the Redis connections."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._redis is not None:
            self._redis.close()
