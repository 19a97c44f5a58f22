"""gunicorn config for the benchmark: only a hook that says when a worker has loaded the app.

``post_worker_init`` runs in the worker after the WSGI app is imported and built, so the
benchmark waits for one such line per worker before it measures anything.
"""

from __future__ import annotations

from typing import Any

READY_MARK = "bench: worker ready"


def post_worker_init(worker: Any) -> None:
    """Log that this worker has built the app (the benchmark counts these lines)."""
    worker.log.info("%s pid=%s", READY_MARK, worker.pid)
