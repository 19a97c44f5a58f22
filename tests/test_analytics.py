"""Analytics endpoints: the JSON numbers, the window, access control and the HTML page."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service.analytics import build_chart, parse_since
from cds_service.storage import get_storage, shutdown_storage
from tests.support.factories import SERVICE_ID, Seeded, call, card, make_app, overridden, seed
from tests.support.pages import parse_analytics_page, percent

pytest_plugins = ["tests.support.databases"]

TOKEN = "s3cret-analytics-token"


@pytest.fixture
def seeded(storage_app: Flask) -> Seeded:
    """Store the shared fortnight of calls and feedback in the app's database."""
    return seed(get_storage(storage_app))


@pytest.fixture
def client(storage_app: Flask, seeded: Seeded) -> FlaskClient:
    """Return a test client of the seeded app (development mode: analytics open)."""
    return storage_app.test_client()


@pytest.fixture
def protected_app(tmp_path: Path) -> Iterator[Flask]:
    """Yield an app whose analytics need CDS_ANALYTICS_TOKEN."""
    app = make_app(tmp_path, CDS_ANALYTICS_TOKEN=TOKEN, CDS_JWT_ISSUERS=["https://ehr"])
    try:
        yield app
    finally:
        shutdown_storage(app)


def basic(user: str, password: str) -> dict[str, str]:
    """Build an HTTP Basic Authorization header."""
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


# -- JSON --------------------------------------------------------------------------------


def test_rules_json_reports_every_rule(client: FlaskClient, seeded: Seeded) -> None:
    """GET /analytics/rules lists each rule with fires, outcomes, rates and reasons."""
    response = client.get("/analytics/rules")
    assert response.status_code == 200
    body = response.get_json()
    rules = {rule["rule_id"]: rule for rule in body["rules"]}
    assert set(rules) == {"ddi-strong-cyp3a4", "renal-egfr-low", "bp-uncontrolled", "vaccine-live"}
    ddi = rules["ddi-strong-cyp3a4"]
    assert ddi["fired"] == len(seeded.cards["ddi-strong-cyp3a4"]) == 20
    assert (ddi["accepted"], ddi["overridden"], ddi["no_feedback"]) == (7, 13, 0)
    assert ddi["override_rate"] == pytest.approx(13 / 20)
    # Six cards were overridden with a code, then again with only a comment: the latest wins.
    assert [(r["code"], r["count"]) for r in ddi["top_override_reasons"]] == [
        ("recipient-disagrees-evidence", 7)
    ]
    assert ddi["overridden_without_coded_reason"] == 6
    renal = rules["renal-egfr-low"]
    assert (renal["fired"], renal["accepted"], renal["no_feedback"]) == (8, 4, 4)
    assert rules["vaccine-live"]["fired"] == 0
    assert rules["vaccine-live"]["evaluated"] == seeded.calls == body["calls"]
    assert body["since"] is None


@pytest.mark.parametrize(
    "since",
    [
        "2026-01-01",
        "2026-01-01T00:00:00Z",
        "2026-01-01T01:00:00+01:00",
        "2026-01-01T01:00:00 01:00",  # "+" sent unencoded arrives as a space
        "2026-01-01T00:00:00",
    ],
    ids=["date", "utc-z", "offset", "offset-unencoded-plus", "naive-is-utc"],
)
def test_since_accepts_iso_dates_and_datetimes(client: FlaskClient, since: str) -> None:
    """Every ISO 8601 form of the same instant gives the same window."""
    response = client.get("/analytics/rules", query_string={"since": since})
    assert response.status_code == 200
    assert response.get_json()["since"] == "2026-01-01T00:00:00Z"


@pytest.mark.parametrize("since", ["yesterday", "2026-13-01", "2026-01-01T25:00"])
def test_bad_since_is_400_with_error_body(client: FlaskClient, since: str) -> None:
    """A since that is not ISO 8601 is refused with the uniform JSON error."""
    response = client.get("/analytics/rules", query_string={"since": since})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["status"] == 400
    assert error["title"] == "Invalid since"
    assert repr(since) in error["detail"]


