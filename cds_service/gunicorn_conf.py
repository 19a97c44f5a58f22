"""Production gunicorn settings, in the package: ``gunicorn -c python:cds_service.gunicorn_conf``.

Two processes for two cores (hook calls are CPU-bound Python), four threads each so a worker keeps
serving while one call waits on the EHR's FHIR server. bench/README.md has the measurements.
Settings and server hooks both live here; the repository's top-level ``gunicorn.conf.py`` only
imports this module, so a plain ``gunicorn`` run from a checkout gets the same recipe.

Logs: gunicorn's own lines and the app's go to stderr in ``CDS_LOG_FORMAT`` (JSON by default).
Control socket: off. gunicorn 27 puts every master's at one default path
(``$XDG_RUNTIME_DIR/gunicorn.ctl`` or ``~/.gunicorn/gunicorn.ctl``), so a second instance on the
host takes over the first one's; pass ``--control-socket PATH`` (one path per instance) to use
``gunicornc``. Replay cache: with client authentication on, more than one worker and no
``CDS_REDIS_URL`` stops the start (each worker would keep its own jti cache and accept a token
another worker saw); docs/operating.md.
Metrics: with ``PROMETHEUS_MULTIPROC_DIR`` set, the workers' counters are summed on /metrics;
the directory is emptied when gunicorn starts (old workers' files would count twice after a
restart) and a worker that exits is marked dead.
"""

import gc
import os
from collections.abc import Mapping
from pathlib import Path

from cds_service.app import GUNICORN_HEADER_FIELD_BYTES
from cds_service.logs import gunicorn_logconfig, parse_log_format

bind = "0.0.0.0:8080"
workers = 2
worker_class = "gthread"
threads = 4
control_socket_disable = True
# Header lines up to 32 KiB reach the app, which answers a line over MAX_HEADER_FIELD_BYTES
# (20 KiB) with the JSON 431; beyond 32 KiB gunicorn's own error page answers (README).
limit_request_field_size = GUNICORN_HEADER_FIELD_BYTES
logconfig_dict = gunicorn_logconfig(parse_log_format(os.environ.get("CDS_LOG_FORMAT", "json")))


def on_starting(server: object) -> None:
    """Refuse a per-worker replay cache; start the metric files afresh (multiprocess mode)."""
    refuse_unshared_replay_cache(server.cfg.workers)  # type: ignore[attr-defined]
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for stale in Path(directory).glob("*.db"):
            stale.unlink()


def refuse_unshared_replay_cache(workers: int, environ: Mapping[str, str] | None = None) -> None:
    """Raise RuntimeError (gunicorn prints it and exits 1) for several workers with client
    authentication on and no shared replay cache."""
    env = os.environ if environ is None else environ
    if workers > 1 and env.get("CDS_JWT_ISSUERS", "").strip() and not env.get("CDS_REDIS_URL"):
        raise RuntimeError(
            f"{workers} workers with client authentication on (CDS_JWT_ISSUERS) need "
            "CDS_REDIS_URL: without a shared replay cache a JWT refused as a replay by one "
            "worker is accepted by the next. Set CDS_REDIS_URL, or run one worker (-w 1) "
            "for development."
        )


def post_worker_init(worker: object) -> None:
    """Move start-up objects (knowledge, FHIR models) out of the GC's reach.

    Every full collection would walk them again; json.loads of a large prefetch triggers many.
    """
    gc.freeze()


def child_exit(server: object, worker: object) -> None:
    """Mark a dead worker in the metric files (prometheus-client multiprocess mode)."""
    from cds_service.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)  # type: ignore[attr-defined]
