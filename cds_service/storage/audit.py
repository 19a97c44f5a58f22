"""The audit trail of hook calls: the writes, and the writer that does them off the request path.

``write_calls`` stores audit records (calls, the rules evaluated, the cards issued) in one
transaction. The hook response must neither wait for nor fail on the database, so the app
hands records to ``AuditWriter.submit``, which only puts the record on a bounded in-memory
queue; a daemon thread writes batches. When the database is down the records of that batch
are logged at ERROR, each with its hookInstance and the whole record as JSON (it holds no
names or tokens, only a keyed patient hash), so the trail can be rebuilt from the logs. When
the queue is full the record is dropped, counted and logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from cds_service.errors import StorageUnavailableError

from .engine import Database, as_utc
from .schema import hook_call, issued_card, rule_evaluation
from .values import CallRecord

if TYPE_CHECKING:
    from .store import Storage

log = logging.getLogger(__name__)

_STOP: Final = object()
BATCH_SIZE = 100


def write_calls(database: Database, records: Sequence[CallRecord]) -> None:
    """Store audit records with their evaluated rules and issued cards in one transaction."""
    if not records:
        return
    calls: list[dict[str, Any]] = []
    evaluations: list[dict[str, Any]] = []
    cards: list[dict[str, Any]] = []
    for record in records:
        call_id = str(uuid.uuid4())
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
            }
        )
        evaluations.extend(
            {"call_id": call_id, "rule_id": rule_id, "evaluated_at": called_at}
            for rule_id in dict.fromkeys(record.rules_evaluated)
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
    with database.transaction(write=True) as conn:
        conn.execute(hook_call.insert(), calls)
        if evaluations:
            conn.execute(rule_evaluation.insert(), evaluations)
        if cards:
            conn.execute(issued_card.insert(), cards)


def record_json(record: CallRecord) -> str:
    """Serialise an audit record for a log line (the fallback audit trail)."""
    return json.dumps(dataclasses.asdict(record), default=str, separators=(",", ":"))


class AuditWriter:
    """Queue audit records and write them to ``storage`` on a background thread."""

    def __init__(self, storage: Storage, max_queue: int = 10000) -> None:
        self.storage = storage
        self.max_queue = max_queue
        self.dropped = 0
        self.failed = 0
        self.written = 0
        self._closed = False
        self._start()

    def _start(self) -> None:
        """Create the queue, the counters' lock and the thread (again after a fork)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=self.max_queue)
        self._thread = threading.Thread(target=self._run, name="cds-audit-writer", daemon=True)
        self._thread.start()

    def _restart_after_fork(self) -> None:
        """Threads do not survive fork (gunicorn --preload): start ours again in the child.

        Storage itself drops the parent's pooled connections at fork (os.register_at_fork).
        """
        self._start()

    def submit(self, record: CallRecord) -> None:
        """Queue ``record`` for writing; never blocks, never raises."""
        try:
            if self._pid != os.getpid():
                self._restart_after_fork()
            if self._closed:
                self._count_drop(record, "the audit writer is closed")
                return
            with self._lock:
                self._pending += 1
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                with self._lock:
                    self._pending -= 1
                self._count_drop(record, f"the audit queue is full ({self.max_queue} waiting)")
        except Exception:  # the hook response must go out whatever happens here
            log.exception(
                "audit record for hookInstance=%s could not be queued",
                getattr(record, "hook_instance", "?"),
            )

    def _count_drop(self, record: CallRecord, why: str) -> None:
        """Count and log a record that will never be written."""
        with self._lock:
            self.dropped += 1
            dropped = self.dropped
        log.error(
            "audit record dropped because %s (hookInstance=%s, %d dropped so far): %s",
            why,
            record.hook_instance,
            dropped,
            record_json(record),
        )

    def flush(self, timeout: float) -> bool:
        """Wait until every queued record was written or given up; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread (at shutdown; idempotent)."""
        if self._closed or self._pid != os.getpid():
            self._closed = True
            return
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.error("audit writer did not stop: its queue stayed full for %.1f s", timeout)
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        """Write batches until told to stop."""
        stop = False
        while not stop:
            batch: list[CallRecord] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stop = True
                    break
                assert isinstance(item, CallRecord)
                batch.append(item)
                if len(batch) >= BATCH_SIZE:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
                with self._idle:
                    self._pending -= len(batch)
                    if self._pending == 0:
                        self._idle.notify_all()

    def _write(self, batch: Sequence[CallRecord]) -> None:
        """Write a batch; on a bad record fall back to one at a time; log what fails."""
        try:
            self.storage.prepare()
            self.storage.record_calls(batch)
        except StorageUnavailableError as exc:
            self._log_failed(batch, exc)
            return
        except Exception as exc:  # a bad record must not stop the thread or its batch
            if len(batch) == 1:
                self._log_failed(batch, exc)
                return
            for record in batch:
                self._write([record])
            return
        with self._lock:
            self.written += len(batch)

    def _log_failed(self, batch: Sequence[CallRecord], exc: Exception) -> None:
        """Log each record of a failed write, so the trail survives in the logs."""
        with self._lock:
            self.failed += len(batch)
        for record in batch:
            log.error(
                "audit record not stored (hookInstance=%s): %s: %s; record: %s",
                record.hook_instance,
                type(exc).__name__,
                exc,
                record_json(record),
            )
