"""The audit spool: records the database did not take, on local disk until it takes them.

A directory under the instance folder holds append-only JSON-lines files, one line per
``CallRecord``. Each process appends to its own segment (``audit-<db>-<pid>-<id>.jsonl``;
``<db>`` is a digest of the database's URL, so a folder shared by instances on different
databases never replays a record into the wrong one), holding
an exclusive ``flock`` on it while it may still append; every line is written and fsync'd
before the hook answer leaves, so neither SIGKILL nor a power cut loses a record that was
answered. Any process of any instance that shares the folder replays any segment it can lock
(a dead process's lock is gone with it), writes it in batches through the caller's function
(idempotent: records carry their ``call_id``) and deletes it once all of it is stored.

The directory is bounded (``max_bytes``): above the bound ``append`` returns False and the
caller logs the record whole at ERROR, so nothing is dropped silently. A line that cannot be
read back (a torn last line after a crash mid-write, never an answered record) or a record the
database refuses for a reason other than an outage goes to ``rejected-<pid>.jsonl`` in the
same directory, logged at ERROR, and is not replayed again.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from .values import CallRecord, IssuedCard

log = logging.getLogger(__name__)

REPLAY_BATCH = 100


def record_json(record: CallRecord) -> str:
    """Serialise an audit record as one JSON line (the spool's and the log's format)."""
    return json.dumps(dataclasses.asdict(record), default=str, separators=(",", ":"))


def record_from_json(line: str) -> CallRecord:
    """Read back a record written by ``record_json``; ValueError/KeyError/TypeError if bad."""
    data: dict[str, Any] = json.loads(line)
    cards = tuple(
        IssuedCard(**{**card, "suggestion_uuids": tuple(card["suggestion_uuids"])})
        for card in data.pop("cards")
    )
    return CallRecord(
        **{
            **data,
            "called_at": datetime.fromisoformat(data["called_at"]),
            "rules_evaluated": tuple(data["rules_evaluated"]),
            "unavailable_data": tuple(data["unavailable_data"]),
            "cards": cards,
        }
    )


class AuditSpool:
    """Append-only, fsync'd, bounded JSON-lines files of audit records; thread- and fork-safe."""

    def __init__(
        self, directory: str | os.PathLike[str], max_bytes: int, database_key: str = "any"
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.database_key = hashlib.sha256(database_key.encode()).hexdigest()[:12]
        self._lock = threading.Lock()
        self._segment: IO[bytes] | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"AuditSpool({str(self.directory)!r})"

    # -- appending -----------------------------------------------------------------------

    def append(self, record: CallRecord) -> bool:
        """Write ``record`` durably; False (nothing written) when the bound would be passed."""
        line = (record_json(record) + "\n").encode("utf-8")
        with self._lock:
            if self.size() + len(line) > self.max_bytes:
                return False
            segment = self._open_segment()
            segment.write(line)
            segment.flush()
            os.fsync(segment.fileno())
        return True

    def _open_segment(self) -> IO[bytes]:
        """Return this process's segment, creating it (and the directory) on first use."""
        if self._pid != os.getpid():  # forked: the parent's file and lock are not ours
            self._pid, self._segment = os.getpid(), None
        if self._segment is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"audit-{self.database_key}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            path = self.directory / name
            segment = path.open("ab")
            fcntl.flock(segment.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            _fsync_directory(self.directory)  # the new name survives a crash too
            self._segment = segment
        return self._segment

    def rotate(self) -> None:
        """Close this process's segment, so a replay (ours or another's) may take it."""
        with self._lock:
            if self._segment is not None and self._pid == os.getpid():
                self._segment.close()
            self._segment = None

    # -- reading -------------------------------------------------------------------------

    def segments(self) -> list[Path]:
        """Return this database's segment files, oldest first."""
        try:
            return sorted(self.directory.glob(f"audit-{self.database_key}-*.jsonl"), key=_mtime)
        except OSError:
            return []

    def size(self) -> int:
        """Return the bytes the directory's segments hold (every process's, every database's)."""
        try:
            return sum(_size(path) for path in self.directory.glob("audit-*.jsonl"))
        except OSError:
            return 0

    def pending(self) -> int:
        """Return how many records wait in the segments (read at shutdown and readiness)."""
        total = 0
        for path in self.segments():
            try:
                with path.open("rb") as file:
                    total += sum(1 for line in file if line.strip())
            except OSError:
                continue
        return total

    def holds_any(self, card_uuids: Iterable[str]) -> bool:
        """Tell whether a spooled record issued any of these cards (feedback asks)."""
        needles = [f'"uuid":{json.dumps(card_uuid)}'.encode() for card_uuid in card_uuids]
        for path in self.segments():
            try:
                content = path.read_bytes()
            except OSError:
                continue
            if any(needle in content for needle in needles):
                return True
        return False

    # -- replaying -----------------------------------------------------------------------

    def replay(
        self, write: Callable[[Sequence[CallRecord]], None], deadline: float | None = None
    ) -> int:
        """Write every segment this process can lock through ``write``; return records written.

        ``write`` raising (StorageUnavailableError: the database is still away) stops the
        replay and leaves the segment; what was written before is skipped next time.
        ``deadline`` (``time.monotonic()``) stops between batches.
        """
        self.rotate()
        written = 0
        for path in self.segments():
            if deadline is not None and time.monotonic() > deadline:
                break
            written += self._replay_segment(path, write, deadline)
        return written

    def _replay_segment(
        self,
        path: Path,
        write: Callable[[Sequence[CallRecord]], None],
        deadline: float | None,
    ) -> int:
        """Replay one segment under its lock; delete it when all of it is stored."""
        try:
            file = path.open("rb")
        except FileNotFoundError:
            return 0  # another process replayed it meanwhile
        with file:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # a live process still appends to it, or replays it now
            if os.fstat(file.fileno()).st_nlink == 0:
                return 0  # replayed and deleted after we opened it
            records = list(self._read(path, file))
            written = 0
            for start in range(0, len(records), REPLAY_BATCH):
                if deadline is not None and time.monotonic() > deadline:
                    return written
                batch = records[start : start + REPLAY_BATCH]
                write(batch)
                written += len(batch)
            path.unlink()
            _fsync_directory(self.directory)
            return written

    def _read(self, path: Path, file: IO[bytes]) -> Iterator[CallRecord]:
        """Yield the records of a segment; lines that do not read back are rejected."""
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                yield record_from_json(raw.decode("utf-8"))
            except (ValueError, KeyError, TypeError) as exc:
                self.reject(raw.decode("utf-8", "replace").strip(), f"{path.name}:{number}: {exc}")

    def reject(self, line: str, why: str) -> None:
        """Keep a record that cannot be stored aside (not replayed again), loudly."""
        log.error("audit record set aside in the spool's rejected file (%s): %s", why, line)
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / f"rejected-{os.getpid()}.jsonl").open("ab") as rejected:
            rejected.write((line + "\n").encode("utf-8"))
            rejected.flush()
            os.fsync(rejected.fileno())


def _fsync_directory(directory: Path) -> None:
    """Make a created or deleted name durable (POSIX: fsync the directory)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