@pytest.mark.parametrize(
    "query",
    [{"days": "0"}, {"days": "-3"}, {"days": "week"}, {"days": "7", "since": "2026-01-01"}],
    ids=["zero", "negative", "word", "both"],
)
def test_bad_window_is_400(client: FlaskClient, query: dict[str, str]) -> None:
    """days must be a positive whole number and cannot be combined with since."""
    response = client.get("/analytics/rules", query_string=query)
    assert response.status_code == 400
    assert response.get_json()["error"]["status"] == 400


def test_days_window_starts_at_midnight_utc(client: FlaskClient, seeded: Seeded) -> None:
    """days=3 means today and the two days before, from midnight UTC."""
    body = client.get("/analytics/rules?days=3").get_json()
    start = datetime.combine(seeded.now.date() - timedelta(days=2), datetime.min.time(), UTC)
    assert body["since"] == start.isoformat().replace("+00:00", "Z")
    all_time = client.get("/analytics/rules").get_json()
    assert 0 < body["totals"]["fired"] < all_time["totals"]["fired"]


def test_timeseries_json_and_bucket_validation(client: FlaskClient) -> None:
    """GET /analytics/timeseries gives per-rule points; an unknown bucket is 400."""
    body = client.get("/analytics/timeseries?bucket=week").get_json()
    assert body["bucket"] == "week"
    assert {series["rule_id"] for series in body["series"]} == {
        "ddi-strong-cyp3a4",
        "renal-egfr-low",
        "bp-uncontrolled",
    }
    assert client.get("/analytics/timeseries?bucket=month").status_code == 400


def test_database_outage_is_503(tmp_path: Path) -> None:
    """With the database down the analytics answer 503 without the database's address."""
    app = make_app(tmp_path, CDS_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/test")
    try:
        response = app.test_client().get("/analytics/rules")
        assert response.status_code == 503
        assert "127.0.0.1" not in response.get_data(as_text=True)
        assert response.headers["Retry-After"] == "30"
    finally:
        shutdown_storage(app)


# -- access ------------------------------------------------------------------------------


def test_token_is_required_with_a_basic_challenge(protected_app: Flask) -> None:
    """Without the token: 401 and a Basic challenge, so a browser asks for it."""
    client = protected_app.test_client()
    for path in ("/analytics", "/analytics/rules", "/analytics/timeseries"):
        response = client.get(path)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith('Basic realm="analytics"')
        assert response.get_json()["error"]["status"] == 401


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {TOKEN}"},
        basic("pharmacist", TOKEN),
        basic("", TOKEN),
    ],
    ids=["bearer", "basic", "basic-no-user"],
)
def test_right_token_opens_analytics(protected_app: Flask, headers: dict[str, str]) -> None:
    """The token works as a Bearer token or as the HTTP Basic password."""
    client = protected_app.test_client()
    assert client.get("/analytics/rules", headers=headers).status_code == 200
    assert client.get("/analytics", headers=headers).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        basic(TOKEN, "wrong"),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": f"Token {TOKEN}"},
    ],
    ids=["wrong-bearer", "longer-bearer", "token-as-user", "garbled-basic", "other-scheme"],
)
def test_wrong_credentials_are_401(protected_app: Flask, headers: dict[str, str]) -> None:
    """Anything but the exact token is refused."""
    response = protected_app.test_client().get("/analytics/rules", headers=headers)
    assert response.status_code == 401


def test_production_without_token_is_403(tmp_path: Path) -> None:
    """With client JWTs on but no analytics token, analytics stay closed and say why."""
    app = make_app(tmp_path, CDS_JWT_ISSUERS=["https://ehr.example.org"])
    try:
        response = app.test_client().get("/analytics/rules")
        assert response.status_code == 403
        assert "CDS_ANALYTICS_TOKEN" in response.get_json()["error"]["detail"]
    finally:
        shutdown_storage(app)


# -- the page ----------------------------------------------------------------------------


