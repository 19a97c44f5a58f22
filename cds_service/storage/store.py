"""Storage: the one object the app uses to talk to the audit and feedback database.

A facade over the job modules: ``engine`` (connection, transactions, outages, forks),
``migrator`` (schema upgrades), ``audit`` (audit writes), ``feedback`` (feedback writes) and
``reports`` (analytics queries). It holds no SQL of its own.

Works on SQLite (the default file in the instance folder) and PostgreSQL (for several
instances). Concurrency rules:

- Every use is bounded (``DatabaseTimeouts``: statement and lock timeouts, SQLite's busy
  timeout); see ``cds_service.storage.engine``.
- SQLite runs in WAL mode, and every write transaction of several statements starts with
  ``BEGIN IMMEDIATE`` so two writers queue for the lock instead of failing mid-transaction.
- The hook path's read and write run on connections kept for it, already bounded by the
  hook's timeout (``Database.on_hook_connection``).
- Feedback is de-duplicated by a content hash under a unique constraint with
  ``ON CONFLICT DO NOTHING`` on both databases, so parallel duplicate posts store one row.
- ``migrate()`` holds a lock while it upgrades (a transaction-level advisory lock on
  PostgreSQL, the write lock on SQLite), so instances starting together migrate once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from . import reports
from .audit import write_calls
from .engine import Database, DatabaseTimeouts
from .feedback import recent_overrides, store_feedback
from .migrator import Migrator
from .reports import Bucket
from .values import CallRecord, FeedbackEntry, Override


def utc_now() -> datetime:
    """Return the current time in UTC (the clock when the app gives none)."""
    return datetime.now(UTC)


class Storage:
    """Read and write audit records and feedback; one instance per app, thread-safe.

    ``clock`` stamps when feedback was received and when a report was generated; the app
    passes its ``CDS_CLOCK``.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        clock: Callable[[], datetime] = utc_now,
        timeouts: DatabaseTimeouts | None = None,
    ) -> None:
        self.database = Database(url, timeouts)
        self.clock = clock
        self._migrator = Migrator(self.database, label=repr(self))

    def __repr__(self) -> str:
        return f"Storage({self.database.safe_url()!r})"

    @property
    def url(self) -> URL:
        """Return the database URL (a bare ``postgresql://`` normalised to psycopg 3)."""
        return self.database.url

    @property
    def engine(self) -> Engine:
        """Return the SQLAlchemy engine (the migrations' env.py and tests read it)."""
        return self.database.engine

    def dispose(self) -> None:
        """Close every pooled connection (at shutdown, in tests, and after a fork)."""
        self.database.dispose()

    # -- migrations ----------------------------------------------------------------------

    def head_revision(self) -> str | None:
        """Return the newest migration shipped with this code."""
        return self._migrator.head_revision()

    def current_revision(self) -> str | None:
        """Return the migration the database is at (None when never migrated)."""
        return self._migrator.current_revision()

    def is_empty(self) -> bool:
        """Tell whether the database has neither our tables nor a migration record."""
        return self._migrator.is_empty()

    def migrate(self) -> None:
        """Upgrade the database to the newest migration (``flask db upgrade`` runs this)."""
        self._migrator.migrate()

    def prepare(self) -> None:
        """Migrate an empty database; warn when a used one is behind this code's schema.

        A database that already holds data is only upgraded by the documented command, so
        a deploy never changes a shared schema behind other running instances' backs.
        """
        self._migrator.prepare()

    # -- writes --------------------------------------------------------------------------

    @property
    def is_prepared(self) -> bool:
        """Tell whether ``prepare`` has succeeded (the schema is there to write to)."""
        return self._migrator.prepared

    def record_calls(
        self, records: Sequence[CallRecord], timeout_ms: int | None = None, *, fresh: bool = False
    ) -> int:
        """Store audit records in one idempotent transaction; return how many were new.

        ``timeout_ms`` bounds the wait and ``fresh`` skips the look-up for records never
        written (the hook path writes with both).
        """
        return write_calls(self.database, records, timeout_ms, fresh=fresh)

    def ping(self, timeout_ms: int) -> None:
        """Run ``SELECT 1`` within ``timeout_ms`` (readiness); raises StorageUnavailableError."""
        with self.database.transaction(write=False, timeout_ms=timeout_ms) as conn:
            conn.exec_driver_sql("SELECT 1")

    def store_feedback(self, service_id: str, entries: Sequence[FeedbackEntry]) -> int:
        """Store feedback entries all-or-nothing; return how many were new (not duplicates).

        Raises UnknownCardError, storing nothing, when any card uuid was not issued by
        ``service_id``.
        """
        if not entries:
            return 0
        return store_feedback(self.database, service_id, entries, received_at=self.clock())

    def recent_overrides(
        self,
        patient_hash: str,
        finding_keys: Collection[str],
        since: datetime,
        timeout_ms: int = 500,
    ) -> dict[str, Override]:
        """Per finding key, the latest override for this patient since ``since`` (one query).

        Read on the hook path, so bounded by ``timeout_ms``; raises StorageUnavailableError.
        """
        return recent_overrides(self.database, patient_hash, finding_keys, since, timeout_ms)

    # -- analytics -----------------------------------------------------------------------

    def rule_analytics(self, since: datetime | None = None) -> dict[str, Any]:
        """Per rule since ``since``: evaluated, fired, and what clinicians did with its cards."""
        return reports.rule_analytics(self.database, since, generated_at=self.clock())

    def timeseries(self, since: datetime | None = None, bucket: Bucket = "day") -> dict[str, Any]:
        """Per rule and per day (or ISO week) the cards fired: fired, accepted, overridden."""
        return reports.timeseries(self.database, since, bucket)
