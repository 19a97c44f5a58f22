"""Issue 13 (durability): cards known at once, the audit spool, timeouts, readiness, fingerprint.

Each test pins a defect found by trying the service as an operator would: feedback refused for a
card another process issued, audit records lost in a database outage, threads held by a stalled
database, a health check that says "ok" without its dependencies, start-up settings that let a
replay through or migrate a stray file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy.engine import make_url

from cds_service import close_app
from cds_service.gunicorn_conf import refuse_unshared_replay_cache
from cds_service.storage import Storage, get_storage, shutdown_storage
from cds_service.storage.engine import DatabaseTimeouts
from cds_service.storage.spool import AuditSpool
from tests.charts.lupus import CHARTS, voclosporin_draft_order
from tests.conftest import FIXED_NOW, make_app
from tests.support.factories import call, calls_for_hook_instance, card, sqlite_url
from tests.support.factories import make_app as make_storage_app
from tests.support.hooks import chart_resources, hook_request, prefetch_for

pytest_plugins = ["tests.support.databases"]

TODAY = date(2026, 11, 1)
SIGN = "/cds-services/voclosporin-order-sign"


def hook_body(app: Flask) -> dict[str, Any]:
    """An order-sign request that fires cards (the interactions chart), prefetch included."""
    resources = chart_resources(CHARTS["ln-on-voclosporin-interactions"](TODAY))
    patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    templates = app.extensions["cds_service"].services["voclosporin-order-sign"].prefetch
    return hook_request(
        "order-sign",
        patient_id,
        [voclosporin_draft_order(patient_id, TODAY)],
        prefetch_for(resources, patient_id, templates),
    )


def feedback_on(card_uuid: str) -> dict[str, Any]:
    """One "overridden" feedback item on ``card_uuid``."""
    return {
        "feedback": [
            {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": "2026-11-01T12:05:00Z"}
        ]
    }


@pytest.fixture
def app_on(database_url: str, tmp_path: Path) -> Iterator[Flask]:
    """The app on a migrated SQLite or PostgreSQL database, with short database bounds."""
    app = make_app(
        tmp_path,
        CDS_DATABASE_URL=database_url,
        CDS_DB_LOCK_TIMEOUT_MS=300,
        CDS_AUDIT_WRITE_TIMEOUT_MS=200,
    )
    yield app
    close_app(app)


class TableLock:
    """Another connection holding a table lock (a stalled database), until released."""

    def __init__(self, url: str, table: str) -> None:
        parsed = make_url(url)
        self.sqlite = parsed.get_backend_name() == "sqlite"
        if self.sqlite:
            import sqlite3

            self._conn: Any = sqlite3.connect(parsed.database or "", isolation_level=None)
            self._conn.execute("BEGIN EXCLUSIVE")
        else:
            conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
            self._conn = psycopg.connect(conninfo)
            self._conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        """Roll back, which frees the lock."""
        if self.sqlite:
            self._conn.execute("ROLLBACK")
        else:
            self._conn.rollback()
        self._conn.close()


# -- cards any process can verify at once ----------------------------------------------------


def test_feedback_at_once_on_a_card_another_app_issued(database_url: str, tmp_path: Path) -> None:
    """Two apps on one database: feedback on B right after A answered is stored, never 404."""
    first = make_app(tmp_path / "a", CDS_DATABASE_URL=database_url)
    second = make_app(tmp_path / "b", CDS_DATABASE_URL=database_url)
    try:
        issuing, taking = first.test_client(), second.test_client()
        body = hook_body(first)
        refused = 0
        for _ in range(10):
            cards = issuing.post(SIGN, json=body).json["cards"]
            response = taking.post(f"{SIGN}/feedback", json=feedback_on(cards[0]["uuid"]))
            refused += response.status_code != 200
        assert refused == 0
    finally:
        close_app(first)
        close_app(second)


def test_stalled_database_hook_answers_in_bounded_time_and_feedback_works_after(
    app_on: Flask, database_url: str
) -> None:
    """With the audit table locked the card still goes out in bounded time; its record is
    spooled, feedback says retry (503, Retry-After), and once the lock goes it is stored."""
    client = app_on.test_client()
    body = hook_body(app_on)
    lock = TableLock(database_url, "cds_issued_card")
    try:
        started = time.monotonic()
        answered = client.post(SIGN, json=body)
        elapsed = time.monotonic() - started
        assert answered.status_code == 200
        assert elapsed < 2.0
        writer = app_on.extensions["cds_audit_writer"]
        assert writer.spooled == 1
        card_uuid = answered.json["cards"][0]["uuid"]
        waiting = client.post(f"{SIGN}/feedback", json=feedback_on(card_uuid))
        assert waiting.status_code == 503
        assert "Retry-After" in waiting.headers
    finally:
        lock.release()
    stored = client.post(f"{SIGN}/feedback", json=feedback_on(card_uuid))
    assert (stored.status_code, stored.json) == (200, {"received": 1, "stored": 1})
    assert writer.spool.pending() == 0


def test_truly_unknown_card_is_still_404(app_on: Flask) -> None:
    """A card no instance issued stays a 404, spool or not."""
    response = app_on.test_client().post(
        f"{SIGN}/feedback", json=feedback_on("00000000-0000-4000-8000-000000000000")
    )
    assert response.status_code == 404


# -- feedback cannot take the hook path's threads --------------------------------------------


def test_feedback_on_a_locked_table_answers_in_bounded_time(
    app_on: Flask, database_url: str
) -> None:
    """A feedback write that waits on a lock gives up after the lock timeout with a 503."""
    client = app_on.test_client()
    card_uuid = client.post(SIGN, json=hook_body(app_on)).json["cards"][0]["uuid"]
    lock = TableLock(database_url, "cds_feedback")
    try:
        started = time.monotonic()
        response = client.post(f"{SIGN}/feedback", json=feedback_on(card_uuid))
        elapsed = time.monotonic() - started
    finally:
        lock.release()
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert elapsed < 3.0


def test_feedback_beyond_its_slots_is_503_at_once(tmp_path: Path) -> None:
    """With every feedback slot taken, the next post is 503 with Retry-After within 1 s."""
    app = make_app(tmp_path, CDS_FEEDBACK_CONCURRENCY=1)
    try:
        client = app.test_client()
        card_uuid = client.post(SIGN, json=hook_body(app)).json["cards"][0]["uuid"]
        slots = app.extensions["cds_recorder"]._feedback_slots
        assert slots.acquire(timeout=1)  # a feedback write stuck on the database
        try:
            started = time.monotonic()
            busy = client.post(f"{SIGN}/feedback", json=feedback_on(card_uuid))
            assert time.monotonic() - started < 1.0
        finally:
            slots.release()
        assert (busy.status_code, busy.headers["Retry-After"]) == (503, "2")
        assert client.post(f"{SIGN}/feedback", json=feedback_on(card_uuid)).status_code == 200
    finally:
        close_app(app)


# -- timeouts on every database use ----------------------------------------------------------


@pytest.mark.postgres
def test_postgres_connections_carry_statement_and_lock_timeouts(postgres_url: str) -> None:
    """Every pooled PostgreSQL connection has the configured statement and lock timeouts."""
    storage = Storage(postgres_url, timeouts=DatabaseTimeouts(statement_ms=4321, lock_ms=1234))
    try:
        with storage.engine.connect() as conn:
            shown = (
                conn.exec_driver_sql("SHOW statement_timeout").scalar(),
                conn.exec_driver_sql("SHOW lock_timeout").scalar(),
            )
    finally:
        storage.dispose()
    assert shown == ("4321ms", "1234ms")


def test_sqlite_busy_timeout_is_the_lock_timeout(tmp_path: Path) -> None:
    """SQLite waits for a lock as long as CDS_DB_LOCK_TIMEOUT_MS, not 30 s."""
    storage = Storage(sqlite_url(tmp_path), timeouts=DatabaseTimeouts(lock_ms=1234))
    try:
        with storage.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
    finally:
        storage.dispose()


# -- the spool -------------------------------------------------------------------------------


def test_spool_replay_is_idempotent(storage: Storage, tmp_path: Path) -> None:
    """A record replayed twice (a commit whose answer was lost) is stored once."""
    record = call("hook-twice", FIXED_NOW, (card("r1"),))
    storage.record_calls([record])
    spool = AuditSpool(tmp_path, 1 << 20)
    assert spool.append(record)
    assert spool.replay(storage.record_calls) == 1
    assert len(calls_for_hook_instance(storage, "hook-twice")) == 1
    assert spool.segments() == []


def test_spool_sets_a_torn_line_aside_and_replays_the_rest(
    storage: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A half-written last line (a crash mid-write) is logged and kept aside; the rest replays."""
    spool = AuditSpool(tmp_path, 1 << 20)
    assert spool.append(call("hook-whole", FIXED_NOW, ()))
    (segment,) = spool.segments()
    spool.rotate()
    with segment.open("ab") as file:
        file.write(b'{"hook_instance":"hook-torn","serv')
    spool.replay(storage.record_calls)
    assert len(calls_for_hook_instance(storage, "hook-whole")) == 1
    assert "set aside" in caplog.text
    assert "hook-torn" in next(tmp_path.glob("rejected-*.jsonl")).read_text()


