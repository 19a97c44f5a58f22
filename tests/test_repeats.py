"""Repeated alerts through HTTP: an overridden warning or info card comes back at info, once per
patient and finding, within CDS_REPEAT_WINDOW_DAYS; critical cards never change."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, event, text

from cds_service import close_app
from cds_service.storage import Storage
from cds_service.storage.schema import metadata
from tests.charts.lupus import CHARTS, voclosporin_draft_order
from tests.conftest import FIXED_NOW, make_app
from tests.support.gunicorn import Gunicorn, free_port, two_workers
from tests.support.hooks import chart_resources, hook_request, prefetch_for

pytest_plugins = ["tests.support.databases"]

TODAY: date = FIXED_NOW.date()
SIGN = "/cds-services/voclosporin-order-sign"
NOTE = re.compile(r"Overridden on (\d{4}-\d{2}-\d{2}) \((.*)\) for this patient")


def _request(
    app: Any,
    chart_name: str,
    extra: tuple[dict[str, Any], ...] = (),
    today: date = TODAY,
    patient: str | None = None,
) -> dict[str, Any]:
    """A hook request ordering voclosporin for ``chart_name`` (plus ``extra`` chart resources)."""
    resources = [*chart_resources(CHARTS[chart_name](today)), *extra]
    patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    templates = app.extensions["cds_service"].services["voclosporin-order-sign"].prefetch
    body = hook_request(
        "order-sign",
        patient_id,
        [voclosporin_draft_order(patient_id, today)],
        prefetch_for(resources, patient_id, templates),
    )
    if patient is not None:  # the same chart, another patient: every reference follows
        body = json.loads(json.dumps(body).replace(patient_id, patient))
    return body


def _moderate_inhibitor(drug: str, patient_id: str = "ln-initiation-clean") -> dict[str, Any]:
    """An active order for a moderate CYP3A4 inhibitor (a warning card with this drug)."""
    return {
        "resourceType": "MedicationRequest",
        "id": f"mod-{drug.split()[0]}",
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {"text": drug},
    }


def _card(response: Any, rule_id: str) -> dict[str, Any]:
    assert response.status_code == 200, response.json
    [card] = [c for c in response.json["cards"] if c["source"]["topic"]["code"] == rule_id]
    return card


def _override(
    app: Any, client: Any, card: dict[str, Any], when: datetime = FIXED_NOW, comment: str = ""
) -> dict[str, Any]:
    """Post an override of ``card`` with its first reason; return the reason."""
    assert app.extensions["cds_audit_writer"].flush(5.0)
    reason = card["overrideReasons"][0]
    override: dict[str, Any] = {"reason": reason}
    if comment:
        override["userComment"] = comment
    response = client.post(
        f"{SIGN}/feedback",
        json={
            "feedback": [
                {
                    "card": card["uuid"],
                    "outcome": "overridden",
                    "overrideReason": override,
                    "outcomeTimestamp": when.isoformat().replace("+00:00", "Z"),
                }
            ]
        },
    )
    assert response.status_code == 200, response.json
    return dict(reason)


class Clock:
    """A settable CDS_CLOCK."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(FIXED_NOW)


@pytest.fixture
def app(tmp_path: Path, clock: Clock) -> Iterator[Any]:
    application = make_app(tmp_path, CDS_CLOCK=clock)
    yield application
    close_app(application)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


