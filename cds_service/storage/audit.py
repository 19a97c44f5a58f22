"""The audit trail of hook calls: the writes, and the writer that makes each one durable.

``write_calls`` stores audit records (calls with the rules evaluated, the cards issued) in one
idempotent transaction. ``AuditWriter.submit`` runs on the hook path *before the answer
leaves*, so any instance can take feedback on a card the moment the client has it:

1. the record goes to the database, bounded by ``write_timeout_ms`` (statement and lock);
2. if the database cannot take it (down, stalled, not yet migrated), the record is appended
   and fsync'd to the local spool (``cds_service.storage.spool``), and the database is not
   tried again on the hook path for ``retry_after_s``, so an outage costs one bounded wait,
   not one per call;
3. if the spool is full too, the record is logged whole at ERROR and counted as dropped.

A daemon thread replays the spool every ``replay_every_s`` once the database answers;
``close`` (at exit: SIGTERM under gunicorn) replays for at most ``drain_s`` and says at ERROR
how many records stay in the spool. A record holds no names or tokens, only a keyed patient
hash, so it may go to the log. The cost on the hook path is in bench/RESULTS.md.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from cds_service import metrics
from cds_service.errors import StorageUnavailableError

from .engine import Database, as_utc
from .schema import hook_call, issued_card, rule_ids_text
from .spool import AuditSpool, record_json
from .values import CallRecord

if TYPE_CHECKING:
    from .store import Storage

log = logging.getLogger(__name__)


def write_calls(
    database: Database,
    records: Sequence[CallRecord],
    timeout_ms: int | None = None,
    *,
    fresh: bool = False,
) -> int:
    """Store audit records with their evaluated rules and issued cards in one transaction.

    Idempotent: a record whose ``call_id`` is already stored is skipped (a spool replayed
    after a write whose commit answer was lost). ``fresh=True`` (the hook path: records just
    made, never written) skips that look-up and writes with prepared driver statements on a
    connection kept for the hook path (``Database.on_hook_connection``). Returns how many
    were new.
    """
    if not records:
        return 0
    new = list(dict((r.call_id, r) for r in records).values())
    if fresh:
        dialect = database.dialect
        calls, cards = _driver_rows(new, sqlite=dialect == "sqlite")
        write = _write_sqlite if dialect == "sqlite" else _write_postgresql
        database.on_hook_connection(timeout_ms, partial(write, calls=calls, cards=cards))
        return len(new)
    with database.transaction(write=True, timeout_ms=timeout_ms) as conn:
        ids = [record.call_id for record in new]
        stored = set(conn.scalars(select(hook_call.c.id).where(hook_call.c.id.in_(ids))))
        new = [r for r in new if r.call_id not in stored]
        if not new:
            return 0
        call_rows, card_rows = _rows(new)
        conn.execute(hook_call.insert(), call_rows)
        if card_rows:
            conn.execute(issued_card.insert(), card_rows)
    return len(new)


_CALL_COLUMNS = (
    "id, hook_instance, service_id, hook, called_at, duration_ms, knowledge_version, "
    "unavailable_data, patient_hash, rules_evaluated"
)
_CARD_COLUMNS = (
    "uuid, call_id, service_id, rule_id, indicator, suggestion_uuids, issued_at, finding_key, "
    "quieted"
)
# The two INSERTs as driver SQL, written once (no per-call compiling). The column lists are
# the ones ``schema`` declares (tests/test_storage.py reads the rows back through the Core
# tables); JSON columns get an explicit cast on PostgreSQL.
_SQLITE_CALL = f"INSERT INTO {hook_call.name} ({_CALL_COLUMNS}) VALUES ({', '.join(['?'] * 10)})"
_SQLITE_CARD = f"INSERT INTO {issued_card.name} ({_CARD_COLUMNS}) VALUES ({', '.join(['?'] * 9)})"
_PG_CALL = (
    f"INSERT INTO {hook_call.name} ({_CALL_COLUMNS}) "
    f"VALUES ({', '.join(['%s'] * 7 + ['%s::json', '%s', '%s'])})"
)
_PG_CARD = (
    f"INSERT INTO {issued_card.name} ({_CARD_COLUMNS}) "
    f"VALUES ({', '.join(['%s'] * 5 + ['%s::json'] + ['%s'] * 3)})"
)


@lru_cache(maxsize=64)
def _rules_text(rules_evaluated: tuple[str, ...]) -> str:
    """``rule_ids_text`` for the hook path: a call evaluates the same rules as the last one."""
    return rule_ids_text(rules_evaluated)


def _driver_rows(
    records: Sequence[CallRecord], *, sqlite: bool
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The call and card rows as driver parameters, written as the Core types write them.

    On SQLite UTC times are naive ``YYYY-MM-DD HH:MM:SS.ffffff`` text and booleans 0/1; JSON
    is ``json.dumps`` text on both.
    """
    calls: list[tuple[Any, ...]] = []
    cards: list[tuple[Any, ...]] = []
    for record in records:
        call_id = record.call_id
        called = as_utc(record.called_at)
        when: Any = called.replace(tzinfo=None).isoformat(" ", "microseconds") if sqlite else called
        calls.append(
            (
                call_id,
                record.hook_instance,
                record.service_id,
                record.hook,
                when,
                record.duration_ms,
                record.knowledge_version,
                json.dumps(list(record.unavailable_data)),
                record.patient_hash,
                _rules_text(record.rules_evaluated),
            )
        )
        cards.extend(
            (
                card.uuid,
                call_id,
                record.service_id,
                card.rule_id,
                card.indicator,
                json.dumps(list(card.suggestion_uuids)),
                when,
                card.finding_key,
                int(card.quieted) if sqlite else card.quieted,
            )
            for card in record.cards
        )
    return calls, cards