def test_spool_skips_a_segment_another_process_still_writes(
    storage: Storage, tmp_path: Path
) -> None:
    """A segment whose writer holds its lock is left alone; replayed once the writer lets go."""
    writing = AuditSpool(tmp_path, 1 << 20)
    replaying = AuditSpool(tmp_path, 1 << 20)
    assert writing.append(call("hook-locked", FIXED_NOW, ()))
    assert replaying.replay(storage.record_calls) == 0
    writing.rotate()
    assert replaying.replay(storage.record_calls) == 1


def test_spools_of_different_databases_stay_apart(tmp_path: Path) -> None:
    """Instances sharing a folder but not a database never replay each other's records."""
    mine = AuditSpool(tmp_path, 1 << 20, database_key="postgresql://a/db")
    theirs = AuditSpool(tmp_path, 1 << 20, database_key="postgresql://b/db")
    assert theirs.append(call("hook-theirs", FIXED_NOW, ()))
    theirs.rotate()
    assert mine.segments() == []
    assert mine.replay(lambda batch: None) == 0


# -- health, readiness, fingerprint ----------------------------------------------------------


def test_readyz_is_ready_with_its_database(client: Any) -> None:
    """/readyz answers 200 when the database answers, and shows the fingerprint."""
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["checks"]["database"] == "ok"
    assert (
        response.json["settingsFingerprint"] == client.get("/healthz").json["settingsFingerprint"]
    )


