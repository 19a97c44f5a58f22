"""Storage: migrations, audit trail, feedback and analytics on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import URL

from cds_service.errors import StorageUnavailableError, UnknownCardError
from cds_service.storage import (
    HASH_KEY_EXTENSION,
    AuditWriter,
    CallRecord,
    FeedbackEntry,
    IssuedCard,
    Storage,
    get_audit_writer,
    get_storage,
    hash_patient_id,
    shutdown_storage,
)
from cds_service.storage.schema import TABLES, feedback, metadata, rule_ids_text
from cds_service.storage.spool import AuditSpool, record_json
from tests.support.ci import find_postgres, skip_or_fail
from tests.support.factories import (
    NRCS,
    SERVICE_ID,
    accepted,
    call,
    calls_for_hook_instance,
    card,
    feedback_count,
    make_app,
    overridden,
    seed,
    sqlite_url,
)

pytest_plugins = ["tests.support.databases"]

DEAD_URLS = {
    "postgresql-refused": "postgresql+psycopg://postgres@127.0.0.1:1/test",
    "sqlite-no-directory": "sqlite:////nonexistent-cds-dir/cds.sqlite3",
}
NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)


def count_rows(storage: Storage, table: str) -> int:
    """Count rows of one of our tables."""
    with storage.engine.connect() as conn:
        return int(conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


def store_call_with_cards(
    storage: Storage, *rule_ids: str, at: datetime = NOW, service_id: str = SERVICE_ID
) -> list[str]:
    """Record one call issuing one card per rule id; return the card uuids."""
    cards = tuple(card(rule_id) for rule_id in rule_ids)
    record = call(f"hook-{uuid.uuid4()}", at, cards, rules=rule_ids, service_id=service_id)
    storage.record_calls([record])
    return [item.uuid for item in cards]


# -- migrations --------------------------------------------------------------------------


def test_migrate_from_empty_reaches_head(empty_storage: Storage) -> None:
    """An empty database is recognised as such and migrates to the newest revision."""
    assert empty_storage.is_empty()
    assert empty_storage.current_revision() is None
    empty_storage.migrate()
    assert not empty_storage.is_empty()
    assert empty_storage.current_revision() == empty_storage.head_revision() == "0003"
    with empty_storage.engine.connect() as conn:
        assert {table.name for table in TABLES} <= set(inspect(conn).get_table_names())


def test_migrations_match_schema(storage: Storage) -> None:
    """The migrated database has exactly the tables, columns and indexes schema.py declares."""
    with storage.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = [
            item
            for item in compare_metadata(context, metadata)
            if not (
                isinstance(item, tuple)
                and item[0] == "remove_table"
                and item[1].name == "alembic_version"
            )
        ]
    assert diff == []


def test_migrate_twice_changes_nothing(storage: Storage) -> None:
    """Upgrading an up-to-date database is a no-op (deploys may run it every time)."""
    store_call_with_cards(storage, "r1")
    storage.migrate()
    assert storage.current_revision() == storage.head_revision()
    assert count_rows(storage, "cds_issued_card") == 1


def test_instances_starting_together_migrate_once(database_url: str) -> None:
    """Several instances preparing one empty database concurrently all succeed."""
    storages = [Storage(database_url) for _ in range(4)]
    errors: list[BaseException] = []

    def prepare(storage: Storage) -> None:
        try:
            storage.prepare()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(storage,)) for storage in storages]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert storages[0].current_revision() == storages[0].head_revision()
    finally:
        for storage in storages:
            storage.dispose()


def migrate_to(storage: Storage, revision: str, *, down: bool = False) -> None:
    """Upgrade (or downgrade) ``storage`` to ``revision`` under the migration lock."""
    with storage.database.transaction(write=True) as conn:
        config = storage._migrator._alembic_config(conn)
        (command.downgrade if down else command.upgrade)(config, revision)


# Rule ids whose order differs between code points and a natural-language collation.
MOVED_RULES = ("renal-b", "Renal-a", "ddi_x")
EVALUATION_ROWS = "SELECT call_id, rule_id, evaluated_at FROM cds_rule_evaluation"


def seed_0002_calls(storage: Storage) -> None:
    """At migration 0002: three calls, one with three evaluated rules, one with one, one none."""
    with storage.engine.begin() as conn:
        for call_id, minute in (("c1", 1), ("c2", 2), ("c3", 3)):
            conn.execute(
                text(
                    "INSERT INTO cds_hook_call (id, hook_instance, service_id, hook, called_at,"
                    " duration_ms, knowledge_version, unavailable_data, patient_hash) VALUES"
                    " (:id, :id, 's', 'order-sign', :at, 1.0, 'k', '[]', NULL)"
                ),
                {"id": call_id, "at": NOW + timedelta(minutes=minute)},
            )
        for call_id, rule_id in [("c1", r) for r in MOVED_RULES] + [("c2", "ddi_x")]:
            conn.execute(
                text(
                    "INSERT INTO cds_rule_evaluation (call_id, rule_id, evaluated_at)"
                    " SELECT id, :rule, called_at FROM cds_hook_call WHERE id = :id"
                ),
                {"id": call_id, "rule": rule_id},
            )


def test_migration_0003_moves_evaluated_rules_into_the_call(empty_storage: Storage) -> None:
    """Upgrade writes each call's rules as the sorted JSON text the service writes, drops the
    old table and the call_id index; the analytics count what the rows counted."""
    migrate_to(empty_storage, "0002")
    seed_0002_calls(empty_storage)
    migrate_to(empty_storage, "0003")
    with empty_storage.engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT id, rules_evaluated FROM cds_hook_call")).all())
        inspector = inspect(conn)
        tables = set(inspector.get_table_names())
        card_indexes = {index["name"] for index in inspector.get_indexes("cds_issued_card")}
    assert stored == {
        "c1": rule_ids_text(MOVED_RULES),
        "c2": '["ddi_x"]',
        "c3": "[]",
    }
    assert rule_ids_text(MOVED_RULES) == '["Renal-a","ddi_x","renal-b"]'
    assert "cds_rule_evaluation" not in tables
    assert "ix_cds_issued_card_call_id" not in card_indexes
    report = empty_storage.rule_analytics()
    assert report["calls"] == 3
    assert {r["rule_id"]: r["evaluated"] for r in report["rules"]} == {
        "Renal-a": 1,
        "ddi_x": 2,
        "renal-b": 1,
    }


def test_migration_0003_downgrade_restores_the_rows(empty_storage: Storage) -> None:
    """Downgrade rebuilds cds_rule_evaluation row for row (time: the call's), drops the column,
    and leaves the database as 0002 made it."""
    migrate_to(empty_storage, "0002")
    seed_0002_calls(empty_storage)
    with empty_storage.engine.connect() as conn:
        before = sorted(tuple(row) for row in conn.execute(text(EVALUATION_ROWS)))
    migrate_to(empty_storage, "0003")
    empty_storage.record_calls([call("hook-new", NOW, (card("r9"),), rules=("r9", "r8"))])
    new_call_id = calls_for_hook_instance(empty_storage, "hook-new")
    assert [record.rules_evaluated for record in new_call_id] == [("r8", "r9")]
    migrate_to(empty_storage, "0002", down=True)
    with empty_storage.engine.connect() as conn:
        after = sorted(tuple(row) for row in conn.execute(text(EVALUATION_ROWS)))
        columns = {column["name"] for column in inspect(conn).get_columns("cds_hook_call")}
        card_indexes = {index["name"] for index in inspect(conn).get_indexes("cds_issued_card")}
        cards = conn.execute(text("SELECT count(*) FROM cds_issued_card")).scalar()
    assert len(before) == 4
    restored = [row for row in after if row[0] in {"c1", "c2", "c3"}]
    assert restored == before
    assert sorted(row[1] for row in after if row[0] not in {"c1", "c2", "c3"}) == ["r8", "r9"]
    assert "rules_evaluated" not in columns
    assert "ix_cds_issued_card_call_id" in card_indexes
    assert cards == 1  # the downgrade rebuilt no table (that would cascade-delete cards)
    migrate_to(empty_storage, "head")
    assert empty_storage.current_revision() == "0003"


def test_downgrades_keep_calls_cards_and_feedback(empty_storage: Storage) -> None:
    """Down to 0001 and up again, no row is lost (no table rebuilt under its children) and
    the evaluated rules come back."""
    empty_storage.migrate()
    (card_uuid,) = store_call_with_cards(empty_storage, "r1")
    assert empty_storage.store_feedback(SERVICE_ID, [accepted(card_uuid, NOW)]) == 1
    migrate_to(empty_storage, "0001", down=True)
    counts = [count_rows(empty_storage, t) for t in ("cds_hook_call", "cds_issued_card")]
    assert (counts, feedback_count(empty_storage)) == ([1, 1], 1)
    migrate_to(empty_storage, "head")
    assert feedback_count(empty_storage) == 1
    with empty_storage.engine.connect() as conn:
        rules = conn.execute(text("SELECT rules_evaluated FROM cds_hook_call")).scalar()
    assert rules == '["r1"]'  # through cds_rule_evaluation and back


def test_prepare_warns_when_database_is_behind(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    """A used database below head is not upgraded silently; the log names the command."""
    with storage.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    restarted = Storage(storage.url)
    try:
        with caplog.at_level(logging.WARNING, logger="cds_service.storage"):
            restarted.prepare()
    finally:
        restarted.dispose()
    assert "flask --app cds_service db upgrade" in caplog.text


def test_missing_postgres_skips_with_reason_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no server answers, PostgreSQL tests skip and say why; in CI they fail instead."""
    dead = [URL.create("postgresql+psycopg", username="postgres", host="127.0.0.1", port=1)]
    reason = find_postgres(dead)
    assert isinstance(reason, str)
    assert reason.startswith("no PostgreSQL server answers (postgres@127.0.0.1:1")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no PostgreSQL server answers"):
        skip_or_fail(reason)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: failing instead of skipping"):
        skip_or_fail(reason)


# -- records -----------------------------------------------------------------------------


def test_hash_patient_id_is_hmac_sha256() -> None:
    """The patient hash is HMAC-SHA256 hex under the key, and changes with the key."""
    expected = hmac.new(b"k1", b"Patient/123", hashlib.sha256).hexdigest()
    assert hash_patient_id(b"k1", "Patient/123") == expected
    assert hash_patient_id(b"k2", "Patient/123") != expected
    assert len(expected) == 64


def test_records_refuse_naive_times() -> None:
    """A time without a zone is refused at construction, not stored ambiguously."""
    with pytest.raises(ValueError, match="timezone-aware"):
        call("h", datetime(2026, 1, 1), ())
    with pytest.raises(ValueError, match="timezone-aware"):
        accepted("c", datetime(2026, 1, 1))


def test_feedback_entry_refuses_unknown_outcome() -> None:
    """Only the two CDS Hooks outcomes exist."""
    with pytest.raises(ValueError, match="outcome"):
        FeedbackEntry("c", "ignored", (), None, None, None, None, NOW)  # type: ignore[arg-type]


# -- audit trail -------------------------------------------------------------------------


@pytest.mark.parametrize("fresh", [False, True], ids=["core-write", "hook-path-write"])
def test_audit_record_round_trips(storage: Storage, fresh: bool) -> None:
    """Everything in a CallRecord comes back, times as aware UTC, from either write path."""
    record = call(
        "hook-rt",
        NOW.astimezone(),
        (card("r1", "critical", 2), card("r2", "info", quieted=True)),
        rules=("r1", "r2", "r3"),
    )
    storage.record_calls([record], fresh=fresh)
    (back,) = calls_for_hook_instance(storage, "hook-rt")
    assert back.called_at == NOW
    assert back.called_at.tzinfo is not None
    assert back.rules_evaluated == ("r1", "r2", "r3")
    assert sorted(back.cards, key=lambda c: c.uuid) == sorted(record.cards, key=lambda c: c.uuid)
    assert (
        back.hook_instance,
        back.service_id,
        back.hook,
        back.duration_ms,
        back.knowledge_version,
        back.unavailable_data,
        back.patient_hash,
    ) == (
        record.hook_instance,
        record.service_id,
        record.hook,
        record.duration_ms,
        record.knowledge_version,
        record.unavailable_data,
        record.patient_hash,
    )
    assert record.rules_fired == ("r1", "r2")


def test_hook_path_write_of_several_records_stores_each(storage: Storage) -> None:
    """Several fresh records in one write (a call with cards, one without) all arrive whole."""
    records = [
        call("hook-many-1", NOW, (card("r1"), card("r2")), rules=("r2", "r1")),
        call("hook-many-2", NOW, (), rules=()),
    ]
    assert storage.record_calls(records, 500, fresh=True) == 2
    (first,) = calls_for_hook_instance(storage, "hook-many-1")
    (second,) = calls_for_hook_instance(storage, "hook-many-2")
    assert (first.rules_evaluated, len(first.cards)) == (("r1", "r2"), 2)
    assert (second.rules_evaluated, second.cards) == ((), ())


def test_hook_path_write_stores_the_rows_the_core_write_stores(storage: Storage) -> None:
    """The driver-SQL insert of the hook path leaves byte-for-byte the rows Core writes."""
    cards = (card("r1", "critical", 2), card("r2", "info", quieted=True))
    core = call("hook-core", NOW, cards, rules=("r1", "r2", "r3"))
    storage.record_calls([core])
    fast_cards = tuple(
        card(c.rule_id, c.indicator, len(c.suggestion_uuids), quieted=c.quieted) for c in cards
    )
    fast = call("hook-fast", NOW, fast_cards, rules=("r1", "r2", "r3"))
    storage.record_calls([fast], fresh=True)

    def rows(sql: str, call_id: str) -> list[tuple[object, ...]]:
        with storage.engine.connect() as conn:
            found = conn.execute(text(sql), {"id": call_id}).all()
        return [tuple(row) for row in found]

    def calls_row(record: CallRecord) -> list[tuple[object, ...]]:
        return rows(
            "SELECT hook, service_id, called_at, duration_ms, knowledge_version, "
            "unavailable_data, patient_hash, rules_evaluated FROM cds_hook_call WHERE id = :id",
            record.call_id,
        )

    def card_rows(record: CallRecord) -> list[tuple[object, ...]]:
        return rows(
            "SELECT rule_id, indicator, issued_at, quieted, service_id, "
            "CAST(suggestion_uuids AS TEXT) FROM cds_issued_card WHERE call_id = :id "
            "ORDER BY rule_id",
            record.call_id,
        )

    assert calls_row(fast) == calls_row(core)
    assert calls_row(fast)[0][-1] == '["r1","r2","r3"]'
    # Suggestion uuids differ per card; their JSON shape must not.
    strip = [(*r[:5], len(str(r[5]))) for r in card_rows(core)]
    assert [(*r[:5], len(str(r[5]))) for r in card_rows(fast)] == strip


def test_audit_trail_never_holds_the_patient_id(storage: Storage) -> None:
    """Only the keyed hash is stored: the raw patient id appears in no table."""
    storage.record_calls([call("hook-phi", NOW, (card("r1"),), patient="Patient/secret-4711")])
    with storage.engine.connect() as conn:
        dump = " ".join(str(row) for table in TABLES for row in conn.execute(select(table)))
    assert "secret-4711" not in dump
    assert hash_patient_id(b"test-key", "Patient/secret-4711") in dump


# -- feedback ----------------------------------------------------------------------------


def test_store_feedback_stores_every_field(storage: Storage) -> None:
    """Each entry is stored with outcome, suggestions, reason coding, comment and timestamp."""
    first, second = store_call_with_cards(storage, "r1", "r2")
    entries = [
        accepted(first, NOW, "sugg-1"),
        overridden(second, NOW, "recipient-disagrees-evidence", "renal function stable"),
    ]
    assert storage.store_feedback(SERVICE_ID, entries) == 2
    with storage.engine.connect() as conn:
        rows = {
            row.card_uuid: row for row in conn.execute(select(feedback).order_by(feedback.c.id))
        }
    assert rows[first].outcome == "accepted"
    assert rows[first].accepted_suggestion_ids == ["sugg-1"]
    assert (
        rows[second].override_reason_system,
        rows[second].override_reason_code,
        rows[second].user_comment,
    ) == (NRCS, "recipient-disagrees-evidence", "renal function stable")
    assert rows[second].override_reason_display == "Recipient disagrees evidence"


def test_same_feedback_twice_is_stored_once(storage: Storage) -> None:
    """Feedback repeated in one post or a later post is stored once (idempotent)."""
    (uuid_,) = store_call_with_cards(storage, "r1")
    entry = overridden(uuid_, NOW)
    assert storage.store_feedback(SERVICE_ID, [entry, entry]) == 1
    assert storage.store_feedback(SERVICE_ID, [entry]) == 0
    same_time_other_zone = overridden(uuid_, NOW.astimezone(timezone(timedelta(hours=2))))
    assert storage.store_feedback(SERVICE_ID, [same_time_other_zone]) == 0
    assert feedback_count(storage) == 1


def test_different_feedback_on_one_card_is_kept(storage: Storage) -> None:
    """A later, different outcome for the same card is a new entry, not a duplicate."""
    (uuid_,) = store_call_with_cards(storage, "r1")
    assert storage.store_feedback(SERVICE_ID, [overridden(uuid_, NOW)]) == 1
    assert storage.store_feedback(SERVICE_ID, [accepted(uuid_, NOW + timedelta(minutes=1))]) == 1
    assert feedback_count(storage) == 2


def test_unknown_card_stores_nothing(storage: Storage) -> None:
    """One unknown card uuid rejects the whole post and names every unknown uuid."""
    (known,) = store_call_with_cards(storage, "r1")
    post = [
        accepted(known, NOW),
        overridden("no-such-card-1", NOW),
        overridden("no-such-card-2", NOW),
    ]
    with pytest.raises(UnknownCardError) as raised:
        storage.store_feedback(SERVICE_ID, post)
    assert raised.value.card_uuids == ("no-such-card-1", "no-such-card-2")
    assert feedback_count(storage) == 0


def test_card_of_another_service_is_unknown(storage: Storage) -> None:
    """A card issued by another service id cannot receive feedback through this one."""
    (other,) = store_call_with_cards(storage, "r1", service_id="another-service")
    with pytest.raises(UnknownCardError, match="No card issued by service"):
        storage.store_feedback(SERVICE_ID, [accepted(other, NOW)])
    assert storage.store_feedback("another-service", [accepted(other, NOW)]) == 1


def test_empty_feedback_post_stores_nothing(storage: Storage) -> None:
    """An empty feedback list is valid and stores nothing."""
    assert storage.store_feedback(SERVICE_ID, []) == 0


def test_concurrent_feedback_loses_nothing(storage: Storage) -> None:
    """8 writers x 25 posts with shared duplicates: every distinct entry is stored exactly once."""
    threads_n, posts_n, shared_n = 8, 25, 5
    card_uuids = store_call_with_cards(storage, *(["r-conc"] * (threads_n * posts_n + shared_n)))
    unique_cards, shared_cards = card_uuids[:-shared_n], card_uuids[-shared_n:]
    # Half the writers share the app's engine; the other half are separate instances.
    storages = [storage if n % 2 == 0 else Storage(storage.url) for n in range(threads_n)]
    stored = [0] * threads_n
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def writer(n: int) -> None:
        try:
            start.wait(30)
            for post in range(posts_n):
                own = overridden(unique_cards[n * posts_n + post], NOW)
                shared = accepted(shared_cards[post % shared_n], NOW)
                stored[n] += storages[n].store_feedback(SERVICE_ID, [own, shared, own])
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(threads_n)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        for extra in storages[1::2]:
            extra.dispose()
    assert errors == []
    expected = threads_n * posts_n + shared_n
    assert sum(stored) == expected
    assert feedback_count(storage) == expected


# -- analytics ---------------------------------------------------------------------------


@pytest.fixture
def scenario(storage: Storage) -> dict[str, list[str]]:
    """Store a small known history: rule A with every kind of outcome, rule B never firing."""
    old = store_call_with_cards(storage, "A", at=NOW - timedelta(days=10))
    a = [
        store_call_with_cards(storage, "A", at=NOW - timedelta(days=day))[0]
        for day in (0, 0, 1, 1, 2)
    ]
    storage.record_calls([call("hook-quiet", NOW, (), rules=("A", "B"))])
    storage.store_feedback(
        SERVICE_ID,
        [
            accepted(a[0], NOW),
            overridden(a[1], NOW, "cds-not-applicable"),
            overridden(a[2], NOW - timedelta(days=1)),
            accepted(a[2], NOW),  # the later outcome wins
            overridden(a[4], NOW, None, "patient already on a lower dose"),
            overridden(old[0], NOW - timedelta(days=10), "recipient-concerns-outcomes"),
        ],
    )
    return {"A": a, "old": old}


def test_rule_analytics_counts_outcomes_per_rule(
    storage: Storage, scenario: dict[str, list[str]]
) -> None:
    """Fired, accepted, overridden, no-feedback, rates and reasons come out as defined."""
    result = storage.rule_analytics(None)
    rules = {rule["rule_id"]: rule for rule in result["rules"]}
    a = rules["A"]
    assert (a["fired"], a["accepted"], a["overridden"], a["no_feedback"]) == (6, 2, 3, 1)
    assert a["override_rate"] == pytest.approx(3 / 5)
    assert a["feedback_rate"] == pytest.approx(5 / 6)
    assert a["evaluated"] == 7
    assert a["fire_rate"] == pytest.approx(6 / 7)
    assert a["indicators"] == {"warning": 6}
    assert [(r["code"], r["count"]) for r in a["top_override_reasons"]] == [
        ("cds-not-applicable", 1),
        ("recipient-concerns-outcomes", 1),
    ]
    assert a["overridden_without_coded_reason"] == 1
    assert rules["B"] == {
        **rules["B"],
        "evaluated": 1,
        "fired": 0,
        "fire_rate": 0.0,
        "override_rate": None,
    }
    assert result["calls"] == 7
    assert result["totals"] == {
        "fired": 6,
        "accepted": 2,
        "overridden": 3,
        "no_feedback": 1,
        "quieted": 0,
        "override_rate": pytest.approx(0.6),
    }


@pytest.mark.postgres
def test_analytics_are_the_same_on_sqlite_and_postgresql(postgres_url: str, tmp_path: Path) -> None:
    """One trail (a fortnight of calls, cards and feedback) gives the same rule analytics and
    timeseries, windowed or not, on both databases."""
    reports = []
    for url in (sqlite_url(tmp_path), postgres_url):
        storage = Storage(url, clock=lambda: NOW)
        try:
            storage.migrate()
            seed(storage, NOW)
            reports.append(
                (
                    storage.rule_analytics(None),
                    storage.rule_analytics(NOW - timedelta(days=6)),
                    storage.timeseries(None, "day"),
                    storage.timeseries(NOW - timedelta(days=9), "week"),
                )
            )
        finally:
            storage.dispose()
    sqlite_reports, postgresql_reports = reports
    assert sqlite_reports == postgresql_reports
    assert sqlite_reports[0]["calls"] == 40
    assert {r["rule_id"]: r["evaluated"] for r in sqlite_reports[0]["rules"]} == dict.fromkeys(
        ("bp-uncontrolled", "ddi-strong-cyp3a4", "renal-egfr-low", "vaccine-live"), 40
    )
    assert 0 < sqlite_reports[1]["calls"] < 40


def test_rule_analytics_window_counts_cards_fired_since(
    storage: Storage, scenario: dict[str, list[str]]
) -> None:
    """``since`` keeps cards fired at or after it; the 10-day-old card drops out."""
    result = storage.rule_analytics(NOW - timedelta(days=3))
    (a,) = [rule for rule in result["rules"] if rule["rule_id"] == "A"]
    assert (a["fired"], a["overridden"]) == (5, 2)
    assert [r["code"] for r in a["top_override_reasons"]] == ["cds-not-applicable"]
    assert result["since"] == "2026-11-17T15:30:00Z"


def test_timeseries_buckets_by_day_and_week(
    storage: Storage, scenario: dict[str, list[str]]
) -> None:
    """Daily points carry fires and override rate; weekly points sum them from Monday."""
    daily = storage.timeseries(NOW - timedelta(days=3), "day")
    (series,) = daily["series"]
    assert [(p["start"], p["fired"], p["overridden"]) for p in series["points"]] == [
        ("2026-11-18", 1, 1),
        ("2026-11-19", 2, 0),
        ("2026-11-20", 2, 1),
    ]
    assert series["points"][1]["override_rate"] == 0.0
    weekly = storage.timeseries(None, "week")
    assert [(p["start"], p["fired"]) for p in weekly["series"][0]["points"]] == [
        ("2026-11-09", 1),
        ("2026-11-16", 5),
    ]
    assert weekly["first_issued_at"] == "2026-11-10T15:30:00Z"


def test_timeseries_refuses_unknown_bucket(storage: Storage) -> None:
    """Only day and week buckets exist."""
    with pytest.raises(ValueError, match="bucket"):
        storage.timeseries(None, "month")  # type: ignore[arg-type]


# -- outages -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", DEAD_URLS.values(), ids=DEAD_URLS.keys())
def test_dead_database_raises_storage_unavailable(url: str) -> None:
    """An unreachable database surfaces as StorageUnavailableError, never a driver error."""
    storage = Storage(url)
    try:
        with pytest.raises(StorageUnavailableError, match="unavailable"):
            storage.store_feedback(SERVICE_ID, [accepted("c", NOW)])
        with pytest.raises(StorageUnavailableError):
            storage.rule_analytics(None)
        with pytest.raises(StorageUnavailableError):
            storage.current_revision()
        with pytest.raises(StorageUnavailableError, match="unavailable"):
            storage.recent_overrides("p" * 64, ["k"], NOW, timeout_ms=200)
        with pytest.raises(StorageUnavailableError, match="unavailable"):
            storage.record_calls([call("hook-dead", NOW, (card("r1"),))], 200, fresh=True)
    finally:
        storage.dispose()


# -- audit writer ------------------------------------------------------------------------


def test_hook_path_read_has_a_short_timeout(storage: Storage) -> None:
    """A bounded read waits at most its timeout; the pooled connection then gets its own back."""
    show = (
        "PRAGMA busy_timeout" if storage.database.dialect == "sqlite" else "SHOW statement_timeout"
    )
    with storage.database.transaction(write=False, timeout_ms=250) as conn:
        inside = str(conn.exec_driver_sql(show).scalar())
    with storage.database.transaction(write=False) as conn:
        after = str(conn.exec_driver_sql(show).scalar())
    assert (inside, after) in {("250", "2000"), ("250ms", "5s")}


def test_hook_path_connections_wait_at_most_the_hook_timeout(storage: Storage) -> None:
    """A hook-path connection carries its timeout from the start (no per-call change) and
    leaves the engine's own connections at theirs."""
    if storage.database.dialect == "sqlite":
        show = ["PRAGMA busy_timeout"]
    else:
        show = ["SHOW statement_timeout", "SHOW lock_timeout"]

    def settings(conn: Any) -> list[str]:
        return [str(conn.execute(sql).fetchone()[0]) for sql in show]

    assert storage.database.on_hook_connection(250, settings) in (["250"], ["250ms", "250ms"])
    assert storage.database.on_hook_connection(300, settings) in (["300"], ["300ms", "300ms"])
    with storage.database.transaction(write=False) as conn:
        assert str(conn.exec_driver_sql(show[0]).scalar()) in {"2000", "5s"}


def test_hook_path_writes_from_many_threads_all_arrive(storage: Storage) -> None:
    """Threads sharing one Storage (gthread workers) each write and read on the hook path."""
    errors: list[BaseException] = []

    def write(thread: int) -> None:
        try:
            for index in range(15):
                record = call(f"hook-t{thread}-{index}", NOW, (card("r1"), card("r2")))
                storage.record_calls([record], 2000, fresh=True)
                storage.recent_overrides(record.patient_hash or "", ["r1-key"], NOW, 2000)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert count_rows(storage, "cds_hook_call") == 60
    assert count_rows(storage, "cds_issued_card") == 120


@pytest.mark.postgres
def test_hook_path_replaces_a_connection_the_server_dropped(postgres_url: str) -> None:
    """After the server ends an idle hook-path connection (a restart), the next write and read
    succeed on a new connection instead of failing the call."""
    storage = Storage(postgres_url)
    try:
        storage.migrate()
        storage.record_calls([call("hook-before", NOW, (card("r1"),))], 500, fresh=True)
        pid = storage.database.on_hook_connection(500, lambda conn: conn.info.backend_pid)
        with storage.engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        time.sleep(0.2)
        storage.record_calls([call("hook-after", NOW, (card("r1"),))], 500, fresh=True)
        assert len(calls_for_hook_instance(storage, "hook-after")) == 1
        assert storage.database.on_hook_connection(500, lambda c: c.info.backend_pid) != pid
    finally:
        storage.dispose()


def test_a_forked_child_opens_its_own_hook_path_connections(storage: Storage) -> None:
    """A child process (gunicorn --preload) never uses the parent's hook-path connections; both
    keep writing."""
    storage.record_calls([call("hook-parent-1", NOW, ())], 500, fresh=True)
    parent_connection = storage.database.on_hook_connection(500, id)
    child = os.fork()
    if child == 0:  # the child: exit status says what it saw
        status = 1
        try:
            if storage.database.on_hook_connection(500, id) != parent_connection:
                storage.record_calls([call("hook-child", NOW, ())], 500, fresh=True)
                status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    assert os.WEXITSTATUS(status) == 0
    storage.record_calls([call("hook-parent-2", NOW, ())], 500, fresh=True)
    assert storage.database.on_hook_connection(500, id) == parent_connection
    for hook_instance in ("hook-parent-1", "hook-child", "hook-parent-2"):
        assert len(calls_for_hook_instance(storage, hook_instance)) == 1


def test_recent_overrides_picks_the_latest_override_per_finding(storage: Storage) -> None:
    """Per finding key the latest override since the window start; other patients never."""
    mine, theirs = hash_patient_id(b"test-key", "Patient/123"), "f" * 64
    first, second = card("A"), card("A")
    other = IssuedCard(str(uuid.uuid4()), "B", "warning", (), "B-key")
    storage.record_calls(
        [
            call("h1", NOW - timedelta(days=5), (first,)),
            call("h2", NOW - timedelta(days=2), (second, other)),
            call("h3", NOW - timedelta(days=2), (card("A"),), patient="Patient/999"),
        ]
    )
    storage.store_feedback(
        SERVICE_ID,
        [
            overridden(first.uuid, NOW - timedelta(days=5), "cds-not-applicable"),
            overridden(second.uuid, NOW - timedelta(days=1), "recipient-concerns-outcomes", "ok"),
            overridden(other.uuid, NOW - timedelta(days=40)),
        ],
    )
    found = storage.recent_overrides(mine, ["A-key", "B-key"], NOW - timedelta(days=30))
    assert list(found) == ["A-key"]
    assert found["A-key"].overridden_at == NOW - timedelta(days=1)
    assert (found["A-key"].reason_code, found["A-key"].user_comment) == (
        "recipient-concerns-outcomes",
        "ok",
    )
    assert storage.recent_overrides(theirs, ["A-key"], NOW - timedelta(days=30)) == {}
    assert storage.recent_overrides(mine, [], NOW) == {}


def test_audit_writer_writes_what_is_submitted(storage: Storage) -> None:
    """Records submitted from many threads all reach the database."""
    writer = AuditWriter(storage)

    def submit_many(n: int) -> None:
        for i in range(25):
            writer.submit(call(f"hook-{n}-{i}", NOW, (card("r1"),)))

    try:
        threads = [threading.Thread(target=submit_many, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert writer.flush(30)
    finally:
        writer.close()
    assert count_rows(storage, "cds_hook_call") == 100
    assert count_rows(storage, "cds_issued_card") == 100
    assert writer.written == 100
    assert writer.failed == writer.dropped == 0


@pytest.mark.parametrize("url", DEAD_URLS.values(), ids=DEAD_URLS.keys())
def test_audit_writer_spools_during_an_outage_and_never_raises(
    url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the database down, submit returns and the record is in the spool, said once at ERROR."""
    storage = Storage(url)
    spool = AuditSpool(tmp_path / "spool", max_bytes=1 << 20)
    writer = AuditWriter(storage, spool)
    try:
        with caplog.at_level(logging.ERROR, logger="cds_service.storage"):
            storage._migrator._prepared = True  # as if it had answered at start-up
            writer.submit(call("hook-during-outage", NOW, (card("r1"),)))
            writer.submit(call("hook-during-outage-2", NOW, (card("r1"),)))
    finally:
        writer.close(0.1)
        storage.dispose()
    assert (writer.spooled, writer.written, writer.dropped) == (2, 0, 0)
    assert spool.pending() == 2
    assert sum("did not take a record" in r.getMessage() for r in caplog.records) == 1
    assert "AUDIT RECORDS NOT WRITTEN at shutdown: 2 record(s)" in caplog.text


def test_audit_writer_replays_the_spool_when_the_database_returns(tmp_path: Path) -> None:
    """Records spooled during an outage reach the database once it is back, without a restart."""
    missing = tmp_path / "not-yet"
    storage = Storage(sqlite_url(missing))
    writer = AuditWriter(storage, AuditSpool(tmp_path / "spool", max_bytes=1 << 20))
    try:
        writer.submit(call("hook-during-outage", NOW, ()))
        missing.mkdir()
        assert writer.flush(30)
        writer.submit(call("hook-after", NOW, ()))
    finally:
        writer.close()
    try:
        for hook_instance in ("hook-during-outage", "hook-after"):
            assert len(calls_for_hook_instance(storage, hook_instance)) == 1, hook_instance
        assert (writer.spooled, writer.replayed, writer.written) == (1, 1, 1)
    finally:
        storage.dispose()


class FailingStorage:
    """A stand-in storage that is prepared but never takes a write, counting the tries."""

    is_prepared = True

    def __init__(self) -> None:
        self.tries = 0

    def prepare(self) -> None:
        """Nothing to prepare."""

    def record_calls(
        self, records: Sequence[CallRecord], timeout_ms: int | None = None, *, fresh: bool = False
    ) -> int:
        """Fail as an outage does."""
        self.tries += 1
        raise StorageUnavailableError("database down (test)")


def test_after_a_failure_submits_go_straight_to_the_spool(tmp_path: Path) -> None:
    """An outage costs one bounded database try, not one per call, for retry_after_s."""
    down = FailingStorage()
    writer = AuditWriter(down, AuditSpool(tmp_path, 1 << 20), retry_after_s=60)  # type: ignore[arg-type]
    try:
        for n in range(50):
            writer.submit(call(f"hook-{n}", NOW, ()))
        assert down.tries == 1
        assert writer.spooled == 50
    finally:
        writer.close(0.1)


def test_a_full_spool_logs_each_record_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Above the spool's bound a record is logged whole at ERROR and counted, never dropped mute."""
    one = len(record_json(call("hook-0", NOW, ()))) + 1
    writer = AuditWriter(FailingStorage(), AuditSpool(tmp_path, max_bytes=2 * one + 10))  # type: ignore[arg-type]
    try:
        with caplog.at_level(logging.ERROR, logger="cds_service.storage"):
            for n in range(5):
                writer.submit(call(f"hook-{n}", NOW, ()))
    finally:
        writer.close(0.1)
    assert (writer.spooled, writer.dropped) == (2, 3)
    lost = [r.getMessage() for r in caplog.records if "AUDIT RECORD NOT STORED" in r.getMessage()]
    assert len(lost) == 3
    assert all("is full" in line and '"rules_evaluated"' in line for line in lost)


def test_submit_after_close_still_stores(storage: Storage) -> None:
    """A record of a call still in flight at shutdown is written, not dropped."""
    writer = AuditWriter(storage)
    writer.close()
    writer.submit(call("hook-late", NOW, ()))
    assert (writer.written, writer.dropped) == (1, 0)
    assert len(calls_for_hook_instance(storage, "hook-late")) == 1


# -- Flask wiring ------------------------------------------------------------------------


def test_init_storage_defaults_to_sqlite_in_instance_folder(tmp_path: Path) -> None:
    """With no URL configured, the database is a migrated SQLite file in the instance folder."""
    app = make_app(tmp_path / "instance")
    try:
        storage = get_storage(app)
        assert storage.url.database == str(tmp_path / "instance" / "cds.sqlite3")
        assert storage.current_revision() == storage.head_revision()
        assert app.extensions[HASH_KEY_EXTENSION] == b"test-key"
        assert "analytics" in app.blueprints
    finally:
        shutdown_storage(app)


def test_init_storage_migrates_an_empty_configured_database(
    database_url: str, tmp_path: Path
) -> None:
    """CDS_DATABASE_URL is used, and its empty database gets the schema at start-up."""
    app = make_app(tmp_path, CDS_DATABASE_URL=database_url)
    try:
        writer = get_audit_writer(app)
        writer.submit(call("hook-app", NOW, (card("r1"),)))
        assert writer.flush(30)
        assert len(calls_for_hook_instance(get_storage(app), "hook-app")) == 1
    finally:
        shutdown_storage(app)


def test_start_up_survives_an_unreachable_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database outage at start-up is logged; the app still starts to serve cards."""
    with caplog.at_level(logging.ERROR, logger="cds_service.storage"):
        app = make_app(tmp_path, CDS_DATABASE_URL=DEAD_URLS["postgresql-refused"])
    try:
        assert "unavailable at start-up" in caplog.text
        get_audit_writer(app).submit(call("hook-x", NOW, ()))  # does not raise
    finally:
        shutdown_storage(app)


def test_unset_hash_key_uses_a_random_key_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without CDS_AUDIT_HASH_KEY hashes still hide ids, and the log says they will not link."""
    with caplog.at_level(logging.WARNING, logger="cds_service.storage"):
        app = make_app(tmp_path, CDS_AUDIT_HASH_KEY=None)
    try:
        key = app.extensions[HASH_KEY_EXTENSION]
        assert isinstance(key, bytes)
        assert len(key) == 32
        assert "CDS_AUDIT_HASH_KEY is not set" in caplog.text
    finally:
        shutdown_storage(app)


def test_cli_db_upgrade_and_current(database_url: str, tmp_path: Path) -> None:
    """``flask db upgrade`` migrates and ``flask db current`` reports the revision."""
    app = make_app(tmp_path, CDS_DATABASE_URL=database_url)
    try:
        runner = app.test_cli_runner()
        upgraded = runner.invoke(args=["db", "upgrade"])
        assert upgraded.exit_code == 0, upgraded.output
        assert "is at migration 0003" in upgraded.output
        current = runner.invoke(args=["db", "current"])
        assert current.exit_code == 0
        assert "at 0003, newest 0003" in current.output
    finally:
        shutdown_storage(app)
