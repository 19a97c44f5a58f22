"""Log formatting: one whole JSON object per line (``CDS_LOG_FORMAT=json``) or text for people.

A JSON line carries ``timestamp``, ``level``, ``logger`` and ``message`` plus every field passed
with ``extra=`` at top level (the per-call line of ``cds_service.calls`` is all ``extra``). The
text format prints the same ``extra`` fields as JSON after the message. Used by the app factory
(``create_app``, when nothing configured logging first) and by ``gunicorn.conf.py``
(``logconfig_dict``), so gunicorn's own lines are in the same format. Flask-free.

Untrusted values (a JWT's ``iss`` or ``kid``, ``fhirServer``, ids from the request) must not
forge log lines: a JSON line escapes every control character by construction, and the text
format escapes them in the message (``escape_controls``), so a CR/LF in a value can never start
a line of its own. ``loggable`` renders one untrusted value quoted and bounded, for messages.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators some viewers break on.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``)."""
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def loggable(value: object, *, limit: int = 200) -> str:
    """Render an untrusted value for a log message: quoted, escaped and at most ``limit`` long."""
    if value is None:
        return "-"
    text = repr(value) if isinstance(value, str) else escape_controls(str(value))
    return text if len(text) <= limit else text[:limit] + "..."


def parse_log_format(value: str) -> LogFormat:
    """Parse ``CDS_LOG_FORMAT``: ``json`` or ``text``."""
    lowered = value.strip().lower() or "json"
    for known in LOG_FORMATS:
        if lowered == known:
            return known
    raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}, got {value!r}")


def json_formatter() -> JsonFormatter:
    """Return the JSON line formatter (timestamp in UTC ISO 8601, level, logger, message)."""
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
    )


class TextFormatter(logging.Formatter):
    """``asctime level logger message``, then any ``extra`` fields as one JSON object."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line head with the message's control characters escaped (no forged lines)."""
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = extra_fields(record)
        return f"{line} {json.dumps(fields, default=str)}" if fields else line


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Return the fields a call passed with ``extra=`` (not the LogRecord's own attributes)."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in RESERVED_ATTRS and key not in ("message", "asctime", "taskName")
    }


def formatter(log_format: LogFormat) -> logging.Formatter:
    """Return the formatter for ``log_format``."""
    return json_formatter() if log_format == "json" else TextFormatter()


def configure_root(log_format: LogFormat, level: int = logging.INFO) -> None:
    """Send the root logger's records to stderr in ``log_format``."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


def gunicorn_logconfig(log_format: LogFormat) -> dict[str, Any]:
    """Return gunicorn's ``logconfig_dict``: root and ``gunicorn.error`` to stderr, one format.

    ``gunicorn.access`` is left to gunicorn's own settings (``--access-logfile``, its format).
    """
    factory = "json_formatter" if log_format == "json" else "TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": f"cds_service.logs.{factory}"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        },
    }