def test_overridden_warning_comes_back_as_info_with_date_and_reason(app, client):
    """Override a warning with a reason; the same call again shows it at info, saying so."""
    body = _request(app, "ln-cyclophosphamide")
    first = _card(client.post(SIGN, json=body), "cyclophosphamide")
    assert first["indicator"] == "warning"
    assert not NOTE.search(first["detail"])
    reason = _override(app, client, first, FIXED_NOW - timedelta(days=3), comment="on a taper")

    again = client.post(SIGN, json=body)
    repeat = _card(again, "cyclophosphamide")
    assert repeat["indicator"] == "info"
    assert repeat["uuid"] != first["uuid"]
    note = NOTE.search(repeat["detail"])
    assert note is not None, repeat["detail"]
    assert note.group(1) == (FIXED_NOW - timedelta(days=3)).date().isoformat()
    assert reason["display"] in note.group(2)
    assert "on a taper" in note.group(2)
    assert repeat["summary"].startswith("Overridden " + note.group(1))
    assert len(repeat["summary"]) <= 140
    assert first["detail"] in repeat["detail"]  # the finding itself is still all there
    # Warnings still come before infos; uuids stay unique per card.
    severities = {"critical": 0, "warning": 1, "info": 2}
    indicators = [severities[c["indicator"]] for c in again.json["cards"]]
    assert indicators == sorted(indicators)
    assert len({c["uuid"] for c in again.json["cards"]}) == len(again.json["cards"])


def test_critical_card_never_changes_after_override(app, client):
    """A strong CYP3A4 inhibitor card stays critical however often it was overridden."""
    body = _request(app, "ln-on-voclosporin-interactions")
    first = _card(client.post(SIGN, json=body), "strong-cyp3a4-inhibitor")
    assert first["indicator"] == "critical"
    _override(app, client, first)
    repeat = _card(client.post(SIGN, json=body), "strong-cyp3a4-inhibitor")
    assert repeat["indicator"] == "critical"
    assert repeat["summary"] == first["summary"]
    assert not NOTE.search(repeat["detail"])


def test_data_unavailable_card_is_never_quieted(app, client):
    """A check that could not run this time is not the finding overridden before."""
    body = _request(app, "ln-initiation-clean")
    body["prefetch"]["potassium"] = {  # the EHR could not read the potassium results
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout", "diagnostics": "lab system down"}],
    }
    first = _card(client.post(SIGN, json=body), "data-unavailable")
    _override(app, client, first)
    assert _card(client.post(SIGN, json=body), "data-unavailable")["indicator"] == "warning"


@pytest.mark.parametrize(
    ("age", "quieted"),
    [
        pytest.param(timedelta(days=30) - timedelta(seconds=1), True, id="just-inside"),
        pytest.param(timedelta(days=30), True, id="on-the-boundary"),
        pytest.param(timedelta(days=30) + timedelta(seconds=1), False, id="just-outside"),
    ],
)
def test_window_boundary(app, client, clock, age, quieted):
    """Overridden exactly 30 days ago still counts; a second longer ago does not."""
    body = _request(app, "ln-cyclophosphamide")
    _override(app, client, _card(client.post(SIGN, json=body), "cyclophosphamide"), FIXED_NOW)
    clock.now = FIXED_NOW + age
    repeat = _card(client.post(SIGN, json=body), "cyclophosphamide")
    assert repeat["indicator"] == ("info" if quieted else "warning")


def test_window_zero_turns_it_off(tmp_path):
    """CDS_REPEAT_WINDOW_DAYS=0: an overridden warning comes back unchanged."""
    app = make_app(tmp_path, CDS_REPEAT_WINDOW_DAYS=0)
    try:
        client = app.test_client()
        body = _request(app, "ln-cyclophosphamide")
        _override(app, client, _card(client.post(SIGN, json=body), "cyclophosphamide"))
        assert _card(client.post(SIGN, json=body), "cyclophosphamide")["indicator"] == "warning"
    finally:
        close_app(app)


def test_setting_refuses_negative_days():
    """A negative window is a configuration error that names the setting."""
    from cds_service.config import from_environment

    with pytest.raises(RuntimeError, match="CDS_REPEAT_WINDOW_DAYS"):
        from_environment({"CDS_REPEAT_WINDOW_DAYS": "-1"})
    assert from_environment({})["CDS_REPEAT_WINDOW_DAYS"] == 30


