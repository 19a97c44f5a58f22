"""Production gunicorn settings, in the package: ``gunicorn -c python:cds_service.gunicorn_conf``.

Two processes for two cores (hook calls are CPU-bound Python), four threads each so a worker keeps
serving while one call waits on the EHR's FHIR server. bench/README.md has the measurements.
Settings and server hooks both live here; the repository's top-level ``gunicorn.conf.py`` only
imports this module, so a plain ``gunicorn`` run from a checkout gets the same recipe.

Logs: gunicorn's own lines and the app's go to stderr in ``CDS_LOG_FORMAT`` (JSON by default).
Metrics: with ``PROMETHEUS_MULTIPROC_DIR`` set, the workers' counters are summed on /metrics;
the directory is emptied when gunicorn starts (old workers' files would count twice after a
restart) and a worker that exits is marked dead.
"""

import gc
import os
from pathlib import Path

from cds_service.logs import gunicorn_logconfig, parse_log_format

bind = "0.0.0.0:8080"
workers = 2
worker_class = "gthread"
threads = 4
logconfig_dict = gunicorn_logconfig(parse_log_format(os.environ.get("CDS_LOG_FORMAT", "json")))


def on_starting(server: object) -> None:
    """Start the workers' metric files afresh (prometheus-client multiprocess mode)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for stale in Path(directory).glob("*.db"):
            stale.unlink()


def post_worker_init(worker: object) -> None:
    """Move start-up objects (knowledge, FHIR models) out of the GC's reach.

    Every full collection would walk them again; json.loads of a large prefetch triggers many.
    """
    gc.freeze()


def child_exit(server: object, worker: object) -> None:
    """Mark a dead worker in the metric files (prometheus-client multiprocess mode)."""
    from cds_service.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)  # type: ignore[attr-defined]
