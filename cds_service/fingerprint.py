"""The settings fingerprint: one digest of everything that changes cards or trust.

Instances behind one load balancer must answer the same request with the same cards and trust
the same clients. ``/healthz`` and ``/readyz`` show this digest, so an operator (or a deploy
check) sees at a glance that they agree. Covered: the local-policy and fetch settings (they
change which cards fire), client authentication and the FHIR server policy (who is trusted),
the replay cache and the database each instance uses (kind and location, never credentials),
the audit hash key (through a keyed derivation, never the key: different keys break repeated
alerts across instances) and the knowledge version. Secrets and passwords never enter it in
the clear. Flask-free.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import make_url

# Settings whose value changes what cards a request gets or whom the service trusts.
FINGERPRINT_SETTINGS: tuple[str, ...] = (
    "CDS_EGFR_BASELINE_MAX_DAYS",
    "CDS_BP_MAX_AGE_DAYS",
    "CDS_POTASSIUM_HIGH_DEFAULT",
    "CDS_POTASSIUM_NEAR_LIMIT",
    "CDS_COURSE_MAX_GAP_DAYS",
    "CDS_COURSE_DEFAULT_SPAN_DAYS",
    "CDS_REPEAT_WINDOW_DAYS",
    "CDS_REQUEST_DEADLINE_MS",
    "CDS_FHIR_MAX_PAGES",
    "CDS_FHIR_ALLOWED_SERVERS",
    "CDS_ALLOW_UNAUTHENTICATED_FHIR",
    "CDS_JWT_ISSUERS",
    "CDS_JWT_LEEWAY_SECONDS",
    "CDS_PUBLIC_BASE_URL",
    "CDS_MAX_DRAFT_ORDERS",
    "CDS_MAX_CARDS",
    "MAX_CONTENT_LENGTH",
)
# Settings that change neither cards nor trust (capacity, storage tuning, where things are, who
# may read reports); the database and replay cache enter the digest by kind and place instead.
# A test checks every setting is in one of the two lists.
NOT_FINGERPRINTED: frozenset[str] = frozenset(
    {
        "CDS_REDIS_URL",
        "CDS_DATABASE_URL",
        "CDS_AUDIT_HASH_KEY",
        "CDS_FHIR_WORKERS",
        "CDS_FHIR_MAX_PER_HOST",
        "CDS_CORS_ORIGINS",
        "CDS_DB_STATEMENT_TIMEOUT_MS",
        "CDS_DB_LOCK_TIMEOUT_MS",
        "CDS_AUDIT_WRITE_TIMEOUT_MS",
        "CDS_AUDIT_SPOOL_MAX_MB",
        "CDS_AUDIT_SPOOL_DIR",
        "CDS_AUDIT_DRAIN_SECONDS",
        "CDS_FEEDBACK_CONCURRENCY",
        "CDS_READY_TIMEOUT_MS",
        "CDS_ANALYTICS_TOKEN",
        "CDS_METRICS_TOKEN",
        "CDS_LOG_FORMAT",
    }
)


def _location(url: str | None, default: str) -> str:
    """Kind and place of a database or Redis URL, without user or password."""
    if not url:
        return default
    try:
        parsed = make_url(url)
    except Exception:  # an unparsable URL still fingerprints, by its text's digest
        return "unparsed:" + hashlib.sha256(url.encode()).hexdigest()[:12]
    place = f"{parsed.host or ''}:{parsed.port or ''}/{parsed.database or ''}"
    return f"{parsed.get_backend_name()}://{place}"


def fingerprint_inputs(
    config: Mapping[str, Any], knowledge_version: str, database: str, hash_key: bytes
) -> dict[str, Any]:
    """The values the digest covers (``database``: the storage's dialect and place)."""
    inputs: dict[str, Any] = {name: config.get(name) for name in FINGERPRINT_SETTINGS}
    inputs["replayCache"] = _location(config.get("CDS_REDIS_URL"), "in-process")
    inputs["database"] = database
    inputs["auditHashKey"] = hmac.new(hash_key, b"cds-settings-fingerprint", "sha256").hexdigest()
    inputs["knowledgeVersion"] = knowledge_version
    return inputs


def settings_fingerprint(
    config: Mapping[str, Any], knowledge_version: str, database: str, hash_key: bytes
) -> str:
    """Return ``sha256:<16 hex>`` over the covered settings (same settings, same digest)."""
    inputs = fingerprint_inputs(config, knowledge_version, database, hash_key)
    canonical = json.dumps(inputs, sort_keys=True, default=_canonical, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _canonical(value: object) -> object:
    """Parsed settings (issuer maps, dataclasses) as plain, ordered values."""
    if isinstance(value, Mapping):
        return {str(k): value[k] for k in sorted(value, key=str)}
    if isinstance(value, (set, frozenset)):
        return sorted(map(str, value))
    return repr(value)