def test_another_patient_is_not_quieted(app, client):
    """An override for one patient says nothing about another with the same finding."""
    body = _request(app, "ln-cyclophosphamide")
    _override(app, client, _card(client.post(SIGN, json=body), "cyclophosphamide"))
    other = _request(app, "ln-cyclophosphamide", patient="another-patient")
    assert _card(client.post(SIGN, json=other), "cyclophosphamide")["indicator"] == "warning"
    assert _card(client.post(SIGN, json=body), "cyclophosphamide")["indicator"] == "info"


def test_another_drug_is_not_quieted(app, client):
    """Overriding the diltiazem warning does not quiet the same rule for verapamil."""
    rule = "moderate-cyp3a4-inhibitor"
    diltiazem = _request(app, "ln-initiation-clean", (_moderate_inhibitor("diltiazem 120 MG"),))
    verapamil = _request(app, "ln-initiation-clean", (_moderate_inhibitor("verapamil 80 MG"),))
    _override(app, client, _card(client.post(SIGN, json=diltiazem), rule))
    assert _card(client.post(SIGN, json=verapamil), rule)["indicator"] == "warning"
    assert _card(client.post(SIGN, json=diltiazem), rule)["indicator"] == "info"


def test_accepted_card_is_not_quieted(app, client):
    """Only overrides quiet a card: one the clinician acted on comes back unchanged."""
    rule = "moderate-cyp3a4-inhibitor"
    body = _request(app, "ln-initiation-clean", (_moderate_inhibitor("diltiazem 120 MG"),))
    card = _card(client.post(SIGN, json=body), rule)
    assert app.extensions["cds_audit_writer"].flush(5.0)
    feedback = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": "2026-11-01T12:00:00Z",
    }
    assert client.post(f"{SIGN}/feedback", json={"feedback": [feedback]}).status_code == 200
    assert _card(client.post(SIGN, json=body), rule)["indicator"] == "warning"


def test_database_down_sends_cards_unquieted(app, client, caplog):
    """The database failing: the call still answers 200 at once, unquieted, and it is logged."""
    body = _request(app, "ln-cyclophosphamide")
    _override(app, client, _card(client.post(SIGN, json=body), "cyclophosphamide"))
    storage: Storage = app.extensions["cds_storage"]
    working = storage.database.engine
    storage.database.engine = create_engine("postgresql+psycopg://cds@127.0.0.1:1/gone")
    try:
        with caplog.at_level(logging.ERROR, logger="cds_service.recording"):
            started = time.monotonic()
            response = client.post(SIGN, json=body)
            elapsed = time.monotonic() - started
            again = client.post(SIGN, json=body)  # within the retry pause: not even asked
    finally:
        storage.database.engine.dispose()
        storage.database.engine = working
    assert _card(response, "cyclophosphamide")["indicator"] == "warning"
    assert _card(again, "cyclophosphamide")["indicator"] == "warning"
    assert elapsed < 2.0
    assert "past overrides not read" in caplog.text
    assert caplog.text.count("past overrides not read") == 1


