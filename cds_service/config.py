"""Settings: defaults -> environment (``CDS_`` prefix, plus ``MAX_CONTENT_LENGTH``) -> test config.

Every setting is listed once here with its parser and meaning; the README table mirrors it and a
test keeps the two in step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cds_service.auth import parse_issuers
from cds_service.logs import parse_log_format


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[str], Any]
    meaning: str


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _days(value: str) -> int:
    days = int(value)
    if days < 0:
        raise ValueError(f"expected 0 or more days, got {days}")
    return days


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"expected 1 or more, got {number}")
    return number


def _optional(value: str) -> str | None:
    return value.strip() or None


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "CDS_PUBLIC_BASE_URL",
        None,
        _optional,
        "External base URL of the service (scheme, host, mount prefix); the expected JWT "
        "`aud` is built from it. Required when CDS_JWT_ISSUERS is set.",
    ),
    Setting(
        "CDS_JWT_ISSUERS",
        None,
        lambda v: parse_issuers(v) if v.strip() else None,
        "JSON object: trusted client `iss` -> its JWKS URL (https), `file:/path`, or "
        '`{"jwks": "file:/path", "jku": "https://..."}` (a local copy standing for the https '
        "key location its tokens name in `jku`). `file:` key sets are read at start-up; a "
        "missing or invalid one stops it. When set, service and feedback calls need a valid "
        "JWT; unset turns client authentication off.",
    ),
    Setting("CDS_JWT_LEEWAY_SECONDS", 30, int, "Clock leeway for exp / iat / nbf."),
    Setting(
        "CDS_REDIS_URL",
        None,
        _optional,
        "Redis for the JWT replay (jti) cache shared by workers and instances; unset uses an "
        "in-process cache (single-process development only).",
    ),
    Setting(
        "CDS_FHIR_ALLOWED_SERVERS",
        None,
        _optional,
        "Comma-separated FHIR base URLs the service may query. Unset: https only and no "
        "loopback, private or link-local addresses.",
    ),
    Setting(
        "CDS_ALLOW_UNAUTHENTICATED_FHIR",
        False,
        _bool,
        "Query `fhirServer` even when the request has no `fhirAuthorization` (open sandbox "
        "servers only; the spec allows fetching only with a token).",
    ),
    Setting(
        "CDS_REQUEST_DEADLINE_MS",
        2500,
        int,
        "Time budget for FHIR fetching in one hook call, connect and response headers included "
        "(a socket still open at the deadline is cut); checks whose data is late are reported "
        "as unavailable.",
    ),
    Setting("CDS_FHIR_MAX_PAGES", 20, int, "Most Bundle pages followed per FHIR search."),
    Setting("CDS_FHIR_WORKERS", 16, int, "Threads for concurrent FHIR queries (per process)."),
    Setting(
        "CDS_FHIR_MAX_PER_HOST",
        8,
        _positive,
        "Most FHIR queries one process runs at once to one FHIR host (scheme, host, port); "
        "more wait for a slot until the call's deadline, so one slow server cannot hold every "
        "fetch thread.",
    ),
    Setting(
        "CDS_CORS_ORIGINS",
        None,
        _optional,
        "Comma-separated browser origins allowed by CORS (e.g. the CDS Hooks Sandbox), or `*`.",
    ),
    Setting(
        "CDS_EGFR_BASELINE_MAX_DAYS",
        None,
        lambda v: int(v) if v.strip() else None,
        "Local policy: how recent a baseline eGFR must be (default from rules.toml: 30).",
    ),
    Setting(
        "CDS_BP_MAX_AGE_DAYS",
        None,
        lambda v: int(v) if v.strip() else None,
        "Local policy: how recent the pre-initiation BP must be (default rules.toml: 30).",
    ),
    Setting(
        "CDS_POTASSIUM_HIGH_DEFAULT",
        None,
        lambda v: float(v) if v.strip() else None,
        "Local policy: potassium upper limit when the lab sends no reference range "
        "(default rules.toml: 5.0 mmol/L).",
    ),
    Setting(
        "CDS_COURSE_MAX_GAP_DAYS",
        None,
        lambda v: int(v) if v.strip() else None,
        "Local policy: voclosporin orders leaving at most this many uncovered days between "
        "them are one treatment course (renewal, same baseline); a longer gap is a new start "
        "(default rules.toml: 180).",
    ),
    Setting(
        "CDS_COURSE_DEFAULT_SPAN_DAYS",
        None,
        lambda v: int(v) if v.strip() else None,
        "Local policy: days an order without a stated supply covers from authoredOn "
        "(default rules.toml: 90, the payer's quantity period).",
    ),
    Setting(
        "CDS_POTASSIUM_NEAR_LIMIT",
        None,
        lambda v: float(v) if v.strip() else None,
        "Local policy: a drug that raises potassium is a warning when the latest potassium is "
        "within this many mmol/L of the upper limit, or above it (default rules.toml: 0.2; 0 "
        "warns only at or above the limit).",
    ),
    Setting(
        "CDS_REPEAT_WINDOW_DAYS",
        30,
        _days,
        "Local policy: a warning or info card overridden for the same patient and finding "
        "within this many days comes back as info saying when and why (critical cards never "
        "change); 0 turns it off.",
    ),
    Setting(
        "CDS_DATABASE_URL",
        None,
        _optional,
        "SQLAlchemy URL of the audit/feedback database; default a SQLite file in the "
        "instance folder.",
    ),
    Setting(
        "CDS_DB_STATEMENT_TIMEOUT_MS",
        5000,
        _positive,
        "Longest any database statement may run (PostgreSQL `statement_timeout`, set on "
        "every connection); migrations are exempt. Raise it if /analytics over a long window "
        "of a large trail needs longer.",
    ),
    Setting(
        "CDS_DB_LOCK_TIMEOUT_MS",
        2000,
        _positive,
        "Longest any database use waits for a lock (PostgreSQL `lock_timeout`, SQLite busy "
        "timeout) or for a pooled connection.",
    ),
    Setting(
        "CDS_AUDIT_WRITE_TIMEOUT_MS",
        500,
        _positive,
        "Bound of the audit write each hook call makes before answering; a database that "
        "does not take it in time gets the record in the spool instead.",
    ),
    Setting(
        "CDS_AUDIT_SPOOL_MAX_MB",
        256,
        _positive,
        "Size bound of the audit spool (`<instance folder>/audit-spool`: records the "
        "database did not take, replayed when it returns); above it records are logged "
        "whole at ERROR.",
    ),
    Setting(
        "CDS_AUDIT_SPOOL_DIR",
        None,
        _optional,
        "Folder of the audit spool; default `audit-spool` in the instance folder. Keep it on "
        "local disk that survives a restart of the instance.",
    ),
    Setting(
        "CDS_AUDIT_DRAIN_SECONDS",
        10,
        _positive,
        "At shutdown (SIGTERM), how long to replay the spool before saying at ERROR what "
        "stays in it; keep it below gunicorn's graceful timeout (30 s).",
    ),
    Setting(
        "CDS_FEEDBACK_CONCURRENCY",
        2,
        _positive,
        "Feedback writes one process runs at once; more wait 0.25 s, then get 503 with "
        "Retry-After, so a stalled database cannot take the hook path's threads.",
    ),
    Setting(
        "CDS_READY_TIMEOUT_MS",
        1000,
        _positive,
        "How long `/readyz` waits for the database and Redis before answering 503.",
    ),
    Setting(
        "CDS_AUDIT_HASH_KEY",
        None,
        _optional,
        "Secret key for the keyed hash of patient ids in the audit trail (set it in "
        "production; a random per-process key is used otherwise).",
    ),
    Setting(
        "CDS_ANALYTICS_TOKEN",
        None,
        _optional,
        "Token protecting /analytics (Bearer or HTTP Basic password). Unset: open when client "
        "authentication is off, refused (403) when it is on.",
    ),
    Setting(
        "CDS_METRICS_TOKEN",
        None,
        _optional,
        "Token protecting /metrics (Bearer or HTTP Basic password), for the Prometheus scraper. "
        "Unset: CDS_ANALYTICS_TOKEN protects it; neither set: open when client authentication "
        "is off, refused (403) when it is on.",
    ),
    Setting(
        "CDS_LOG_FORMAT",
        "json",
        parse_log_format,
        "`json`: every log line is one JSON object (timestamp, level, logger, message and the "
        "call's fields); `text`: readable lines for development.",
    ),
    Setting(
        "CDS_MAX_DRAFT_ORDERS",
        100,
        _positive,
        "Most draft orders (draftOrders or medications entries) one hook call may carry; more "
        "is a 413 JSON error naming the field, before any check runs.",
    ),
    Setting(
        "CDS_MAX_CARDS",
        100,
        _positive,
        "Most cards one hook answer may hold; an answer that would hold more is refused with a "
        "413 JSON error (no card is sent or recorded: cutting would hide cards silently).",
    ),
    Setting(
        "MAX_CONTENT_LENGTH",
        5 * 1024 * 1024,
        int,
        "Largest accepted request body in bytes (413 above it).",
    ),
)


def from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Defaults overlaid with the environment; a bad value stops start-up with its name."""
    environ = os.environ if environ is None else environ
    config: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.name)
        if raw is None:
            config[setting.name] = setting.default
            continue
        try:
            config[setting.name] = setting.parse(raw)
        except ValueError as exc:
            raise RuntimeError(f"{setting.name} is invalid: {exc}") from exc
    return config
