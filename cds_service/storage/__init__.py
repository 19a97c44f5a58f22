"""Audit trail, feedback and override analytics on SQLite or PostgreSQL.

Modules, one job each: ``values`` (the frozen records handed to storage), ``engine``
(connection, transactions, outage mapping, fork safety), ``migrator`` (Alembic upgrades of
``migrations/``), ``schema`` (the tables), ``audit`` (audit writes and the background
writer), ``spool`` (records the database did not take, on local disk until it takes them),
``feedback`` (feedback writes), ``reports`` (analytics queries and window helpers),
``store`` (the ``Storage`` facade over them) and ``extension`` (Flask set-up and the ``db`` CLI).

The hook path builds a ``CallRecord`` and hands it to ``AuditWriter.submit`` before the answer
leaves (bounded: the database within ``CDS_AUDIT_WRITE_TIMEOUT_MS``, else the local ``spool``;
never raises); the feedback endpoint calls ``Storage.store_feedback``; the hook path reads
``Storage.recent_overrides`` (repeated alerts, bounded time); the analytics
blueprint reads ``Storage.rule_analytics`` and ``Storage.timeseries``. ``init_storage(app)``
creates them (``cds_service.app`` wires the rest); its module docstring lists the config keys.
"""

from .audit import AuditWriter
from .extension import (
    HASH_KEY_EXTENSION,
    STORAGE_EXTENSION,
    WRITER_EXTENSION,
    db_cli,
    get_audit_writer,
    get_storage,
    init_storage,
    shutdown_storage,
)
from .store import Storage
from .values import (
    CallRecord,
    FeedbackEntry,
    FeedbackOutcome,
    IssuedCard,
    Override,
    hash_patient_id,
)

__all__ = [
    "HASH_KEY_EXTENSION",
    "STORAGE_EXTENSION",
    "WRITER_EXTENSION",
    "AuditWriter",
    "CallRecord",
    "FeedbackEntry",
    "FeedbackOutcome",
    "IssuedCard",
    "Override",
    "Storage",
    "db_cli",
    "get_audit_writer",
    "get_storage",
    "hash_patient_id",
    "init_storage",
    "shutdown_storage",
]
