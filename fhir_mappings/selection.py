"""Only what the rules read: the newest usable result per anchor, each exact copy once.

A chart can hold thousands of results and the rules read a handful, so results are first picked
by code and date, and only the picked ones are read in full (and validated).
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from fhir_mappings.facts import BloodPressure, Measurement
from fhir_mappings.mapper import Mapper
from fhir_mappings.readers import Resource
from fhir_mappings.vocabulary import ObservationKind

Dated = TypeVar("Dated", Measurement, BloodPressure)
_EGFR = ObservationKind.EGFR  # bound once: tie_order runs for every result read


@dataclass(frozen=True)
class Result:
    """An Observation of a kind the rules read, not yet turned into a Measurement."""

    when: datetime
    kind: ObservationKind
    code: str
    resource: Resource = field(compare=False)


# One dated result as the pass over a chart keeps it: (when, kind, LOINC code, resource). A plain
# tuple costs a tenth of a Result; a Result is made only for a row some rule reads (issue 14).
Row = tuple[datetime, ObservationKind, str, Resource]


def _day_of(row: Row) -> date:
    return row[0].date()


class Series:
    """The dated results of one category, oldest first (results at one instant in chart order).

    Results are made only for the rows read: the newest ones, and those on or before an anchor.
    """

    __slots__ = ("_results", "rows")

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self._results: dict[int, Result] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def result(self, index: int) -> Result:
        """The result of row ``index`` (one object per row, so callers may key by identity)."""
        result = self._results.get(index)
        if result is None:
            result = self._results[index] = Result(*self.rows[index])
        return result

    def results(self) -> list[Result]:
        """Every result, oldest first."""
        return [self.result(i) for i in range(len(self.rows))]

    def end(self, anchor: datetime | None) -> int:
        """How many rows lie on or before ``anchor``'s day (every row for None)."""
        if anchor is None:
            return len(self.rows)
        return bisect_right(self.rows, anchor.date(), key=_day_of)

    def since(self, day: date) -> list[datetime]:
        """The times of the rows on or after ``day``, oldest first."""
        start = bisect_left(self.rows, day, key=_day_of)
        return [row[0] for row in self.rows[start:]]

    def groups(self, anchor: datetime | None) -> Iterator[list[Result]]:
        """Results taken at one instant, newest first, from the newest on or before ``anchor``'s
        day (each group in chart order)."""
        rows = self.rows
        stop = self.end(anchor)
        while stop > 0:
            when = rows[stop - 1][0]
            start = stop - 1
            while start > 0 and rows[start - 1][0] == when:
                start -= 1
            yield [self.result(i) for i in range(start, stop)]
            stop = start

    def days(self, anchor: datetime | None) -> Iterator[tuple[date, int, int]]:
        """(day, start, stop) of the rows of each day, newest first, from ``anchor``'s day."""
        rows = self.rows
        stop = self.end(anchor)
        while stop > 0:
            day = rows[stop - 1][0].date()
            start = stop - 1
            while start > 0 and rows[start - 1][0].date() == day:
                start -= 1
            yield day, start, stop
            stop = start


NO_RESULTS = Series([])


def pick(
    series: Series,
    anchors: Sequence[datetime | None],
    read: Callable[[Result], Dated | None],
    order: Callable[[ObservationKind, Dated], Any] | None = None,
) -> list[tuple[Dated, Resource]]:
    """The newest readable result overall and on or before each anchor's day.

    ``read`` turns a result into the item the rules use, or None when it is unusable (reported
    by ``read``); the next older result is then taken. Results taken at one instant (one draw
    sent twice, two methods on one sample) are all read and ``order`` picks one, never the order
    in which the chart listed them; by default ``tie_order``.
    """
    key = order or tie_order
    chosen: dict[int, tuple[Dated, Resource]] = {}
    cache: dict[int, Dated | None] = {}
    for anchor in anchors:
        for group in series.groups(anchor):
            readable = []
            for result in group:
                if id(result) not in cache:
                    cache[id(result)] = read(result)
                item = cache[id(result)]
                if item is not None:
                    readable.append((item, result))
            if len(readable) == 1:  # the usual instant holds one result: nothing to order
                item, result = readable[0]
                chosen[id(result)] = (item, result.resource)
                break
            if readable:
                item, result = min(readable, key=lambda pair: key(pair[1].kind, pair[0]))
                chosen[id(result)] = (item, result.resource)
                break
    return list(chosen.values())


