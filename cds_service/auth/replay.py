"""JWT replay caches: each (iss, jti) is accepted once for the token's lifetime.

``RedisReplayCache`` is shared by every worker and instance (production); ``MemoryReplayCache``
is per process (development). Both satisfy the ``ReplayCache`` protocol the verifier uses.
"""

from __future__ import annotations

import hashlib
import heapq
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cds_service.errors import ReplayCacheUnavailable


class ReplayCache(Protocol):
    """Remembers each (iss, jti) for the token's lifetime, shared by every worker that verifies."""

    def claim(self, jti: str, iss: str, ttl_seconds: int) -> bool:
        """Record the jti; True only the first time it is seen within ``ttl_seconds``."""
        ...


def _replay_key(prefix: str, iss: str, jti: str) -> str:
    """Hash iss and jti so client-chosen strings give bounded, unambiguous cache keys."""
    digest = hashlib.sha256(f"{iss}\x00{jti}".encode()).hexdigest()
    return prefix + digest


class RedisReplayCache:
    """Replay cache in Redis: ``SET key NX EX ttl`` is atomic across workers, hosts and restarts.

    When Redis is unreachable ``claim`` raises ``ReplayCacheUnavailable`` (answer 503): failing
    open would let a captured token be replayed, failing closed costs only availability.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "cds:jti:",
        *,
        socket_timeout_seconds: float = 0.5,
    ) -> None:
        self.prefix = prefix
        # One quick retry (a pooled connection may be stale after a Redis restart), no backoff:
        # a hook call must answer in about 500 ms, so Redis trouble must surface fast.
        self._client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=socket_timeout_seconds,
            socket_timeout=socket_timeout_seconds,
            retry=Retry(NoBackoff(), 1),
        )

    def claim(self, jti: str, iss: str, ttl_seconds: int) -> bool:
        """Set the key only if absent; True means this is the first sighting of the jti."""
        key = _replay_key(self.prefix, iss, jti)
        try:
            created = self._client.set(key, "1", nx=True, ex=max(1, ttl_seconds))
        except redis.RedisError as exc:
            raise ReplayCacheUnavailable(
                f"replay cache (Redis) unavailable: {type(exc).__name__}"
            ) from exc
        return bool(created)

    def close(self) -> None:
        """Release pooled connections (tests run with ResourceWarning as error)."""
        self._client.close()


class MemoryReplayCache:
    """In-process replay cache for single-process development; useless across gunicorn workers."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def claim(self, jti: str, iss: str, ttl_seconds: int) -> bool:
        """Record the jti unless an unexpired entry exists; expired entries are purged first."""
        key = _replay_key("", iss, jti)
        with self._lock:
            now = self._clock()
            self._purge(now)
            if key in self._expiry:
                return False
            expires_at = now + max(1, ttl_seconds)
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return True

    def __len__(self) -> int:
        with self._lock:
            self._purge(self._clock())
            return len(self._expiry)

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            expires_at, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == expires_at:
                del self._expiry[key]