def _write_sqlite(conn: Any, *, calls: list[tuple[Any, ...]], cards: list[tuple[Any, ...]]) -> None:
    """Insert on a hook-path sqlite3 connection (autocommit mode: we write BEGIN ourselves).

    A lone call row is one statement, atomic by itself; with cards, ``BEGIN IMMEDIATE`` takes
    the write lock first (waiting at most the connection's busy timeout).
    """
    if len(calls) == 1 and not cards:
        conn.execute(_SQLITE_CALL, calls[0])
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(_SQLITE_CALL, calls)
        conn.executemany(_SQLITE_CARD, cards)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with suppress(Exception):  # the connection is discarded anyway
                conn.execute("ROLLBACK")
        raise


def _write_postgresql(
    conn: Any, *, calls: list[tuple[Any, ...]], cards: list[tuple[Any, ...]]
) -> None:
    """Insert on a hook-path psycopg connection (autocommit); its own statement and lock
    timeouts are the hook's.

    One call (the hook path) is one statement: the call row in a WITH clause, the cards in
    the main INSERT, atomic without BEGIN and COMMIT and one round trip (the cards' foreign
    key is checked at the end of the statement, when the call row is there). Several calls
    go pipelined in one transaction.
    """
    if len(calls) == 1:
        conn.execute(
            _pg_insert(len(cards)), [*calls[0], *(value for row in cards for value in row)]
        )
        return
    with conn.pipeline(), conn.transaction():
        cursor = conn.cursor()
        cursor.executemany(_PG_CALL, calls)
        if cards:
            cursor.executemany(_PG_CARD, cards)


@lru_cache(maxsize=32)
def _pg_insert(card_count: int) -> str:
    """The one statement that writes a call and its ``card_count`` cards on PostgreSQL."""
    if not card_count:
        return _PG_CALL
    values = _PG_CARD[_PG_CARD.index("VALUES ") + len("VALUES ") :]
    return f"WITH new_call AS ({_PG_CALL}) {_PG_CARD}" + f", {values}" * (card_count - 1)


