"""Override analytics: per rule, how often it fires and what clinicians do with its cards.

Alert fatigue is why drug-safety alerts fail; these pages let a pharmacist or CMIO see it.

Endpoints (all read ``Storage``; times are UTC; the window is by when the card fired):

``GET /analytics/rules``
    JSON from ``Storage.rule_analytics``: per rule evaluated, fired, accepted, overridden,
    no-feedback, override rate, top override reasons. All time unless ``since`` or ``days``.
``GET /analytics/timeseries``
    JSON from ``Storage.timeseries``; ``bucket=day`` (default) or ``week``.
``GET /analytics``
    HTML page: per rule a chart of cards fired (bars) and override rate (line) over time,
    the rule table and the override-reason table. Last 30 days unless ``since``/``days``.
    Server-rendered SVG with inline CSS: no JavaScript, no CDN, works offline.

Query: ``since`` is an ISO 8601 date (``2026-01-31``, midnight UTC) or date-time
(``2026-01-31T08:00:00Z``; no zone means UTC); ``days=N`` means the last N whole days
including today. A bad value gives 400 ``{"error": {"status", "title", "detail"}}``.

Access (checked before every analytics request, including the page):

- ``CDS_ANALYTICS_TOKEN`` set: the request must carry ``Authorization: Bearer <token>`` or
  HTTP Basic with the token as the password (any user name), else 401 with
  ``WWW-Authenticate: Basic realm="analytics"`` so that a browser asks for it.
- unset while ``CDS_JWT_ISSUERS`` is set (production): 403; analytics needs the token.
- both unset (development): open.

``GET /metrics`` (``cds_service.api``) follows the same rules through
``require_operator_token``, with ``CDS_METRICS_TOKEN`` (or, unset, ``CDS_ANALYTICS_TOKEN``).
"""

from __future__ import annotations

import functools
import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template, request

from cds_service.errors import BadRequest, Forbidden, StorageUnavailableError, Unauthorized
from cds_service.storage.extension import get_storage
from cds_service.storage.reports import BUCKETS, TOP_REASONS, Bucket, days_ago, start_of_day

analytics_bp = Blueprint("analytics", __name__, template_folder="templates")

DEFAULT_PAGE_DAYS = 30
MAX_DAYS = 3660
MAX_DAY_BUCKETS = 120  # beyond this the page charts weeks, or the bars get too thin to read
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:"


def _now() -> datetime:
    """The app's clock (``CDS_CLOCK``), so windows agree with the hook path's time."""
    now: datetime = current_app.config["CDS_CLOCK"]()
    return now


def _storage_unavailable_named(view: Callable[[], Response]) -> Callable[[], Response]:
    """Log the database reason; the client gets a 503 titled for analytics (no address)."""

    @functools.wraps(view)
    def wrapped() -> Response:
        try:
            return view()
        except StorageUnavailableError as exc:
            current_app.logger.error("analytics: %s", exc)
            raise StorageUnavailableError(exc.reason, title="Analytics unavailable") from None

    return wrapped


# -- access ------------------------------------------------------------------------------


def _presented_token() -> str | None:
    """Return the token from a Bearer header or the password of HTTP Basic."""
    auth = request.authorization
    if auth is None:
        return None
    if auth.type == "bearer":
        return auth.token
    if auth.type == "basic":
        return auth.password
    return None


def require_operator_token(area: str, token: str | None, token_setting: str) -> None:
    """Apply the access rules in the module docstring to ``area`` (analytics, metrics).

    ``token`` is the token that area takes (from ``token_setting``); 401 names its realm.
    """
    if token:
        presented = _presented_token()
        if presented is None or not hmac.compare_digest(
            presented.encode("utf-8"), str(token).encode("utf-8")
        ):
            raise Unauthorized(
                f"{area} needs the {area.lower()} token (Bearer, or as the HTTP Basic password).",
                headers={"WWW-Authenticate": f'Basic realm="{area.lower()}", charset="UTF-8"'},
            )
        return
    if current_app.config.get("CDS_JWT_ISSUERS") is not None:
        raise Forbidden(
            "This service authenticates CDS clients (CDS_JWT_ISSUERS is set), so "
            f"{area.lower()} stays closed until {token_setting} is set.",
            title=f"{area} disabled",
        )


@analytics_bp.before_request
def _require_access() -> None:
    """Apply the access rules in the module docstring."""
    token = current_app.config.get("CDS_ANALYTICS_TOKEN")
    require_operator_token("Analytics", token, "CDS_ANALYTICS_TOKEN")