class _RecordingConnection:
    """A hook-path DB-API connection that notes each statement sent through ``execute``."""

    def __init__(self, connection: Any, seen: list[tuple[str, Any]]) -> None:
        self._connection = connection
        self._seen = seen

    def execute(self, statement: str, parameters: Any = ()) -> Any:
        self._seen.append((statement, parameters))
        return self._connection.execute(statement, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


@contextmanager
def _hook_statements(storage: Storage) -> Iterator[list[tuple[str, Any]]]:
    """Yield the statements this thread sends on the hook path's connections meanwhile."""
    database = storage.database
    original = database.on_hook_connection
    seen: list[tuple[str, Any]] = []
    me = threading.get_ident()

    def recording(timeout_ms: int | None, work: Any) -> Any:
        if threading.get_ident() != me:
            return original(timeout_ms, work)
        return original(timeout_ms, lambda conn: work(_RecordingConnection(conn, seen)))

    database.on_hook_connection = recording  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del database.on_hook_connection


def _selects_during(app: Any, client: Any, body: dict[str, Any]) -> int:
    """SELECTs this thread sent to the database while answering ``body``."""
    storage = app.extensions["cds_storage"]
    engine = storage.engine
    assert app.extensions["cds_audit_writer"].flush(5.0)
    me = threading.get_ident()
    seen: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        if threading.get_ident() == me and statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with _hook_statements(storage) as hook_path:
            assert client.post(SIGN, json=body).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", count)
    hook_selects = [s for s, _ in hook_path if s.lstrip().upper().startswith("SELECT")]
    return len(seen) + len(hook_selects)


def test_one_query_per_call_and_none_without_a_quietable_card(app, client):
    """A call with warnings asks the database once; one with only critical cards never."""
    assert _selects_during(app, client, _request(app, "ln-cyclophosphamide")) == 1
    # Clarithromycin for a patient on voclosporin: one critical card, and no payer card (which
    # every voclosporin order, renewals included, now carries as information).
    only_critical = _request(app, "ln-on-voclosporin-interactions")
    patient_id = only_critical["context"]["patientId"]
    only_critical["context"]["draftOrders"]["entry"] = [
        {
            "resource": {
                "resourceType": "MedicationRequest",
                "id": "clari",
                "status": "draft",
                "intent": "order",
                "subject": {"reference": f"Patient/{patient_id}"},
                "medicationCodeableConcept": {"text": "clarithromycin 500 MG Oral Tablet"},
            }
        }
    ]
    assert [c["indicator"] for c in client.post(SIGN, json=only_critical).json["cards"]] == [
        "critical"
    ]
    assert _selects_during(app, client, only_critical) == 0


def test_lookup_uses_the_indexes(app, client):
    """The lookup is answered from indexes (SQLite's plan searches, never scans, the tables)."""
    from cds_service.storage.feedback import recent_overrides

    storage: Storage = app.extensions["cds_storage"]
    with _hook_statements(storage) as captured:
        recent_overrides(storage.database, "0" * 64, ["a" * 64], FIXED_NOW, 500)
    [(statement, parameters)] = captured
    assert "cds_feedback" in statement
    with storage.engine.connect() as conn:
        plan = " | ".join(
            str(row[-1])
            for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
        )
    assert "SCAN" not in plan.replace("SCAN CONSTANT", ""), plan
    assert "ix_cds_hook_call_patient_hash" in plan, plan


def test_analytics_count_quieted_cards_per_rule(app, client):
    """/analytics/rules counts, per rule, the cards shown at info as a repeat."""
    body = _request(app, "ln-cyclophosphamide")
    _override(app, client, _card(client.post(SIGN, json=body), "cyclophosphamide"))
    client.post(SIGN, json=body)
    client.post(SIGN, json=body)
    assert app.extensions["cds_audit_writer"].flush(5.0)
    stats = client.get("/analytics/rules").json
    rules = {r["rule_id"]: r for r in stats["rules"]}
    assert rules["cyclophosphamide"]["quieted"] == 2
    assert rules["cyclophosphamide"]["indicators"] == {"warning": 1, "info": 2}
    assert rules["prior-authorization"]["quieted"] == 0
    assert stats["totals"]["quieted"] == 2
    page = client.get("/analytics").get_data(as_text=True)
    row = re.search(r'<tr data-rule-id="cyclophosphamide".*?</tr>', page, re.S)
    assert row is not None
    assert '<td data-field="quieted">2</td>' in row.group(0)


# ------------------------------------------------------------------------------ migration


def test_migration_upgrades_a_v1_database(database_url: str) -> None:
    """A database at 0001 with cards keeps them: no key, not quieted, and the lookup works."""
    storage = Storage(database_url)
    try:
        with storage.database.transaction(write=True) as conn:
            command.upgrade(storage._migrator._alembic_config(conn), "0001")
        with storage.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO cds_hook_call (id, hook_instance, service_id, hook, called_at,"
                    " duration_ms, knowledge_version, unavailable_data, patient_hash) VALUES"
                    " ('c1', 'h1', 's', 'order-sign', :at, 1.0, 'k', '[]', :patient)"
                ),
                {"at": datetime(2026, 10, 1, tzinfo=UTC), "patient": "p" * 64},
            )
            conn.execute(
                text(
                    "INSERT INTO cds_issued_card (uuid, call_id, service_id, rule_id, indicator,"
                    " suggestion_uuids, issued_at) VALUES"
                    " ('u1', 'c1', 's', 'cyclophosphamide', 'warning', '[]', :at)"
                ),
                {"at": datetime(2026, 10, 1, tzinfo=UTC)},
            )
        assert storage.current_revision() == "0001"
        storage.migrate()
        assert storage.current_revision() == storage.head_revision()
        with storage.engine.connect() as conn:
            row = conn.execute(
                text("SELECT finding_key, quieted FROM cds_issued_card WHERE uuid = 'u1'")
            ).one()
            assert (row.finding_key, bool(row.quieted)) == (None, False)
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = [
                d
                for d in compare_metadata(context, metadata)
                if not (isinstance(d, tuple) and d[0] == "remove_table")
            ]
        assert diff == []
        since = datetime(2026, 9, 1, tzinfo=UTC)
        assert storage.recent_overrides("p" * 64, ["k" * 64], since) == {}
        assert storage.rule_analytics()["rules"][0]["quieted"] == 0
    finally:
        storage.dispose()


