"""Storage: the one place that talks to the audit and feedback database.

Works on SQLite (the default file in the instance folder) and PostgreSQL (for several
instances). Concurrency rules:

- SQLite runs in WAL mode with a 30 s busy timeout, and every write transaction starts with
  ``BEGIN IMMEDIATE`` so two writers queue for the lock instead of failing mid-transaction.
- Feedback is de-duplicated by a content hash under a unique constraint with
  ``ON CONFLICT DO NOTHING`` on both databases, so parallel duplicate posts store one row.
- ``migrate()`` holds a lock while it upgrades (a transaction-level advisory lock on
  PostgreSQL, the write lock on SQLite), so instances starting together migrate once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    case,
    create_engine,
    event,
    func,
    inspect,
    literal,
    select,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import ConnectionPoolEntry

from cds_service.errors import StorageUnavailableError, UnknownCardError

from .records import CallRecord, FeedbackEntry, IssuedCard
from .schema import TABLES, feedback, hook_call, issued_card, rule_evaluation

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
Bucket = Literal["day", "week"]
BUCKETS: tuple[Bucket, ...] = ("day", "week")
TOP_REASONS = 5
# Any constant works; it only has to be the same in every instance of this service.
_PG_MIGRATION_LOCK = 0x6364_7356_6F63  # "cdsVoc"
_SQLITE_BUSY_TIMEOUT_S = 30
_PG_CONNECT_TIMEOUT_S = 5
# Errors that mean "the database cannot serve us now", as opposed to a bug in a query.
_UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


def normalise_url(url: str | URL) -> URL:
    """Parse a database URL; a bare ``postgresql://`` means psycopg 3, the driver we ship."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL (readers never block the writer); it stays so once set.

    Switching needs a moment alone with the file and SQLite does not wait for it with the
    busy timeout, so instances opening a new file together retry here.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_S
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


