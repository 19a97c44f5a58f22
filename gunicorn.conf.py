"""gunicorn reads this file from the working directory: the packaged settings, nothing else.

Edit cds_service/gunicorn_conf.py (settings, logging and the metrics hooks); an installed service
uses it as ``gunicorn -c python:cds_service.gunicorn_conf``.
"""

from cds_service.gunicorn_conf import *  # noqa: F403