@pytest.mark.parametrize(
    ("setting", "failed"),
    [
        ({"CDS_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/test"}, "database"),
        ({"CDS_REDIS_URL": "redis://127.0.0.1:1/0"}, "replayCache"),
    ],
    ids=["database-down", "redis-down"],
)
def test_readyz_is_503_naming_what_failed(
    tmp_path: Path, setting: dict[str, str], failed: str
) -> None:
    """A dependency that does not answer makes /readyz 503 with its name; /healthz stays 200."""
    app = make_app(tmp_path, CDS_READY_TIMEOUT_MS=800, **setting)
    try:
        client = app.test_client()
        started = time.monotonic()
        response = client.get("/readyz")
        assert time.monotonic() - started < 3.0
        assert response.status_code == 503
        assert response.json["status"] == "not ready"
        assert response.json["checks"][failed].startswith("failed")
        assert client.get("/healthz").status_code == 200
    finally:
        close_app(app)


def fingerprint(tmp_path: Path, **settings: object) -> str:
    """The /healthz fingerprint of an app with ``settings``."""
    app = make_app(tmp_path, **settings)
    try:
        value: str = app.test_client().get("/healthz").json["settingsFingerprint"]
        return value
    finally:
        close_app(app)


@pytest.mark.parametrize(
    "different",
    [
        {"CDS_POTASSIUM_HIGH_DEFAULT": 5.5},
        {"CDS_REPEAT_WINDOW_DAYS": 0},
        {"CDS_REDIS_URL": "redis://127.0.0.1:6379/0"},
        {"CDS_FHIR_ALLOWED_SERVERS": "https://ehr.example.org/fhir"},
        {"CDS_AUDIT_HASH_KEY": "another-key"},
    ],
    ids=["local-policy", "repeat-window", "replay-cache", "fhir-policy", "hash-key"],
)
def test_fingerprint_tells_instances_apart(tmp_path: Path, different: dict[str, object]) -> None:
    """Same settings, same fingerprint; one setting that changes cards or trust changes it."""
    database = {"CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.sqlite3'}"}
    one = fingerprint(tmp_path / "1", **database)
    assert fingerprint(tmp_path / "2", **database) == one
    assert fingerprint(tmp_path / "3", **database, **different) != one