def _rows(records: Sequence[CallRecord]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of the call and issued card tables for ``records`` (the Core write)."""
    calls: list[dict[str, Any]] = []
    cards: list[dict[str, Any]] = []
    for record in records:
        call_id = record.call_id
        called_at = as_utc(record.called_at)
        calls.append(
            {
                "id": call_id,
                "hook_instance": record.hook_instance,
                "service_id": record.service_id,
                "hook": record.hook,
                "called_at": called_at,
                "duration_ms": record.duration_ms,
                "knowledge_version": record.knowledge_version,
                "unavailable_data": list(record.unavailable_data),
                "patient_hash": record.patient_hash,
                "rules_evaluated": rule_ids_text(record.rules_evaluated),
            }
        )
        cards.extend(
            {
                "uuid": card.uuid,
                "call_id": call_id,
                "service_id": record.service_id,
                "rule_id": card.rule_id,
                "indicator": card.indicator,
                "suggestion_uuids": list(card.suggestion_uuids),
                "issued_at": called_at,
                "finding_key": card.finding_key,
                "quieted": card.quieted,
            }
            for card in record.cards
        )
    return calls, cards


class AuditWriter:
    """Store each audit record before the hook answer leaves: database, else spool, else log.

    Counters: ``written`` (to the database on the hook path), ``spooled`` (to the spool),
    ``replayed`` (from the spool to the database), ``dropped`` (in neither: logged whole).
    """

    def __init__(
        self,
        storage: Storage,
        spool: AuditSpool | None = None,
        *,
        write_timeout_ms: int = 500,
        retry_after_s: float = 5.0,
        replay_every_s: float = 2.0,
        drain_s: float = 10.0,
    ) -> None:
        self.storage = storage
        self.spool = spool
        self.write_timeout_ms = write_timeout_ms
        self.retry_after_s = retry_after_s
        self.replay_every_s = replay_every_s
        self.drain_s = drain_s
        self.written = self.spooled = self.replayed = self.dropped = 0
        self._closed = False
        self._start()

    def _start(self) -> None:
        """Create the lock, the replay thread and its stop event (again after a fork)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._replaying = threading.Lock()
        self._db_skip_until = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cds-audit-replay", daemon=True)
        self._thread.start()

    def _restart_after_fork(self) -> None:
        """Threads do not survive fork (gunicorn --preload): start ours again in the child.

        Storage itself drops the parent's pooled connections at fork (os.register_at_fork).
        """
        self._start()

    @property
    def failed(self) -> int:
        """Records the database did not take on the hook path (spooled or dropped)."""
        return self.spooled + self.dropped

    # -- the hook path -------------------------------------------------------------------

    def submit(self, record: CallRecord) -> None:
        """Make ``record`` durable before returning; bounded in time, never raises."""
        try:
            if self._pid != os.getpid():
                self._restart_after_fork()
            if self._database_worth_trying():
                try:
                    self.storage.record_calls(
                        [record], timeout_ms=self.write_timeout_ms, fresh=True
                    )
                except StorageUnavailableError as exc:
                    self._database_failed(exc)
                except Exception:  # a record this database refuses: kept, replay sets it aside
                    log.exception("audit record for hookInstance=%s refused", record.hook_instance)
                else:
                    self._count("written")
                    return
            self._keep(record)
        except Exception:  # the hook response must go out whatever happens here
            log.exception(
                "audit record for hookInstance=%s not stored; record: %s",
                getattr(record, "hook_instance", "?"),
                _safe_json(record),
            )
            self._count("dropped")

    def _database_worth_trying(self) -> bool:
        """False while a recent failure says the database is away, or it is not prepared."""
        with self._lock:
            if time.monotonic() < self._db_skip_until:
                return False
        # An unprepared database (down at start-up) is prepared by the replay thread, not
        # on the hook path, where the schema check would add its queries to every call.
        return self.storage.is_prepared

    def _database_failed(self, exc: Exception) -> None:
        """Stop trying the database on the hook path for ``retry_after_s``; log once."""
        with self._lock:
            first = time.monotonic() >= self._db_skip_until
            self._db_skip_until = time.monotonic() + self.retry_after_s
        if first:
            log.error(
                "audit database did not take a record (%s: %s); records go to %s, "
                "the database is tried again in %.0f s",
                type(exc).__name__,
                exc,
                self.spool or "the log (no spool)",
                self.retry_after_s,
            )

    def _keep(self, record: CallRecord) -> None:
        """Spool the record, or log it whole when there is no room."""
        if self.spool is not None:
            try:
                if self.spool.append(record):
                    self._count("spooled")
                    return
                why = f"the spool {self.spool.directory} is full ({self.spool.max_bytes} bytes)"
            except OSError as exc:
                why = f"the spool {self.spool.directory} could not be written: {exc}"
        else:
            why = "there is no spool"
        self._count("dropped")
        log.error(
            "AUDIT RECORD NOT STORED: the database did not take it and %s "
            "(hookInstance=%s, %d not stored so far); record: %s",
            why,
            record.hook_instance,
            self.dropped,
            record_json(record),
        )

    def _count(self, counter: str, n: int = 1) -> None:
        """Add to one of the counters and to ``cds_audit_records_total``."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + n)
        metrics.AUDIT_RECORDS.labels(counter).inc(n)

    # -- replay --------------------------------------------------------------------------

    def replay(self, deadline: float | None = None) -> bool:
        """Prepare the database and write the spool to it; True when nothing waits any more."""
        if self._pid != os.getpid():
            self._restart_after_fork()
        with self._replaying:
            try:
                self.storage.prepare()
                if self.spool is not None and self.spool.segments():
                    replayed = self.spool.replay(self._write_replayed, deadline)
                    if replayed:
                        self._count("replayed", replayed)
                        log.info("audit spool: %d record(s) written to the database", replayed)
            except StorageUnavailableError as exc:
                log.debug("audit spool not replayed yet: %s", exc)
                return False
            with self._lock:
                self._db_skip_until = 0.0  # it answered: the hook path may use it again
            return self.spool is None or not self.spool.segments()

    def _write_replayed(self, batch: Sequence[CallRecord]) -> None:
        """Write a replayed batch; a record refused for a reason other than an outage is set
        aside (one at a time finds it), an outage stops the replay."""
        try:
            self.storage.record_calls(batch)
        except StorageUnavailableError:
            raise
        except Exception as exc:  # a bad record must not hold back the others
            if len(batch) > 1:
                for record in batch:
                    self._write_replayed([record])
                return
            assert self.spool is not None
            self.spool.reject(record_json(batch[0]), f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        """Replay the spool now and then until stopped."""
        while not self._stop.wait(self.replay_every_s):
            try:
                spooled = self.spool is not None and bool(self.spool.segments())
                if spooled or not self.storage.is_prepared:
                    self.replay()
            except Exception:  # the thread must outlive any surprise
                log.exception("audit spool replay failed")

    def flush(self, timeout: float) -> bool:
        """Replay what is spooled, for at most ``timeout`` s; True when nothing waits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.replay(deadline):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread, replay for at most ``timeout`` (``drain_s``), say what stays.

        Records that stay are safe in the spool (the next start with this instance folder
        replays them), but an operator must hear of them: one ERROR line with the counts.
        Later ``submit`` calls still store (in-flight requests at shutdown).
        """
        if self._closed or self._pid != os.getpid():
            self._closed = True
            return
        self._closed = True
        self._stop.set()
        self._thread.join(1.0)
        drain_s = self.drain_s if timeout is None else timeout
        done = self.flush(drain_s) if self.spool is not None and self.spool.segments() else True
        if self.spool is not None:
            self.spool.rotate()  # close our segment file (a later submit opens a new one)
        if not done and self.spool is not None:
            log.error(
                "AUDIT RECORDS NOT WRITTEN at shutdown: %d record(s) stay in the spool %s "
                "after %.1f s (written this run: %d direct, %d replayed; %d never stored, "
                "see earlier ERROR lines); an instance using this folder replays them when "
                "the database answers",
                self.spool.pending(),
                self.spool.directory,
                drain_s,
                self.written,
                self.replayed,
                self.dropped,
            )
        elif self.dropped:
            log.error(
                "AUDIT RECORDS NOT STORED this run: %d (each logged whole at ERROR)", self.dropped
            )


def _safe_json(record: object) -> str:
    """The record as JSON for a last-resort log line, or its repr when even that fails."""
    try:
        return record_json(record)  # type: ignore[arg-type]
    except Exception:  # logging must not raise
        return repr(record)