def tie_order(kind: ObservationKind, item: Measurement | BloodPressure) -> tuple[Any, ...]:
    """Which of several results at one instant the rules read: the one that would warn.

    In this order: an exact number before a bound (">60" says less); then the worse value for
    the check that reads it: the lower eGFR (the gates fire below 45, 60 and 30), the higher
    creatinine, potassium or urine protein, the higher systolic then diastolic pressure; then
    the LOINC code and the resource reference, so equal results still come out the same way.
    """
    if isinstance(item, BloodPressure):
        return (-(item.systolic or 0.0), -(item.diastolic or 0.0), item.source)
    value = item.value if kind == _EGFR else -item.value
    return (item.comparator is not None, value, item.code, item.source)


def latest(
    mapper: Mapper,
    series: Sequence[tuple[Dated, Resource]],
    anchors: Sequence[datetime | None] = (None,),
) -> tuple[Dated, ...]:
    """The latest item overall and on or before each anchor's day; their resources are checked.

    Anchors compare by calendar day: an eGFR drawn on the day the course starts is its baseline.
    """
    if len(series) <= 1:  # none or one (a short chart's lab): nothing to order
        for only, resource in series:
            when = only.when
            if when is not None and any(a is None or when.date() <= a.date() for a in anchors):
                return (mapper.checked(resource, only),)
        return ()
    chosen: dict[int, tuple[Dated, Resource]] = {}
    dated = sorted((i for i in series if i[0].when is not None), key=lambda i: by_time(i[0]))
    for anchor in anchors:
        for item in reversed(dated):
            when = item[0].when
            if anchor is None or (when is not None and when.date() <= anchor.date()):
                chosen[id(item)] = item
                break
    # dict, not set: items at one instant keep one order in every process (``build_facts``)
    checked = dict.fromkeys(mapper.checked(r, item) for item, r in chosen.values())
    return tuple(sorted(checked, key=by_time))


def by_time(item: Measurement | BloodPressure) -> datetime:
    """Sort key: the time of a reading, undated ones first."""
    return item.when or datetime.min.replace(tzinfo=UTC)


def unique(resources: Iterable[Resource], resource_type: str) -> Iterator[Resource]:
    """Resources of one type, each exact copy once (prefetch and paging can repeat entries)."""
    seen: dict[str, Any] = {}
    for resource in resources:
        if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
            continue
        if first_copy(seen, resource):
            yield resource


def unique_by_type(
    resources: Iterable[Resource], resource_types: Sequence[str]
) -> dict[str, list[Resource]]:
    """``unique`` for each of ``resource_types`` (a key each, in that order), in one pass."""
    kept: dict[str, list[Resource]] = {t: [] for t in resource_types}
    seen: dict[str, dict[str, Any]] = {t: {} for t in resource_types}
    for resource in resources:
        if not isinstance(resource, dict):
            continue
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str) or resource_type not in kept:
            continue
        key, seen_of_type = resource.get("id"), seen[resource_type]
        if type(key) is str and key and key not in seen_of_type:  # ``first_copy``'s usual case
            seen_of_type[key] = resource
            kept[resource_type].append(resource)
        elif first_copy(seen_of_type, resource):
            kept[resource_type].append(resource)
    return kept


def first_copy(seen: dict[str, Any], resource: Resource) -> bool:
    """False only for an exact repeat; a different resource reusing an id is kept.

    Dropping a same-id resource with other content could hide an interacting drug or a lab
    result. Contents are compared only when an id repeats, so the usual case stays cheap.
    """
    key = resource.get("id")
    if type(key) is not str or not key:  # the usual non-empty string id is its own key
        key = str(key or id(resource))
    earlier = seen.get(key)
    if earlier is None:
        seen[key] = resource
        return True
    if isinstance(earlier, dict):
        earlier = seen[key] = {_canonical(earlier)}
    canonical = _canonical(resource)
    if canonical in earlier:
        return False
    earlier.add(canonical)
    return True


def _canonical(resource: Resource) -> str:
    return json.dumps(resource, sort_keys=True, default=str)