def test_fingerprint_never_shows_a_password(tmp_path: Path) -> None:
    """Database and Redis passwords never reach /healthz, in the clear or otherwise."""
    app = make_app(tmp_path, CDS_REDIS_URL="redis://:s3cret-pw@127.0.0.1:6379/0")
    try:
        text = json.dumps(app.test_client().get("/healthz").json)
    finally:
        close_app(app)
    assert "s3cret-pw" not in text


# -- production start-up ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "environ", "refused"),
    [
        (2, {"CDS_JWT_ISSUERS": '{"a": "file:/k"}'}, True),
        (2, {"CDS_JWT_ISSUERS": '{"a": "file:/k"}', "CDS_REDIS_URL": "redis://r"}, False),
        (1, {"CDS_JWT_ISSUERS": '{"a": "file:/k"}'}, False),
        (2, {}, False),
    ],
    ids=["two-workers-no-redis", "two-workers-redis", "one-worker", "auth-off"],
)
def test_production_config_refuses_a_per_worker_replay_cache(
    workers: int, environ: dict[str, str], refused: bool
) -> None:
    """Several workers, client authentication on and no Redis: start-up stops with the reason."""
    if refused:
        with pytest.raises(RuntimeError, match="need CDS_REDIS_URL"):
            refuse_unshared_replay_cache(workers, environ)
    else:
        refuse_unshared_replay_cache(workers, environ)


def test_production_config_has_no_shared_control_socket() -> None:
    """gunicorn 27's default control socket is one per host: the packaged config turns it off."""
    from cds_service import gunicorn_conf

    assert gunicorn_conf.control_socket_disable is True


def test_db_upgrade_without_a_database_url_refuses(tmp_path: Path) -> None:
    """``flask db upgrade`` with no CDS_DATABASE_URL outside debug refuses and names the file."""
    app = make_storage_app(tmp_path)
    try:
        result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    finally:
        shutdown_storage(app)
    assert result.exit_code != 0
    assert "CDS_DATABASE_URL is not set: refusing" in result.output
    assert "cds.sqlite3" in result.output


