"""fhir_mappings.selection: a category's dated results, read newest first and only as needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fhir_mappings.facts import Measurement
from fhir_mappings.selection import Result, Row, Series, pick
from fhir_mappings.vocabulary import ObservationKind

K = ObservationKind.POTASSIUM


def at(day: int, hour: int = 9) -> datetime:
    return datetime(2026, 10, day, hour, tzinfo=UTC)


def row(when: datetime, value: float | None, id_: str) -> Row:
    """A potassium row whose resource holds the value a test reader returns (None: unusable)."""
    return (when, K, "2823-3", {"resourceType": "Observation", "id": id_, "value": value})


def reader(calls: list[str]):
    def read(result: Result) -> Measurement | None:
        calls.append(result.resource["id"])
        value = result.resource["value"]
        if value is None:
            return None
        source = f"Observation/{result.resource['id']}"
        return Measurement(value, "mmol/L", result.when, source, result.code)

    return read


def test_latest_reads_only_the_newest_result_of_a_long_series():
    """Of 1,000 results only the newest is read when it is usable (the others build nothing)."""
    series = Series([row(at(1) + timedelta(minutes=n), 4.0, f"k{n}") for n in range(1000)])
    calls: list[str] = []
    chosen = pick(series, (None,), reader(calls))
    assert len(calls) == 1
    assert [m.when for m, _ in chosen] == [series.rows[-1][0]]


def test_an_unusable_newest_result_gives_way_to_the_next_older():
    """An unusable newest result is passed over; the next older instant is read."""
    series = Series([row(at(1), 4.2, "old"), row(at(2), 4.5, "mid"), row(at(3), None, "new")])
    calls: list[str] = []
    chosen = pick(series, (None,), reader(calls))
    assert calls == ["new", "mid"]
    assert [r["id"] for _, r in chosen] == ["mid"]


def test_an_anchor_reads_the_newest_result_on_or_before_its_day():
    """An anchor at noon takes a result drawn later that same day, never one of the next day."""
    series = Series([row(at(1), 4.1, "a"), row(at(5, 20), 4.4, "b"), row(at(6, 1), 4.8, "c")])
    chosen = pick(series, (None, at(5, 12)), reader([]))
    assert [r["id"] for _, r in chosen] == ["c", "b"]


def test_results_at_one_instant_are_one_group_in_chart_order():
    """Rows at one instant form one group, listed as the chart listed them; newest group first."""
    series = Series([row(at(1), 4.0, "x"), row(at(2), 4.0, "y"), row(at(2), 5.0, "z")])
    groups = [[r.resource["id"] for r in group] for group in series.groups(None)]
    assert groups == [["y", "z"], ["x"]]
    assert series.result(1) is series.result(1)  # one Result per row: identity keys hold


def test_since_gives_the_times_from_a_day_on():
    """``since`` lists the times of the rows drawn on or after a day, oldest first."""
    series = Series([row(at(1), 4.0, "a"), row(at(3, 0), 4.0, "b"), row(at(4), 4.0, "c")])
    assert series.since(at(3, 23).date()) == [at(3, 0), at(4)]
    assert Series([]).since(at(3).date()) == []
