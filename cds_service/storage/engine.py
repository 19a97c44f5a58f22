"""The database connection: URL, engine settings per database, transactions, fork safety.

Concurrency rules this module enforces (see ``cds_service.storage.store`` for all of them):

- Every use is bounded (``DatabaseTimeouts``): PostgreSQL connections get ``statement_timeout``
  and ``lock_timeout`` when they connect, SQLite connections a busy timeout of the lock
  timeout; waiting for a pooled connection is bounded too. A stalled database (a held lock, a
  slow query) costs a caller at most these, never a thread for good.
- SQLite runs in WAL mode, and every write transaction starts with ``BEGIN IMMEDIATE`` so two
  writers queue for the lock instead of failing mid-transaction.
- PostgreSQL connects with a 5 s timeout and pre-pings pooled connections.
- A use on the hook path (``transaction(timeout_ms=...)``) waits at most that long for a
  lock (SQLite's busy timeout, set for that use only) or a statement (PostgreSQL's
  ``statement_timeout`` and ``lock_timeout`` for that transaction).
- A database outage surfaces as ``StorageUnavailableError``, never as a driver error.
- A forked worker (gunicorn --preload) drops the pool it inherited instead of sharing sockets.
"""

from __future__ import annotations

import os
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import ConnectionPoolEntry

from cds_service import metrics
from cds_service.errors import StorageUnavailableError

_PG_CONNECT_TIMEOUT_S = 5
_WAL_SWITCH_WAIT_S = 30  # once per new file, at start-up
# Errors that mean "the database cannot serve us now", as opposed to a bug in a query.
_UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


@dataclass(frozen=True)
class DatabaseTimeouts:
    """How long any database use may wait (``CDS_DB_STATEMENT_TIMEOUT_MS`` / ``_LOCK_``)."""

    statement_ms: int = 5000
    lock_ms: int = 2000

    def __post_init__(self) -> None:
        """Refuse 0 or less: both databases read 0 as "wait for ever"."""
        if self.statement_ms <= 0 or self.lock_ms <= 0:
            raise ValueError(f"database timeouts must be positive, got {self}")

    @property
    def pool_wait_s(self) -> float:
        """Wait for a pooled connection at most as long as for a lock."""
        return self.lock_ms / 1000


def normalise_url(url: str | URL) -> URL:
    """Parse a database URL; a bare ``postgresql://`` means psycopg 3, the driver we ship."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def as_utc(value: datetime) -> datetime:
    """Return ``value`` in UTC, refusing naive datetimes."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} is ambiguous; pass UTC")
    return value.astimezone(UTC)


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL (readers never block the writer); it stays so once set.

    Switching needs a moment alone with the file and SQLite does not wait for it with the
    busy timeout, so instances opening a new file together retry here.
    """
    deadline = time.monotonic() + _WAL_SWITCH_WAIT_S
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_busy_timeout(conn: Connection, milliseconds: int) -> None:
    """Set how long SQLite waits for a lock on this pooled connection."""
    conn.connection.driver_connection.execute(f"PRAGMA busy_timeout={milliseconds}")  # type: ignore[union-attr]


def _sqlite_engine(url: URL, timeouts: DatabaseTimeouts) -> Engine:
    """Create a SQLite engine that is safe for several threads and processes."""
    engine = create_engine(
        url,
        connect_args={"timeout": timeouts.lock_ms / 1000, "check_same_thread": False},
        pool_timeout=timeouts.pool_wait_s,
    )
    in_memory = url.database in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take over BEGIN from the sqlite3 module (SQLAlchemy's documented recipe) so that
        # writers can use BEGIN IMMEDIATE; see the module docstring.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(timeouts.lock_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if not in_memory:
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("cds_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def engine_for(url: URL, timeouts: DatabaseTimeouts | None = None) -> Engine:
    """Create the engine with the settings each supported database needs."""
    timeouts = timeouts or DatabaseTimeouts()
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, timeouts)
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        # Fail fast during an outage: the audit writer must not hang on a dead host.
        connect_args["connect_timeout"] = _PG_CONNECT_TIMEOUT_S
    engine = create_engine(
        url, pool_pre_ping=True, connect_args=connect_args, pool_timeout=timeouts.pool_wait_s
    )
    if url.get_backend_name() == "postgresql":

        @event.listens_for(engine, "connect")
        def _bound_every_statement(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
            # SET on connect, not the ``options`` connect argument: a URL may carry its own
            # options (a search_path) that connect_args would replace.
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET statement_timeout = {int(timeouts.statement_ms)}")
                cursor.execute(f"SET lock_timeout = {int(timeouts.lock_ms)}")
            dbapi_connection.commit()

    return engine


def _forget_parent_connections(database_ref: weakref.ReferenceType[Database]) -> None:
    """In a forked child, drop the pool inherited from the parent without closing it."""
    database = database_ref()
    if database is not None:
        database.engine.dispose(close=False)


class Database:
    """One engine on one URL: transactions that map outages; thread-safe, fork-safe."""

    def __init__(self, url: str | URL, timeouts: DatabaseTimeouts | None = None) -> None:
        self.url = normalise_url(url)
        self.timeouts = timeouts or DatabaseTimeouts()
        self.engine = engine_for(self.url, self.timeouts)
        # A forked worker (gunicorn --preload) must not share the parent's pooled sockets.
        os.register_at_fork(after_in_child=partial(_forget_parent_connections, weakref.ref(self)))

    @property
    def dialect(self) -> str:
        """Return the database's dialect name (``sqlite`` or ``postgresql``)."""
        return self.engine.dialect.name

    def safe_url(self) -> str:
        """Return the URL with any password hidden, for logs and messages."""
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def transaction(self, *, write: bool, timeout_ms: int | None = None) -> Iterator[Connection]:
        """Yield a connection in a transaction; outages become StorageUnavailableError.

        ``write=True`` starts the transaction with ``BEGIN IMMEDIATE`` on SQLite.
        ``timeout_ms`` bounds the wait for locks and the statements (the hook path uses it):
        SQLite's busy timeout for this use of the connection, PostgreSQL's
        ``statement_timeout`` and ``lock_timeout`` for this transaction. Without it the
        connection's own timeouts (``DatabaseTimeouts``) hold.
        """
        try:
            with self.engine.connect() as conn:
                if write:
                    conn = conn.execution_options(cds_write=True)
                sqlite_timeout = timeout_ms is not None and self.dialect == "sqlite"
                if sqlite_timeout:  # on the driver connection: outside any transaction
                    _sqlite_busy_timeout(conn, int(timeout_ms or 0))
                try:
                    with conn.begin():
                        if timeout_ms is not None and self.dialect == "postgresql":
                            bound = int(timeout_ms)  # both in one round trip (hook path)
                            conn.exec_driver_sql(
                                f"SET LOCAL statement_timeout = {bound}; "
                                f"SET LOCAL lock_timeout = {bound}"
                            )
                        yield conn
                finally:
                    if sqlite_timeout:  # the pooled connection goes back with the usual timeout
                        _sqlite_busy_timeout(conn, self.timeouts.lock_ms)
        except _UNAVAILABLE as exc:
            metrics.DATABASE_ERRORS.inc()  # every outage passes here, whoever catches it
            raise StorageUnavailableError(
                f"database {self.safe_url()} unavailable: "
                f"{type(exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc).__name__}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc

    def dispose(self) -> None:
        """Close every pooled connection (at shutdown, in tests, and after a fork)."""
        self.engine.dispose()