def test_db_upgrade_in_debug_names_the_development_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With FLASK_DEBUG=1 the development file is migrated, and the output says which file."""
    monkeypatch.setenv("FLASK_DEBUG", "1")
    app = make_storage_app(tmp_path)
    try:
        result = app.test_cli_runner().invoke(args=["db", "upgrade"])
        assert result.exit_code == 0, result.output
        assert "migrating the development file" in result.output
        assert str(get_storage(app).url.database) in result.output
    finally:
        shutdown_storage(app)


def test_shutdown_with_the_database_away_says_what_stays_spooled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Closing during an outage replays for the drain time, then one ERROR line with counts."""
    app = make_app(
        tmp_path,
        CDS_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/test",
        CDS_AUDIT_DRAIN_SECONDS=1,
    )
    client = app.test_client()
    body = hook_body(app)
    get_storage(app)._migrator._prepared = True  # as if it answered at start-up
    for _ in range(3):
        assert client.post(SIGN, json=body).status_code == 200
    started = time.monotonic()
    close_app(app)
    assert time.monotonic() - started < 5.0
    assert "AUDIT RECORDS NOT WRITTEN at shutdown: 3 record(s) stay in the spool" in caplog.text


def test_spooled_record_survives_a_restart(tmp_path: Path) -> None:
    """What one run spooled, the next run with the same folder writes to the database."""
    database = tmp_path / "later"
    url = sqlite_url(database)
    first = make_app(tmp_path, CDS_DATABASE_URL=url)  # the folder is missing: database down
    client = first.test_client()
    assert client.post(SIGN, json=hook_body(first)).status_code == 200
    first.extensions["cds_audit_writer"].close(0.1)
    close_app(first)
    database.mkdir()
    second = make_app(tmp_path, CDS_DATABASE_URL=url)
    try:
        assert second.extensions["cds_audit_writer"].flush(10)
        with get_storage(second).engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM cds_hook_call").scalar() == 1
    finally:
        close_app(second)


def test_replay_spool_command_writes_a_retired_instance_spool(tmp_path: Path) -> None:
    """``flask db replay-spool`` writes what a stopped instance left in its spool."""
    url = sqlite_url(tmp_path / "db")
    spool_dir = tmp_path / "spool"
    spool = AuditSpool(spool_dir, 1 << 20, database_key=make_url(url).render_as_string())
    assert spool.append(call("hook-left-behind", FIXED_NOW, ()))
    spool.rotate()
    (tmp_path / "db").mkdir()
    app = make_storage_app(tmp_path, CDS_DATABASE_URL=url, CDS_AUDIT_SPOOL_DIR=str(spool_dir))
    try:
        result = app.test_cli_runner().invoke(args=["db", "replay-spool", "--timeout", "10"])
        assert result.exit_code == 0, result.output
        assert "0 still waiting" in result.output
        assert len(calls_for_hook_instance(get_storage(app), "hook-left-behind")) == 1
    finally:
        shutdown_storage(app)


def test_gunicorn_with_the_packaged_config_refuses_to_start(tmp_path: Path) -> None:
    """The real gunicorn master stops (exit 1) with the reason, before any worker boots."""
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CDS_")},
        "CDS_JWT_ISSUERS": json.dumps({"https://ehr.test": f"file:{tmp_path / 'jwks.json'}"}),
        "CDS_PUBLIC_BASE_URL": "https://cds.test",
    }
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            *("-c", "python:cds_service.gunicorn_conf", "-b", "127.0.0.1:0"),
            "cds_service:create_app()",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "2 workers with client authentication on (CDS_JWT_ISSUERS) need CDS_REDIS_URL" in (
        done.stderr + done.stdout
    )


def test_every_setting_is_classified_for_the_fingerprint() -> None:
    """A new setting must be put in the fingerprint or, deliberately, left out of it."""
    from cds_service.config import SETTINGS
    from cds_service.fingerprint import FINGERPRINT_SETTINGS, NOT_FINGERPRINTED

    names = {s.name for s in SETTINGS}
    assert names - set(FINGERPRINT_SETTINGS) - NOT_FINGERPRINTED == set()
    assert set(FINGERPRINT_SETTINGS) & NOT_FINGERPRINTED == set()