def test_page_numbers_match_the_json(client: FlaskClient) -> None:
    """Every number in the page's tables is the JSON's number for the same window."""
    html = client.get("/analytics").get_data(as_text=True)
    page = parse_analytics_page(html)
    assert page.since is not None
    body = client.get("/analytics/rules", query_string={"since": page.since}).get_json()
    assert list(page.rules) == [rule["rule_id"] for rule in body["rules"]]
    for rule in body["rules"]:
        cells = page.rules[rule["rule_id"]]
        for field in ("evaluated", "fired", "accepted", "overridden", "no_feedback"):
            assert cells[field].text == str(rule[field]), (rule["rule_id"], field)
        for field in ("override_rate", "fire_rate", "feedback_rate"):
            assert cells[field].text == percent(rule[field])
            expected = "" if rule[field] is None else str(rule[field])
            assert cells[field].value == expected
    for field in ("fired", "accepted", "overridden", "no_feedback"):
        assert page.totals[field].text == str(body["totals"][field])
    assert page.totals["calls"].text == str(body["calls"])
    reasons = [
        (rule["rule_id"], reason["code"], reason["count"])
        for rule in body["rules"]
        for reason in rule["top_override_reasons"]
    ]
    assert [row for row in page.reasons if row[1]] == reasons


def test_page_charts_each_rule_that_fired(client: FlaskClient) -> None:
    """One chart per firing rule; its bars add up to the rule's fires, with rate points."""
    html = client.get("/analytics").get_data(as_text=True)
    page = parse_analytics_page(html)
    body = client.get("/analytics/rules", query_string={"since": page.since}).get_json()
    fired = {rule["rule_id"]: rule["fired"] for rule in body["rules"] if rule["fired"]}
    assert set(page.bars) == set(fired)
    for rule_id, bars in page.bars.items():
        assert sum(n for _, n in bars) == fired[rule_id]
    assert page.rate_points["ddi-strong-cyp3a4"] > 0
    assert page.rate_points["bp-uncontrolled"] == 0  # no feedback: no rate to draw


def test_page_is_self_contained_and_not_cached(client: FlaskClient) -> None:
    """The page loads nothing from elsewhere (strict CSP, no scripts) and is not cached."""
    response = client.get("/analytics")
    html = response.get_data(as_text=True)
    assert response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert response.headers["Cache-Control"] == "no-store"
    assert "<script" not in html
    assert re.findall(r'(?:src|href)="(?!/|data:)[^"]*"', html) == []  # only links to this service


def test_page_escapes_text_from_clients(storage_app: Flask) -> None:
    """Override reason text comes from the EHR and is shown escaped, never as markup."""
    storage = get_storage(storage_app)
    now = datetime.now(UTC)
    issued = card("ddi-strong-cyp3a4")
    storage.record_calls([call("hook-xss", now, (issued,))])
    evil = overridden(issued.uuid, now, "<script>alert(1)</script>")
    storage.store_feedback(SERVICE_ID, [evil])
    html = storage_app.test_client().get("/analytics").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_empty_page_says_so(storage_app: Flask) -> None:
    """With nothing recorded yet the page still renders and says there is nothing."""
    response = storage_app.test_client().get("/analytics")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "No card fired in this window." in html
    assert "No rule was evaluated in this window." in html


def test_long_window_charts_weeks(client: FlaskClient) -> None:
    """A year is charted per week, so the bars stay readable."""
    html = client.get("/analytics?days=365").get_data(as_text=True)
    assert "(per week)" in html
    page = parse_analytics_page(html)
    starts = [start for start, _ in page.bars["ddi-strong-cyp3a4"]]
    assert all(datetime.fromisoformat(start).weekday() == 0 for start in starts)


# -- units -------------------------------------------------------------------------------


def test_parse_since_treats_naive_as_utc() -> None:
    """A date-time without a zone is read as UTC, a date as its midnight UTC."""
    now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    assert parse_since("2026-03-04T05:06:07", now) == datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert parse_since("2026-03-04", now) == datetime(2026, 3, 4, tzinfo=UTC)


def test_chart_scales_bars_and_rates_into_the_plot() -> None:
    """The tallest bar reaches the top of the axis; a 100 % override rate sits at the top."""
    days = [datetime(2026, 1, d, tzinfo=UTC).date() for d in (1, 2, 3)]
    points = [
        {"start": "2026-01-01", "fired": 5, "accepted": 0, "overridden": 2},
        {"start": "2026-01-03", "fired": 10, "accepted": 1, "overridden": 0},
    ]
    chart = build_chart("r", points, days)
    assert [bar.fired for bar in chart.bars] == [5, 10]
    assert chart.bars[1].y < chart.bars[0].y  # taller bar starts higher
    assert chart.y_ticks[-1].label == "10"
    assert [point.rate for point in chart.points] == [1.0, 0.0]
    assert chart.points[0].y < chart.points[1].y