def _sqlite_engine(url: URL) -> Engine:
    """Create a SQLite engine that is safe for several threads and processes."""
    engine = create_engine(
        url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
    )
    in_memory = url.database in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take over BEGIN from the sqlite3 module (SQLAlchemy's documented recipe) so that
        # writers can use BEGIN IMMEDIATE; see the module docstring.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_S * 1000}")
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


def _create_engine(url: URL) -> Engine:
    """Create the engine with the settings each supported database needs."""
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        # Fail fast during an outage: the audit writer must not hang on a dead host.
        connect_args["connect_timeout"] = _PG_CONNECT_TIMEOUT_S
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _as_utc(value: datetime) -> datetime:
    """Return ``value`` in UTC, refusing naive datetimes."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} is ambiguous; pass UTC")
    return value.astimezone(UTC)


def feedback_dedup_key(entry: FeedbackEntry) -> str:
    """Hash what makes two feedback entries "the same" (display text and order aside)."""
    content = [
        entry.card_uuid,
        entry.outcome,
        sorted(set(entry.accepted_suggestion_ids)),
        entry.override_reason_system,
        entry.override_reason_code,
        entry.user_comment,
        _as_utc(entry.outcome_timestamp).isoformat(),
    ]
    return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()


def _rate(part: int, whole: int) -> float | None:
    """Return part/whole, or None when there is nothing to divide (not 0: unknown)."""
    return part / whole if whole else None


def _iso(value: datetime | None) -> str | None:
    """Format an aware datetime as RFC 3339 with a Z, as the JSON API does everywhere."""
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _forget_parent_connections(storage_ref: weakref.ReferenceType[Storage]) -> None:
    """In a forked child, drop the pool inherited from the parent without closing it."""
    storage = storage_ref()
    if storage is not None:
        storage.engine.dispose(close=False)


class Storage:
    """Read and write audit records and feedback; one instance per app, thread-safe."""

    def __init__(self, url: str | URL) -> None:
        self.url = normalise_url(url)
        self.engine = _create_engine(self.url)
        self._prepared = False
        # A forked worker (gunicorn --preload) must not share the parent's pooled sockets.
        os.register_at_fork(after_in_child=partial(_forget_parent_connections, weakref.ref(self)))

    def __repr__(self) -> str:
        return f"Storage({self.url.render_as_string(hide_password=True)!r})"

    # -- connections -------------------------------------------------------------------

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        """Yield a connection in a transaction; outages become StorageUnavailableError."""
        try:
            with self.engine.connect() as conn:
                if write:
                    conn = conn.execution_options(cds_write=True)
                with conn.begin():
                    yield conn
        except _UNAVAILABLE as exc:
            raise StorageUnavailableError(
                f"database {self.url.render_as_string(hide_password=True)} unavailable: "
                f"{type(exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc).__name__}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc

    def dispose(self) -> None:
        """Close every pooled connection (at shutdown, in tests, and after a fork)."""
        self.engine.dispose()

    # -- migrations ----------------------------------------------------------------------

    def _alembic_config(self, conn: Connection | None = None) -> Config:
        """Build the Alembic config for the migrations shipped inside this package."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.set_main_option(
            "sqlalchemy.url", self.url.render_as_string(hide_password=False).replace("%", "%%")
        )
        config.attributes["connection"] = conn
        return config

    def head_revision(self) -> str | None:
        """Return the newest migration shipped with this code."""
        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def current_revision(self) -> str | None:
        """Return the migration the database is at (None when never migrated)."""
        with self._transaction(write=False) as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def is_empty(self) -> bool:
        """Tell whether the database has neither our tables nor a migration record."""
        with self._transaction(write=False) as conn:
            names = set(inspect(conn).get_table_names())
        return not names & ({table.name for table in TABLES} | {"alembic_version"})

    def migrate(self) -> None:
        """Upgrade the database to the newest migration (``flask db upgrade`` runs this)."""
        with self._transaction(write=True) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            command.upgrade(self._alembic_config(conn), "head")
        self._prepared = True
        log.info("database %r migrated to %s", self, self.head_revision())

    def prepare(self) -> None:
        """Migrate an empty database; warn when a used one is behind this code's schema.

        A database that already holds data is only upgraded by the documented command, so
        a deploy never changes a shared schema behind other running instances' backs.
        """
        if self._prepared:
            return
        if self.is_empty():
            log.info("database %r is empty: creating the schema", self)
            self.migrate()
            return
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            log.warning(
                "database %r is at migration %s but this code expects %s: run "
                "'flask --app cds_service db upgrade'",
                self,
                current,
                head,
            )
        self._prepared = True

    # -- audit trail ---------------------------------------------------------------------

    def record_call(self, record: CallRecord) -> None:
        """Store one hook call's audit record with its evaluated rules and issued cards."""
        self.record_calls([record])

    def record_calls(self, records: Sequence[CallRecord]) -> None:
        """Store several audit records in one transaction (the audit writer batches)."""
        if not records:
            return
        calls: list[dict[str, Any]] = []
        evaluations: list[dict[str, Any]] = []
        cards: list[dict[str, Any]] = []
        for record in records:
            call_id = str(uuid.uuid4())
            called_at = _as_utc(record.called_at)
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
                }
                for card in record.cards
            )
        with self._transaction(write=True) as conn:
            conn.execute(hook_call.insert(), calls)
            if evaluations:
                conn.execute(rule_evaluation.insert(), evaluations)
            if cards:
                conn.execute(issued_card.insert(), cards)

    def calls_for_hook_instance(self, hook_instance: str) -> list[CallRecord]:
        """Rebuild the audit records of one hookInstance (for support questions and tests)."""
        with self._transaction(write=False) as conn:
            rows = (
                conn.execute(
                    select(hook_call)
                    .where(hook_call.c.hook_instance == hook_instance)
                    .order_by(hook_call.c.called_at, hook_call.c.id)
                )
                .mappings()
                .all()
            )
            ids = [row["id"] for row in rows]
            rules: dict[str, list[str]] = defaultdict(list)
            for call_id, rule_id in conn.execute(
                select(rule_evaluation.c.call_id, rule_evaluation.c.rule_id)
                .where(rule_evaluation.c.call_id.in_(ids))
                .order_by(rule_evaluation.c.rule_id)
            ):
                rules[call_id].append(rule_id)
            cards: dict[str, list[IssuedCard]] = defaultdict(list)
            for card in conn.execute(
                select(issued_card)
                .where(issued_card.c.call_id.in_(ids))
                .order_by(issued_card.c.uuid)
            ).mappings():
                cards[card["call_id"]].append(
                    IssuedCard(
                        card["uuid"],
                        card["rule_id"],
                        card["indicator"],
                        tuple(card["suggestion_uuids"]),
                    )
                )
        return [
            CallRecord(
                hook_instance=row["hook_instance"],
                service_id=row["service_id"],
                hook=row["hook"],
                called_at=row["called_at"],
                duration_ms=row["duration_ms"],
                rules_evaluated=tuple(rules[row["id"]]),
                cards=tuple(cards[row["id"]]),
                knowledge_version=row["knowledge_version"],
                unavailable_data=tuple(row["unavailable_data"]),
                patient_hash=row["patient_hash"],
            )
            for row in rows
        ]

    # -- feedback ------------------------------------------------------------------------

    def store_feedback(self, service_id: str, entries: Sequence[FeedbackEntry]) -> int:
        """Store feedback entries all-or-nothing; return how many were new (not duplicates).

        Raises UnknownCardError, storing nothing, when any card uuid was not issued by
        ``service_id``.
        """
        if not entries:
            return 0
        card_uuids = list(dict.fromkeys(entry.card_uuid for entry in entries))
        received_at = datetime.now(UTC)
        insert = (
            (
                postgresql.insert(feedback)
                if self.engine.dialect.name == "postgresql"
                else sqlite.insert(feedback)
            )
            .on_conflict_do_nothing(index_elements=[feedback.c.dedup_key])
            .returning(feedback.c.id)
        )
        with self._transaction(write=True) as conn:
            known = set(
                conn.scalars(
                    select(issued_card.c.uuid).where(
                        issued_card.c.uuid.in_(card_uuids), issued_card.c.service_id == service_id
                    )
                )
            )
            unknown = [card_uuid for card_uuid in card_uuids if card_uuid not in known]
            if unknown:
                raise UnknownCardError(service_id, unknown)
            stored = 0
            for entry in entries:
                result = conn.execute(
                    insert.values(
                        dedup_key=feedback_dedup_key(entry),
                        card_uuid=entry.card_uuid,
                        service_id=service_id,
                        outcome=entry.outcome,
                        accepted_suggestion_ids=list(entry.accepted_suggestion_ids),
                        override_reason_system=entry.override_reason_system,
                        override_reason_code=entry.override_reason_code,
                        override_reason_display=entry.override_reason_display,
                        user_comment=entry.user_comment,
                        outcome_timestamp=_as_utc(entry.outcome_timestamp),
                        received_at=received_at,
                    )
                )
                # Count returned rows: rowcount is not reliable for ON CONFLICT on every driver.
                stored += len(result.all())
        return stored

    def feedback_count(self) -> int:
        """Return how many distinct feedback entries are stored."""
        with self._transaction(write=False) as conn:
            return int(conn.scalar(select(func.count()).select_from(feedback)) or 0)

    # -- analytics -----------------------------------------------------------------------

    def _latest_feedback(self) -> Any:
        """Subquery: each card's latest feedback (a later report supersedes an earlier)."""
        ranked = select(
            feedback.c.card_uuid,
            feedback.c.outcome,
            feedback.c.override_reason_system,
            feedback.c.override_reason_code,
            feedback.c.override_reason_display,
            func.row_number()
            .over(
                partition_by=feedback.c.card_uuid,
                order_by=(feedback.c.outcome_timestamp.desc(), feedback.c.id.desc()),
            )
            .label("rank"),
        ).subquery("ranked")
        return select(ranked).where(ranked.c.rank == 1).subquery("latest")

    @staticmethod
    def _since(column: Any, since: datetime | None) -> ColumnElement[bool]:
        """Filter ``column >= since`` (no filter when since is None)."""
        return literal(True) if since is None else column >= _as_utc(since)

    def rule_analytics(self, since: datetime | None = None) -> dict[str, Any]:
        """Per rule, since ``since`` (by the time the card was issued): how often it was
        evaluated and fired, and what clinicians did with its cards.

        A card's outcome is its latest feedback; a card with none counts as no-feedback
        (CDS Hooks sends nothing for ignored cards). ``override_rate`` is overridden /
        (accepted + overridden); ``feedback_rate`` is cards with feedback / cards fired.
        """
        latest = self._latest_feedback()
        window = self._since(issued_card.c.issued_at, since)
        cards_with_outcome = issued_card.outerjoin(latest, latest.c.card_uuid == issued_card.c.uuid)
        with self._transaction(write=False) as conn:
            evaluated: dict[str, int] = {
                rule_id: int(count)
                for rule_id, count in conn.execute(
                    select(rule_evaluation.c.rule_id, func.count())
                    .where(self._since(rule_evaluation.c.evaluated_at, since))
                    .group_by(rule_evaluation.c.rule_id)
                )
            }
            calls = int(
                conn.scalar(
                    select(func.count())
                    .select_from(hook_call)
                    .where(self._since(hook_call.c.called_at, since))
                )
                or 0
            )
            fired_rows = (
                conn.execute(
                    select(
                        issued_card.c.rule_id,
                        func.count().label("fired"),
                        func.count(issued_card.c.call_id.distinct()).label("fired_calls"),
                        func.sum(case((latest.c.outcome == "accepted", 1), else_=0)).label(
                            "accepted"
                        ),
                        func.sum(case((latest.c.outcome == "overridden", 1), else_=0)).label(
                            "overridden"
                        ),
                    )
                    .select_from(cards_with_outcome)
                    .where(window)
                    .group_by(issued_card.c.rule_id)
                )
                .mappings()
                .all()
            )
            indicators: dict[str, dict[str, int]] = defaultdict(dict)
            for rule_id, indicator, count in conn.execute(
                select(issued_card.c.rule_id, issued_card.c.indicator, func.count())
                .where(window)
                .group_by(issued_card.c.rule_id, issued_card.c.indicator)
            ):
                indicators[rule_id][indicator] = int(count)
            reasons: dict[str, list[dict[str, Any]]] = defaultdict(list)
            uncoded: dict[str, int] = defaultdict(int)
            for row in conn.execute(
                select(
                    issued_card.c.rule_id,
                    latest.c.override_reason_system.label("system"),
                    latest.c.override_reason_code.label("code"),
                    func.max(latest.c.override_reason_display).label("display"),
                    func.count().label("count"),
                )
                .select_from(issued_card.join(latest, latest.c.card_uuid == issued_card.c.uuid))
                .where(window, latest.c.outcome == "overridden")
                .group_by(
                    issued_card.c.rule_id,
                    latest.c.override_reason_system,
                    latest.c.override_reason_code,
                )
                .order_by(func.count().desc(), latest.c.override_reason_code)
            ).mappings():
                if row["code"] is None:
                    uncoded[row["rule_id"]] += int(row["count"])
                elif len(reasons[row["rule_id"]]) < TOP_REASONS:
                    reasons[row["rule_id"]].append(
                        {
                            "system": row["system"],
                            "code": row["code"],
                            "display": row["display"],
                            "count": int(row["count"]),
                        }
                    )

        fired_by_rule = {row["rule_id"]: row for row in fired_rows}
        rules: list[dict[str, Any]] = []
        for rule_id in sorted(set(evaluated) | set(fired_by_rule)):
            found = fired_by_rule.get(rule_id)
            fired = int(found["fired"]) if found else 0
            fired_calls = int(found["fired_calls"]) if found else 0
            accepted = int(found["accepted"] or 0) if found else 0
            overridden = int(found["overridden"] or 0) if found else 0
            rules.append(
                {
                    "rule_id": rule_id,
                    "evaluated": evaluated.get(rule_id, 0),
                    "fired": fired,
                    "fire_rate": _rate(fired_calls, evaluated.get(rule_id, 0)),
                    "indicators": indicators.get(rule_id, {}),
                    "accepted": accepted,
                    "overridden": overridden,
                    "no_feedback": fired - accepted - overridden,
                    "override_rate": _rate(overridden, accepted + overridden),
                    "feedback_rate": _rate(accepted + overridden, fired),
                    "top_override_reasons": reasons.get(rule_id, []),
                    "overridden_without_coded_reason": uncoded.get(rule_id, 0),
                }
            )
        rules.sort(key=lambda rule: (-rule["fired"], rule["rule_id"]))
        totals = {
            key: sum(rule[key] for rule in rules)
            for key in ("fired", "accepted", "overridden", "no_feedback")
        }
        return {
            "since": _iso(since),
            "generated_at": _iso(datetime.now(UTC)),
            "calls": calls,
            "totals": {
                **totals,
                "override_rate": _rate(
                    totals["overridden"], totals["accepted"] + totals["overridden"]
                ),
            },
            "rules": rules,
        }

    def _bucket_start(self, bucket: Bucket) -> ColumnElement[str]:
        """SQL for the first day (YYYY-MM-DD, UTC) of the day or ISO week a card fired in."""
        column = issued_card.c.issued_at
        if self.engine.dialect.name == "postgresql":
            return func.to_char(func.date_trunc(bucket, func.timezone("UTC", column)), "YYYY-MM-DD")
        if bucket == "week":
            # SQLite: move to the coming Sunday (or stay), then back 6 days: that week's Monday.
            return func.strftime("%Y-%m-%d", column, "weekday 0", "-6 days")
        return func.strftime("%Y-%m-%d", column)

    def timeseries(self, since: datetime | None = None, bucket: Bucket = "day") -> dict[str, Any]:
        """Per rule and per day (or ISO week) the cards fired: fired, accepted, overridden.

        Only buckets with cards are listed; ``first_issued_at`` lets a chart start its axis.
        """
        if bucket not in BUCKETS:
            raise ValueError(f"bucket must be one of {BUCKETS}, got {bucket!r}")
        latest = self._latest_feedback()
        start = self._bucket_start(bucket).label("start")
        with self._transaction(write=False) as conn:
            rows = (
                conn.execute(
                    select(
                        issued_card.c.rule_id,
                        start,
                        func.count().label("fired"),
                        func.sum(case((latest.c.outcome == "accepted", 1), else_=0)).label(
                            "accepted"
                        ),
                        func.sum(case((latest.c.outcome == "overridden", 1), else_=0)).label(
                            "overridden"
                        ),
                    )
                    .select_from(
                        issued_card.outerjoin(latest, latest.c.card_uuid == issued_card.c.uuid)
                    )
                    .where(self._since(issued_card.c.issued_at, since))
                    .group_by(issued_card.c.rule_id, start)
                    .order_by(issued_card.c.rule_id, start)
                )
                .mappings()
                .all()
            )
            first = conn.scalar(
                select(func.min(issued_card.c.issued_at)).where(
                    self._since(issued_card.c.issued_at, since)
                )
            )
        series: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            accepted, overridden = int(row["accepted"] or 0), int(row["overridden"] or 0)
            series[row["rule_id"]].append(
                {
                    "start": date.fromisoformat(row["start"]).isoformat(),
                    "fired": int(row["fired"]),
                    "accepted": accepted,
                    "overridden": overridden,
                    "override_rate": _rate(overridden, accepted + overridden),
                }
            )
        return {
            "since": _iso(since),
            "bucket": bucket,
            "first_issued_at": _iso(first if isinstance(first, datetime) else None),
            "series": [
                {"rule_id": rule_id, "points": points} for rule_id, points in sorted(series.items())
            ],
        }

    def ping(self) -> bool:
        """Tell whether the database answers (for a health check)."""
        try:
            with self._transaction(write=False) as conn:
                conn.execute(text("SELECT 1"))
        except StorageUnavailableError:
            return False
        return True


def start_of_day(value: date) -> datetime:
    """Return midnight UTC at the start of ``value``."""
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def days_ago(days: int, now: datetime | None = None) -> datetime:
    """Return midnight UTC starting a window of ``days`` whole days that ends today."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return start_of_day(today - timedelta(days=days - 1))
