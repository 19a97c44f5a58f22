"""Override analytics read from the audit trail and feedback, shaped as the analytics JSON.

Per rule: how often it was evaluated and fired, and what clinicians did with its cards
(``rule_analytics``); per rule and per day or ISO week, cards fired and override rate
(``timeseries``). Also the window and bucket helpers the analytics views use. Times are UTC;
the window is by when the card was issued.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, case, func, literal, select

from .engine import Database, as_utc
from .schema import feedback, hook_call, issued_card, rule_ids_from_text

Bucket = Literal["day", "week"]
BUCKETS: tuple[Bucket, ...] = ("day", "week")
TOP_REASONS = 5


def start_of_day(value: date) -> datetime:
    """Return midnight UTC at the start of ``value``."""
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def days_ago(days: int, now: datetime) -> datetime:
    """Return midnight UTC starting a window of ``days`` whole days that ends on ``now``'s day."""
    today = now.astimezone(UTC).date()
    return start_of_day(today - timedelta(days=days - 1))


def _rate(part: int, whole: int) -> float | None:
    """Return part/whole, or None when there is nothing to divide (not 0: unknown)."""
    return part / whole if whole else None


def _iso(value: datetime | None) -> str | None:
    """Format an aware datetime as RFC 3339 with a Z, as the JSON API does everywhere."""
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _latest_feedback() -> Any:
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


def _since(column: Any, since: datetime | None) -> ColumnElement[bool]:
    """Filter ``column >= since`` (no filter when since is None)."""
    return literal(True) if since is None else column >= as_utc(since)


def rule_analytics(
    database: Database, since: datetime | None, generated_at: datetime
) -> dict[str, Any]:
    """Per rule, since ``since`` (by the time the card was issued): how often it was
    evaluated and fired, and what clinicians did with its cards.

    A card's outcome is its latest feedback; a card with none counts as no-feedback
    (CDS Hooks sends nothing for ignored cards). ``override_rate`` is overridden /
    (accepted + overridden); ``feedback_rate`` is cards with feedback / cards fired;
    ``quieted`` counts cards shown at info as a repeat of an overridden one.
    """
    latest = _latest_feedback()
    window = _since(issued_card.c.issued_at, since)
    cards_with_outcome = issued_card.outerjoin(latest, latest.c.card_uuid == issued_card.c.uuid)
    with database.transaction(write=False) as conn:
        # Calls per distinct list of evaluated rules (a handful: one per hook and knowledge
        # version), counted out per rule here: the same SQL and figures on both databases.
        evaluated: dict[str, int] = defaultdict(int)
        calls = 0
        for stored, count in conn.execute(
            select(hook_call.c.rules_evaluated, func.count())
            .where(_since(hook_call.c.called_at, since))
            .group_by(hook_call.c.rules_evaluated)
        ):
            calls += int(count)
            for rule_id in set(rule_ids_from_text(stored)):
                evaluated[rule_id] += int(count)
        fired_rows = (
            conn.execute(
                select(
                    issued_card.c.rule_id,
                    func.count().label("fired"),
                    func.count(issued_card.c.call_id.distinct()).label("fired_calls"),
                    func.sum(case((latest.c.outcome == "accepted", 1), else_=0)).label("accepted"),
                    func.sum(case((latest.c.outcome == "overridden", 1), else_=0)).label(
                        "overridden"
                    ),
                    func.sum(case((issued_card.c.quieted, 1), else_=0)).label("quieted"),
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
        quieted = int(found["quieted"] or 0) if found else 0
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
                "quieted": quieted,
            }
        )
    rules.sort(key=lambda rule: (-rule["fired"], rule["rule_id"]))
    totals = {
        key: sum(rule[key] for rule in rules)
        for key in ("fired", "accepted", "overridden", "no_feedback", "quieted")
    }
    return {
        "since": _iso(since),
        "generated_at": _iso(generated_at),
        "calls": calls,
        "totals": {
            **totals,
            "override_rate": _rate(totals["overridden"], totals["accepted"] + totals["overridden"]),
        },
        "rules": rules,
    }


def _bucket_start(dialect: str, bucket: Bucket) -> ColumnElement[str]:
    """SQL for the first day (YYYY-MM-DD, UTC) of the day or ISO week a card fired in."""
    column = issued_card.c.issued_at
    if dialect == "postgresql":
        return func.to_char(func.date_trunc(bucket, func.timezone("UTC", column)), "YYYY-MM-DD")
    if bucket == "week":
        # SQLite: move to the coming Sunday (or stay), then back 6 days: that week's Monday.
        return func.strftime("%Y-%m-%d", column, "weekday 0", "-6 days")
    return func.strftime("%Y-%m-%d", column)


def timeseries(database: Database, since: datetime | None, bucket: Bucket) -> dict[str, Any]:
    """Per rule and per day (or ISO week) the cards fired: fired, accepted, overridden.

    Only buckets with cards are listed; ``first_issued_at`` lets a chart start its axis.
    """
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}, got {bucket!r}")
    latest = _latest_feedback()
    start = _bucket_start(database.dialect, bucket).label("start")
    with database.transaction(write=False) as conn:
        rows = (
            conn.execute(
                select(
                    issued_card.c.rule_id,
                    start,
                    func.count().label("fired"),
                    func.sum(case((latest.c.outcome == "accepted", 1), else_=0)).label("accepted"),
                    func.sum(case((latest.c.outcome == "overridden", 1), else_=0)).label(
                        "overridden"
                    ),
                )
                .select_from(
                    issued_card.outerjoin(latest, latest.c.card_uuid == issued_card.c.uuid)
                )
                .where(_since(issued_card.c.issued_at, since))
                .group_by(issued_card.c.rule_id, start)
                .order_by(issued_card.c.rule_id, start)
            )
            .mappings()
            .all()
        )
        first = conn.scalar(
            select(func.min(issued_card.c.issued_at)).where(_since(issued_card.c.issued_at, since))
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