# -- query parameters --------------------------------------------------------------------


def parse_since(raw: str, now: datetime) -> datetime:
    """Parse ``since``: an ISO date (midnight UTC) or date-time (naive means UTC).

    A ``since`` before the longest window ending at ``now`` is moved up to its start.
    """
    text = raw.strip()
    candidates = [text]
    if " " in text:  # an unencoded "+01:00" arrives as " 01:00"
        head, _, tail = text.rpartition(" ")
        candidates.append(f"{head}+{tail}")
    for candidate in candidates:
        try:
            if len(candidate) == 10:
                parsed = start_of_day(date.fromisoformat(candidate))
            else:
                parsed = datetime.fromisoformat(candidate)
                parsed = (
                    parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
                )
        except (ValueError, OverflowError):
            continue
        # Nothing is older than the window the page can draw; a far past "since" means all of it.
        return max(parsed, days_ago(MAX_DAYS, now))
    raise BadRequest(
        f"since must be an ISO 8601 date (2026-01-31) or date-time (2026-01-31T08:00:00Z), "
        f"got {raw!r}.",
        title="Invalid since",
    )


def window_from_query(default_days: int | None) -> datetime | None:
    """Return the window start from ``since`` or ``days`` (None: all time)."""
    since, days = request.args.get("since"), request.args.get("days")
    if since and days:
        raise BadRequest("Give since or days, not both.", title="Invalid window")
    if since:
        return parse_since(since, _now())
    if days:
        if not days.isdigit() or not 1 <= int(days) <= MAX_DAYS:
            raise BadRequest(
                f"days must be a whole number from 1 to {MAX_DAYS}, got {days!r}.",
                title="Invalid days",
            )
        return days_ago(int(days), _now())
    return None if default_days is None else days_ago(default_days, _now())


def _bucket_from_query() -> Bucket:
    """Return ``bucket`` from the query (day or week)."""
    raw = request.args.get("bucket", "day")
    for bucket in BUCKETS:
        if raw == bucket:
            return bucket
    raise BadRequest(f"bucket must be one of {BUCKETS}, got {raw!r}.", title="Invalid bucket")


# -- JSON --------------------------------------------------------------------------------


@analytics_bp.get("/analytics/rules")
@_storage_unavailable_named
def rules_json() -> Response:
    """Per-rule fire and override counts as JSON."""
    return jsonify(get_storage().rule_analytics(window_from_query(None)))


@analytics_bp.get("/analytics/timeseries")
@_storage_unavailable_named
def timeseries_json() -> Response:
    """Per-rule fires and override rate per day or week as JSON."""
    return jsonify(get_storage().timeseries(window_from_query(None), _bucket_from_query()))


# -- the page ----------------------------------------------------------------------------

# Chart geometry in SVG user units; the SVG scales to the page width.
CHART_WIDTH, CHART_HEIGHT = 900, 170
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 44, 52, 12, 26
FIRED_COLOR, RATE_COLOR = "#2f6db5", "#d9480f"


@dataclass(frozen=True)
class Bar:
    """One bucket's cards fired."""

    x: float
    y: float
    width: float
    height: float
    start: str
    fired: int


@dataclass(frozen=True)
class RatePoint:
    """One bucket's override rate (only where some card got feedback)."""

    x: float
    y: float
    start: str
    rate: float
    overridden: int
    decided: int


@dataclass(frozen=True)
class Tick:
    """An axis label and where it goes."""

    position: float
    label: str


