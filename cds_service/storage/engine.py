"""The database connection: URL, engine settings per database, transactions, fork safety.

Concurrency rules this module enforces (see ``cds_service.storage.store`` for all of them):

- Every use is bounded (``DatabaseTimeouts``): PostgreSQL connections get ``statement_timeout``
  and ``lock_timeout`` when they connect, SQLite connections a busy timeout of the lock
  timeout; waiting for a pooled connection is bounded too. A stalled database (a held lock, a
  slow query) costs a caller at most these, never a thread for good.
- SQLite runs in WAL mode, and every write transaction of several statements starts with
  ``BEGIN IMMEDIATE`` so two writers queue for the lock instead of failing mid-transaction.
- PostgreSQL connects with a 5 s timeout and pre-pings pooled connections.
- A bounded use (``transaction(timeout_ms=...)``, readiness) waits at most that long for a
  lock (SQLite's busy timeout, set for that use only) or a statement (PostgreSQL's
  ``statement_timeout`` and ``lock_timeout`` for that transaction).
- The hook path (the repeat read, the audit write) runs on DB-API connections of its own
  (``HookConnections``, ``on_hook_connection``), kept per timeout and set up once with it:
  no SQLAlchemy checkout, ``BEGIN`` or busy-timeout change per call, no pre-ping (a reused
  PostgreSQL connection found broken is replaced and the work run again once).
- A database outage surfaces as ``StorageUnavailableError``, never as a driver error.
- A forked worker (gunicorn --preload) drops the connections it inherited (pool and hook
  path) instead of sharing sockets or SQLite locks with its parent.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from cds_service import metrics
from cds_service.errors import StorageUnavailableError

_PG_CONNECT_TIMEOUT_S = 5
_WAL_SWITCH_WAIT_S = 30  # once per new file, at start-up
# Errors that mean "the database cannot serve us now", as opposed to a bug in a query.
_UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)
T = TypeVar("T")


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


def _in_memory(url: URL) -> bool:
    """Tell whether ``url`` is an in-memory SQLite database (tests and generators only)."""
    return url.database in (None, "", ":memory:")


def _set_up_sqlite(dbapi_connection: Any, busy_ms: int, in_memory: bool) -> None:
    """Settings every SQLite connection gets: autocommit driver, busy timeout, keys, WAL."""
    # Take over BEGIN from the sqlite3 module (SQLAlchemy's documented recipe) so that
    # writers can use BEGIN IMMEDIATE; see the module docstring.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    if not in_memory:
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_engine(url: URL, timeouts: DatabaseTimeouts) -> Engine:
    """Create a SQLite engine that is safe for several threads and processes."""
    in_memory = _in_memory(url)
    connect_args = {"timeout": timeouts.lock_ms / 1000, "check_same_thread": False}
    if in_memory:  # one database for every thread and the hook path: one shared connection
        engine = create_engine(url, connect_args=connect_args, poolclass=StaticPool)
    else:
        engine = create_engine(url, connect_args=connect_args, pool_timeout=timeouts.pool_wait_s)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        _set_up_sqlite(dbapi_connection, timeouts.lock_ms, in_memory)

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
    )  # the hook path has connections of its own (HookConnections), without the pre-ping
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


class HookConnections:
    """DB-API connections kept for the hook path, each set up once with its timeouts.

    The hook path's database work is one read and one write a call; SQLAlchemy's checkout,
    events, ``BEGIN`` and a busy timeout set and reset around each use cost more CPU than
    running them (issue 14). A connection here already waits at most the hook's timeout
    (SQLite's busy timeout, PostgreSQL's ``statement_timeout`` and ``lock_timeout``), runs in
    autocommit mode (a single read needs no transaction; writes begin their own) and keeps its
    prepared statements (sqlite3's statement cache, psycopg's prepared statements).

    Thread-safe: a connection is used by one thread at a time (taken off a stack, put back
    after). A connection that failed is closed, never put back. After a fork the child drops
    the parent's connections without closing them (``forget``).
    """

    def __init__(self, connect: Callable[[], Any], *, keep: int = 8, close: bool = True) -> None:
        self._connect = connect
        self._keep = keep
        self._close = close  # False: a connection shared with the engine (in-memory SQLite)
        self._idle: deque[Any] = deque()

    def acquire(self) -> tuple[Any, bool]:
        """Return an idle connection (and True), or a new one (and False)."""
        try:
            return self._idle.pop(), True
        except IndexError:
            return self._connect(), False

    def release(self, connection: Any) -> None:
        """Put a connection that worked back; beyond ``keep`` idle ones, close it."""
        if len(self._idle) < self._keep:
            self._idle.append(connection)
        else:
            self.discard(connection)

    def discard(self, connection: Any) -> None:
        """Close a connection that failed (or is not kept)."""
        if self._close:
            with suppress(Exception):  # it may be broken already
                connection.close()

    def discard_idle(self) -> None:
        """Close every idle connection (after an outage they are likely all dead)."""
        while self._idle:
            self.discard(self._idle.pop())

    def close(self) -> None:
        """Close the idle connections, and each one in use when it comes back."""
        self._keep = 0
        self.discard_idle()

    def forget(self) -> list[Any]:
        """Drop the idle connections without closing them (a forked child); return them."""
        inherited = list(self._idle)
        self._idle.clear()
        return inherited


# Connections a forked child inherited: referenced for good, so that neither a close nor the
# garbage collector touches the parent's sockets or SQLite file locks from the child.
_INHERITED: list[Any] = []


def _forget_parent_connections(database_ref: weakref.ReferenceType[Database]) -> None:
    """In a forked child, drop the pools inherited from the parent without closing them."""
    database = database_ref()
    if database is not None:
        database.engine.dispose(close=False)
        database._hook_pools_lock = threading.Lock()  # another thread may have held it
        pools, database._hook_pools = database._hook_pools, {}
        for pool in pools.values():
            _INHERITED.extend(pool.forget())


class Database:
    """One engine on one URL: transactions that map outages; thread-safe, fork-safe."""

    def __init__(self, url: str | URL, timeouts: DatabaseTimeouts | None = None) -> None:
        self.url = normalise_url(url)
        self.timeouts = timeouts or DatabaseTimeouts()
        self.engine = engine_for(self.url, self.timeouts)
        self._hook_pools: dict[int | None, HookConnections] = {}
        self._hook_pools_lock = threading.Lock()
        dbapi = self.engine.dialect.loaded_dbapi
        self._driver_unavailable: tuple[type[Exception], ...] = (
            dbapi.OperationalError,
            dbapi.InterfaceError,
        )
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
            cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig else exc
            raise self._unavailable(cause, str(exc)) from exc

    def _unavailable(self, cause: BaseException, message: str) -> StorageUnavailableError:
        """The error an outage becomes, counted in ``cds_database_errors_total``."""
        metrics.DATABASE_ERRORS.inc()  # every outage passes here, whoever catches it
        first_line = message.splitlines()[0] if message else ""
        return StorageUnavailableError(
            f"database {self.safe_url()} unavailable: {type(cause).__name__}: {first_line}"
        )

    def on_hook_connection(self, timeout_ms: int | None, work: Callable[[Any], T]) -> T:
        """Run ``work`` on a DB-API connection kept for the hook path; return its result.

        The connection waits at most ``timeout_ms`` for a lock or a statement (None: the
        ``DatabaseTimeouts``) and is in autocommit mode: ``work`` writes its own ``BEGIN``
        where it needs a transaction, and must leave none open. Outages (the driver's
        OperationalError and InterfaceError) become StorageUnavailableError. A reused
        PostgreSQL connection found broken (the server restarted since) is replaced and
        ``work`` run once more on the new one, as a pre-ping would have done.
        """
        pool = self._hook_pools.get(timeout_ms) or self._hook_pool(timeout_ms)
        try:
            connection, reused = pool.acquire()
            try:
                return self._run(pool, connection, work)
            except self._driver_unavailable:
                if not (reused and getattr(connection, "broken", False)):
                    raise
                pool.discard_idle()  # they went with the same server
                connection, _ = pool.acquire()
                return self._run(pool, connection, work)
        except self._driver_unavailable as exc:
            raise self._unavailable(exc, str(exc)) from exc

    @staticmethod
    def _run(pool: HookConnections, connection: Any, work: Callable[[Any], T]) -> T:
        """Run ``work`` on ``connection``; put it back when it worked, close it when not."""
        try:
            result = work(connection)
        except BaseException:
            pool.discard(connection)
            raise
        pool.release(connection)
        return result

    def _hook_pool(self, timeout_ms: int | None) -> HookConnections:
        """The hook-path connections for one timeout, made on first use."""
        with self._hook_pools_lock:
            pool = self._hook_pools.get(timeout_ms)
            if pool is None:
                statement_ms = self.timeouts.statement_ms if timeout_ms is None else timeout_ms
                lock_ms = self.timeouts.lock_ms if timeout_ms is None else timeout_ms
                pool = self._hook_connections(int(statement_ms), int(lock_ms))
                self._hook_pools[timeout_ms] = pool
            return pool

    def _hook_connections(self, statement_ms: int, lock_ms: int) -> HookConnections:
        """Connections set up for the hook path on this database."""
        dialect = self.engine.dialect
        cargs, cparams = dialect.create_connect_args(self.url)
        if self.dialect == "sqlite":
            if _in_memory(self.url):  # the engine's one shared connection (StaticPool)
                return HookConnections(self._engine_driver_connection, keep=1, close=False)

            def connect_sqlite() -> Any:
                connection = dialect.loaded_dbapi.connect(
                    *cargs, **{**cparams, "timeout": lock_ms / 1000, "check_same_thread": False}
                )
                _set_up_sqlite(connection, lock_ms, in_memory=False)
                return connection

            return HookConnections(connect_sqlite)
        if self.url.get_dialect().driver != "psycopg":
            raise NotImplementedError(
                f"the hook path supports SQLite and PostgreSQL with psycopg, not {self.url}"
            )
        cparams.pop("context", None)  # SQLAlchemy's own adapters: the driver's defaults here

        def connect_postgresql() -> Any:
            # As the engine's connect_args, ours win over the URL's query (no duplicate key).
            settings = {**cparams, "connect_timeout": _PG_CONNECT_TIMEOUT_S, "autocommit": True}
            connection = dialect.loaded_dbapi.connect(*cargs, **settings)
            connection.execute(
                f"SET statement_timeout = {statement_ms}; SET lock_timeout = {lock_ms}"
            )
            return connection

        return HookConnections(connect_postgresql)

    def _engine_driver_connection(self) -> Any:
        """The DB-API connection behind the engine's pool (the shared in-memory database)."""
        proxied = self.engine.raw_connection()
        connection = proxied.driver_connection
        proxied.close()  # back to the StaticPool: the same connection stays open
        return connection

    def dispose(self) -> None:
        """Close every pooled connection (at shutdown, in tests, and after a fork)."""
        with self._hook_pools_lock:
            pools, self._hook_pools = self._hook_pools, {}
        for pool in pools.values():
            pool.close()
        self.engine.dispose()
