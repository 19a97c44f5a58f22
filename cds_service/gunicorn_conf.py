"""Production gunicorn settings, in the package: ``gunicorn -c python:cds_service.gunicorn_conf``.

Two processes for two cores (hook calls are CPU-bound Python), four threads each so a worker keeps
serving while one call waits on the EHR's FHIR server. bench/README.md has the measurements.
Settings and server hooks both live here; the repository's top-level ``gunicorn.conf.py`` only
imports this module, so a plain ``gunicorn`` run from a checkout gets the same recipe.
"""

import gc

bind = "0.0.0.0:8080"
workers = 2
worker_class = "gthread"
threads = 4


def post_worker_init(worker: object) -> None:
    """Move start-up objects (knowledge, FHIR models) out of the GC's reach.

    Every full collection would walk them again; json.loads of a large prefetch triggers many.
    """
    gc.freeze()
