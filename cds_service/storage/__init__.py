"""Audit trail, feedback and override analytics on SQLite or PostgreSQL.

The hook path builds a ``CallRecord`` and hands it to ``AuditWriter.submit`` (never blocks,
never raises); the feedback endpoint calls ``Storage.store_feedback``; the analytics
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
from .records import CallRecord, FeedbackEntry, IssuedCard, Outcome, hash_patient_id
from .store import Storage

__all__ = [
    "HASH_KEY_EXTENSION",
    "STORAGE_EXTENSION",
    "WRITER_EXTENSION",
    "AuditWriter",
    "CallRecord",
    "FeedbackEntry",
    "IssuedCard",
    "Outcome",
    "Storage",
    "db_cli",
    "get_audit_writer",
    "get_storage",
    "hash_patient_id",
    "init_storage",
    "shutdown_storage",
]
