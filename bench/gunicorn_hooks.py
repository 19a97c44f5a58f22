"""gunicorn config for the benchmark: the production config plus one line per ready worker.

gunicorn reads a single config file, so this one first runs the repository's own
``gunicorn.conf.py`` when there is one (its hooks, e.g. a ``gc.freeze()`` after start-up, are
part of "as in production"), then wraps ``post_worker_init`` to log a mark once the worker has
built the app. The benchmark waits for one mark per worker before it measures anything. Worker
counts and the bind address come from the command line, which overrides config files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

READY_MARK = "bench: worker ready"
PRODUCTION_CONFIG = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"

if PRODUCTION_CONFIG.exists():
    exec(compile(PRODUCTION_CONFIG.read_text(encoding="utf-8"), str(PRODUCTION_CONFIG), "exec"))

_production_post_worker_init = globals().get("post_worker_init")


def post_worker_init(worker: Any) -> None:
    """Run the production hook, then log that this worker has built the app."""
    if callable(_production_post_worker_init):
        _production_post_worker_init(worker)
    worker.log.info("%s pid=%s", READY_MARK, worker.pid)