# ------------------------------------------------------------------------------ two workers


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Gunicorn]:
    """Two gunicorn workers (sync) sharing a SQLite file, with one hash key, on the real clock."""
    database = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    close_app(make_app(tmp_path, CDS_DATABASE_URL=database))  # migrate once, up front
    settings = {"CDS_DATABASE_URL": database, "CDS_AUDIT_HASH_KEY": "two-workers"}
    with two_workers(tmp_path, free_port(), settings) as server:
        yield server


def test_override_via_one_worker_quiets_the_repeat_on_the_other(workers, tmp_path):
    """Worker A issues and records the override; worker B, same database, shows it at info."""
    today = datetime.now(UTC).date()  # gunicorn runs on the real clock
    local = make_app(tmp_path / "templates")
    try:
        body = _request(local, "ln-cyclophosphamide", today=today)
    finally:
        close_app(local)
    first = workers.post(SIGN, body, "issue")
    assert first.status_code == 200, first.text
    card = _card_json(first.json(), "cyclophosphamide")
    assert card["indicator"] == "warning"
    issuer = workers.served_by("issue")
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": card["overrideReasons"][0]},
                "outcomeTimestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            }
        ]
    }
    # The other worker may answer 404 until the issuer's audit writer stored the card.
    for attempt in range(50):
        stored = workers.post(f"{SIGN}/feedback", feedback, f"feedback-{attempt}")
        if stored.status_code == 200:
            break
        assert stored.status_code == 404, stored.text
        time.sleep(0.1)
    assert stored.status_code == 200, stored.text
    for attempt in range(60):
        repeat = workers.post(SIGN, body, f"repeat-{attempt}")
        assert repeat.status_code == 200, repeat.text
        if workers.served_by(f"repeat-{attempt}") != issuer:
            break
    else:
        pytest.fail("the other worker never answered the repeat")
    quieted = _card_json(repeat.json(), "cyclophosphamide")
    assert quieted["indicator"] == "info"
    assert NOTE.search(quieted["detail"])
    assert card["overrideReasons"][0]["display"] in quieted["detail"]


def _card_json(body: dict[str, Any], rule_id: str) -> dict[str, Any]:
    [card] = [c for c in body["cards"] if c["source"]["topic"]["code"] == rule_id]
    return card