@dataclass(frozen=True)
class RuleChart:
    """Everything the template needs to draw one rule's chart."""

    rule_id: str
    bars: tuple[Bar, ...]
    points: tuple[RatePoint, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    rate_ticks: tuple[Tick, ...]

    @property
    def rate_path(self) -> str:
        """Return the polyline through the override-rate points."""
        return " ".join(f"{point.x:.1f},{point.y:.1f}" for point in self.points)


def _bucket_starts(first: date, last: date, bucket: Bucket) -> list[date]:
    """List the starts of every bucket from ``first`` to ``last``, empty ones included."""
    step = timedelta(days=7 if bucket == "week" else 1)
    if bucket == "week":
        first -= timedelta(days=first.weekday())
        last -= timedelta(days=last.weekday())
    starts, current = [], first
    while current <= last:
        starts.append(current)
        current += step
    return starts


def _nice_ceiling(value: int) -> int:
    """Round an axis maximum up to 1, 2 or 5 times a power of ten."""
    if value <= 1:
        return 1
    magnitude = int(10 ** math.floor(math.log10(value)))
    return next(f * magnitude for f in (1, 2, 5, 10) if value <= f * magnitude)


def build_chart(rule_id: str, points: list[dict[str, Any]], starts: list[date]) -> RuleChart:
    """Lay out one rule's bars (fired) and line (override rate) over ``starts``."""
    by_start = {point["start"]: point for point in points}
    plot_width = CHART_WIDTH - PAD_LEFT - PAD_RIGHT
    plot_height = CHART_HEIGHT - PAD_TOP - PAD_BOTTOM
    slot = plot_width / max(len(starts), 1)
    y_max = _nice_ceiling(max((point["fired"] for point in points), default=1))
    bottom = PAD_TOP + plot_height
    bars: list[Bar] = []
    rates: list[RatePoint] = []
    for index, start in enumerate(starts):
        point = by_start.get(start.isoformat())
        if point is None:
            continue
        center = PAD_LEFT + slot * (index + 0.5)
        height = plot_height * point["fired"] / y_max
        width = max(slot * 0.7, 1.0)
        bars.append(
            Bar(
                center - width / 2,
                bottom - height,
                width,
                height,
                start.isoformat(),
                point["fired"],
            )
        )
        decided = point["accepted"] + point["overridden"]
        if decided:
            rate = point["overridden"] / decided
            rates.append(
                RatePoint(
                    center,
                    bottom - plot_height * rate,
                    start.isoformat(),
                    rate,
                    point["overridden"],
                    decided,
                )
            )
    label_every = max(1, math.ceil(len(starts) / 8))
    x_ticks = tuple(
        Tick(PAD_LEFT + slot * (index + 0.5), start.strftime("%d %b"))
        for index, start in enumerate(starts)
        if index % label_every == 0
    )
    # 0, the top, and the middle when it is a whole number (0 / 5 / 10, not 0 / 2 / 5).
    tick_values = [0, y_max // 2, y_max] if y_max % 2 == 0 else [0, y_max]
    y_ticks = tuple(Tick(bottom - plot_height * value / y_max, str(value)) for value in tick_values)
    rate_ticks = tuple(
        Tick(bottom - plot_height * share, f"{share:.0%}") for share in (0.0, 0.5, 1.0)
    )
    return RuleChart(rule_id, tuple(bars), tuple(rates), x_ticks, y_ticks, rate_ticks)


def percent(value: float | None) -> str:
    """Format a rate for people: one decimal and a percent sign, or a dash when unknown."""
    return "\N{EN DASH}" if value is None else f"{value * 100:.1f}%"


@analytics_bp.get("/analytics")
@_storage_unavailable_named
def dashboard() -> Response:
    """Render the analytics page from the same numbers as /analytics/rules."""
    storage = get_storage()
    since = window_from_query(DEFAULT_PAGE_DAYS)
    analytics = storage.rule_analytics(since)
    today = _now().astimezone(UTC).date()
    first_day = since.date() if since is not None else None
    if first_day is None:
        first_issued = storage.timeseries(None)["first_issued_at"]
        first_day = datetime.fromisoformat(first_issued).date() if first_issued else today
    bucket: Bucket = "day" if (today - first_day).days < MAX_DAY_BUCKETS else "week"
    series = {
        item["rule_id"]: item["points"] for item in storage.timeseries(since, bucket)["series"]
    }
    starts = _bucket_starts(first_day, today, bucket)
    charts = [
        build_chart(rule["rule_id"], series.get(rule["rule_id"], []), starts)
        for rule in analytics["rules"]
        if rule["fired"]
    ]
    html = render_template(
        "analytics.html",
        analytics=analytics,
        charts=charts,
        bucket=bucket,
        since=since,
        first_day=first_day,
        today=today,
        percent=percent,
        chart=_chart_constants(),
        windows=(7, 30, 90, 365),
        top_reasons=TOP_REASONS,
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["Cache-Control"] = "no-store"
    return response


def _chart_constants() -> dict[str, Any]:
    """Return the chart geometry and colours for the template."""
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "left": PAD_LEFT,
        "right": PAD_RIGHT,
        "top": PAD_TOP,
        "bottom": CHART_HEIGHT - PAD_BOTTOM,
        "fired": FIRED_COLOR,
        "rate": RATE_COLOR,
    }
