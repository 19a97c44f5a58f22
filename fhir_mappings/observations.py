"""Observations -> lab Measurements and BloodPressure readings; eGFR computed from creatinine."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from operator import itemgetter
from typing import Any

from fhir_mappings.categories import category_of_kind, observation_categories
from fhir_mappings.egfr import ckd_epi_2021
from fhir_mappings.facts import BloodPressure, Measurement
from fhir_mappings.mapper import Mapper
from fhir_mappings.readers import (
    Resource,
    as_code,
    as_list,
    parse_datetime,
    quantity,
)
from fhir_mappings.references import reference_of
from fhir_mappings.selection import Result, Row, Series, first_copy, pick, tie_order
from fhir_mappings.vocabulary import DataCategory, ObservationKind

# Observation statuses that carry no result: retracted ones never count, not even as "the latest"
# (FHIR R4 Observation.status; knowledge: "lab values as labs send them"); registered ones have
# no result yet.
_RETRACTED_OBSERVATION = frozenset({"entered-in-error", "cancelled"})
_UNUSABLE_OBSERVATION = _RETRACTED_OBSERVATION | {"registered"}
# A value sent as text: an optional comparator, a number, an optional unit (">60",
# "> 90 mL/min/1.73m2", "<15", "≥ 60").
_VALUE_STRING = re.compile(r"\s*(<=|>=|<|>|≤|≥)?\s*(\d+(?:\.\d+)?)\s*(\S.*?)?\s*")
_COMPARATORS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "≤": "<=", "≥": ">="}
# A computed eGFR falls as creatinine rises (CKD-EPI 2021): a creatinine bound is an eGFR bound
# the other way round.
_INVERTED = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
EGFR_UNIT = "mL/min/1.73m2"
# UCUM/common spellings of the units the rules read.
_MG_DL = frozenset({"mg/dl"})
_UMOL_L = frozenset({"umol/l", "µmol/l", "μmol/l", "micromol/l"})
_MMOL_L = frozenset({"mmol/l", "meq/l", "meq/liter"})
# A result dated beyond this is a data error, not "the latest" result.
FUTURE_TOLERANCE = timedelta(days=1)
# Kinds bound once: each result read tests its kind, and a member looked up on its Enum class
# costs about 65 ns (issue 14).
_EGFR, _CREATININE, _POTASSIUM = (
    ObservationKind.EGFR,
    ObservationKind.CREATININE,
    ObservationKind.POTASSIUM,
)
_BP_PANEL, _SYSTOLIC = ObservationKind.BP_PANEL, ObservationKind.SYSTOLIC


def observation_time(resource: Resource) -> datetime | None:
    """When an Observation was taken: effective[x], else the issued instant."""
    when = parse_datetime(resource.get("effectiveDateTime")) or parse_datetime(
        resource.get("effectiveInstant")
    )
    period = resource.get("effectivePeriod")
    if when is None and isinstance(period, dict):
        when = parse_datetime(period.get("end")) or parse_datetime(period.get("start"))
    return when or parse_datetime(resource.get("issued"))


def observation_series(
    mapper: Mapper, chart: Mapping[DataCategory, Sequence[Resource]], now: datetime
) -> dict[DataCategory, Series]:
    """Every dated lab result of a kind the rules read, oldest first, keyed by its category.

    One pass over the raw resources that reads only the code, status and date: a chart can hold
    thousands of results and the rules read a handful, so values are read (and checked) only for
    those (``selection.pick``), and a result is kept as a plain row until then (issue 14).
    """
    rows_of: dict[DataCategory, list[Row]] = {}
    rows_of_kind: dict[ObservationKind, list[Row]] = {}
    seen: dict[str, Any] = {}
    observation_match = mapper.terminology.observation_match_concept
    latest_allowed = now + FUTURE_TOLERANCE
    for spec in observation_categories():
        for resource in chart.get(spec.category, ()):
            if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
                continue
            match = observation_match(resource.get("code"))
            if match is None:
                continue
            key = resource.get("id")
            if not isinstance(key, str) or not key:
                key = str(key or id(resource))
            if key not in seen:
                seen[key] = resource
            elif not first_copy(seen, resource):
                continue
            status = resource.get("status")
            if isinstance(status, str) and status in _RETRACTED_OBSERVATION:
                continue
            # effectiveDateTime first, as observation_time reads it; the other fields are rare.
            when = parse_datetime(resource.get("effectiveDateTime")) or observation_time(resource)
            kind, code = match
            if when is None:
                mapper.skip(resource, f"{kind} result has no date")
                continue
            if when > latest_allowed:
                mapper.skip(resource, f"{kind} result dated in the future ({when.date()})")
                continue
            rows = rows_of_kind.get(kind)
            if rows is None:  # the kinds of one category share its list
                rows = rows_of_kind[kind] = rows_of.setdefault(_CATEGORY_OF_KIND[kind], [])
            rows.append((when, kind, code, resource))
    series = {}
    for category, rows in rows_of.items():
        rows.sort(key=_time_of)  # stable: results at one instant stay in chart order
        series[category] = Series(rows)
    return series


_CATEGORY_OF_KIND = {kind: category_of_kind(kind) for kind in ObservationKind}
_time_of = itemgetter(0)


def measurement(mapper: Mapper, result: Result) -> Measurement | None:
    """One lab result of its kind (its LOINC code) in canonical units, or None.

    None without a report for a result that has none (status registered/retracted, or a
    ``dataAbsentReason``: the chart has no value, a monitoring gap for the rule that wanted
    one); None with a report (the data-unavailable card) for a value that cannot be read.
    A comparator (``valueQuantity.comparator`` or a ``valueString`` such as ">60") makes the
    Measurement a bound (``comparator``), never a plain number.
    """
    resource, kind, code = result.resource, result.kind, result.code
    if as_code(resource.get("status")) in _UNUSABLE_OBSERVATION:
        return None
    amount = quantity(resource.get("valueQuantity")) or _value_string(resource, kind)
    if amount is None:
        if resource.get("dataAbsentReason") is not None:
            return None
        mapper.skip(resource, f"{kind} result has no readable value")
        return None
    value, unit, comparator = amount
    comparator = _COMPARATORS.get(comparator or "")
    if kind == _CREATININE:
        converted = _creatinine_mg_dl(mapper, value, unit)
        if converted is None:
            mapper.skip(resource, f"creatinine unit {unit!r} not recognised (mg/dL or umol/L)")
            return None
        value, unit = converted, "mg/dL"
    if kind == _POTASSIUM and unit.lower() not in _MMOL_L:
        mapper.skip(resource, f"potassium unit {unit!r} not recognised (mmol/L)")
        return None
    method = f"LOINC {code}" + (f", reported as '{comparator}{value:g}'" if comparator else "")
    if kind == _EGFR and code in mapper.terminology.knowledge.race_based_egfr_codes:
        method += ", race-based equation"
    return Measurement(
        value=value,
        unit=unit,
        when=result.when,  # observation_time, read by the pass that found the result
        source=reference_of(resource),
        code=code,
        computed=False,
        method=method,
        reference_high=_reference_high(resource),
        comparator=comparator,
    )


def _value_string(resource: Resource, kind: ObservationKind) -> tuple[float, str, str] | None:
    """(value, unit, comparator) of a ``valueString`` such as ">60"; None when it is not one.

    An eGFR string may leave out its unit (it has only one); other kinds need theirs.
    """
    text = resource.get("valueString")
    if not isinstance(text, str):
        return None
    match = _VALUE_STRING.fullmatch(text)
    if match is None:
        return None
    comparator, number, unit = match.group(1) or "", float(match.group(2)), match.group(3) or ""
    if kind == _EGFR:
        if unit and not unit.lower().replace(" ", "").startswith("ml/min"):
            return None
        return number, unit.strip() or EGFR_UNIT, comparator
    return (number, unit.strip(), comparator) if unit else None


def blood_pressures(mapper: Mapper, result: Result) -> Iterator[BloodPressure]:
    """The readings of a BP panel (its components) or of a lone systolic/diastolic result."""
    resource, kind = result.resource, result.kind
    if as_code(resource.get("status")) in _UNUSABLE_OBSERVATION:
        return
    when, source = result.when, reference_of(resource)
    if kind == _BP_PANEL:
        parts: dict[str, float] = {}
        for component in as_list(resource.get("component")):
            if not isinstance(component, dict):
                continue
            match = mapper.terminology.observation_match_concept(component.get("code"))
            part = match[0] if match else None
            amount = quantity(component.get("valueQuantity"))
            if part in ("systolic", "diastolic") and amount:
                parts[part] = amount[0]
        if parts:
            yield BloodPressure(parts.get("systolic"), parts.get("diastolic"), when, source)
        return
    amount = quantity(resource.get("valueQuantity"))
    if amount is None:
        mapper.skip(resource, f"{kind} blood pressure has no numeric valueQuantity")
    elif kind == _SYSTOLIC:
        yield BloodPressure(amount[0], None, when, source)
    else:
        yield BloodPressure(None, amount[0], when, source)


@dataclass(frozen=True)
class ResultReader:
    """Reads a picked result in full, for ``selection.pick`` (None: unusable, reported)."""

    mapper: Mapper
    # The readings of each BP panel read so far (by the Result, kept alive here): the systolic
    # and the diastolic pick read the same panels. Lone results are read each time, as they
    # report a missing value on each read.
    _panels: dict[int, tuple[Result, list[BloodPressure]]] = field(
        default_factory=dict, compare=False
    )

    def measurement(self, result: Result) -> Measurement | None:
        """The result as a Measurement."""
        return measurement(self.mapper, result)

    def systolic(self, result: Result) -> BloodPressure | None:
        """The first reading of the result that has a systolic value."""
        return self._reading(result, "systolic")

    def diastolic(self, result: Result) -> BloodPressure | None:
        """The first reading of the result that has a diastolic value."""
        return self._reading(result, "diastolic")

    def _reading(self, result: Result, part: str) -> BloodPressure | None:
        readings: Iterable[BloodPressure]
        if result.kind == _BP_PANEL:
            known = self._panels.get(id(result))
            if known is None:
                known = self._panels[id(result)] = (
                    result,
                    list(blood_pressures(self.mapper, result)),
                )
            readings = known[1]
        else:
            readings = blood_pressures(self.mapper, result)
        for bp in readings:
            if getattr(bp, part) is not None:
                return bp
        return None


def egfr_series(
    mapper: Mapper,
    measured: Series,
    creatinine: Series,
    anchors: Sequence[datetime | None],
    birth_date: date | None,
    sex: str | None,
    *,
    compute: bool = True,
) -> list[tuple[Measurement, Resource]]:
    """The eGFR the rules read overall and on or before each anchor's day, one per day.

    For each day, newest first, the first of these that gives a usable result (knowledge: "lab
    values as labs send them"; NKF-ASN 2021, CKD-EPI 2021 without race):

    1. a race-free measured eGFR (the newest of the day);
    2. an eGFR computed with CKD-EPI 2021 from that day's creatinine (``compute`` False, or age
       or sex unknown: none);
    3. a race-based eGFR (observations.csv ``race_based``), the lower of the results of one
       draw (48642-3 and 48643-1 from the same blood: the lower, whatever the entry order).

    Results at one instant are ordered by ``selection.tie_order``. An unusable result (a
    string that is no number, a ``dataAbsentReason``, entered-in-error) is passed over, so it
    never hides a usable one of the same day or an older day. Only the days some anchor reaches
    are read.
    """
    race_based = mapper.terminology.knowledge.race_based_egfr_codes
    reader = ResultReader(mapper)
    from_creatinine = (
        _EgfrFromCreatinine(mapper, birth_date, sex).read
        if compute and birth_date is not None and sex is not None
        else None
    )
    best: dict[date, tuple[Measurement, Resource] | None] = {}

    def day_result(
        egfr_rows: list[Row], creatinine_rows: list[Row]
    ) -> tuple[Measurement, Resource] | None:
        steps: list[tuple[list[Row], Callable[[Result], Measurement | None] | None]] = [
            ([r for r in egfr_rows if r[2] not in race_based], reader.measurement),
            (creatinine_rows, from_creatinine),
            ([r for r in egfr_rows if r[2] in race_based], reader.measurement),
        ]
        for rows, read in steps:
            if rows and read is not None:
                chosen = pick(Series(rows), (None,), read, _as_egfr)
                if chosen:
                    return chosen[0]
        return None

    chosen: dict[int, tuple[Measurement, Resource]] = {}
    for anchor in anchors:
        for day, egfr_rows, creatinine_rows in _days(measured, creatinine, anchor):
            if day not in best:
                best[day] = day_result(egfr_rows, creatinine_rows)
            item = best[day]
            if item is not None:
                chosen[id(item[1])] = item
                break
    return list(chosen.values())


def _days(
    first: Series, second: Series, anchor: datetime | None
) -> Iterator[tuple[date, list[Row], list[Row]]]:
    """(day, rows of ``first``, rows of ``second``) of each day either has, newest first, from
    ``anchor``'s day."""
    days_first, days_second = first.days(anchor), second.days(anchor)
    a, b = next(days_first, None), next(days_second, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] >= b[0]):  # the newer day of the two
            assert a is not None  # the loop runs while one of them is set
            day = a[0]
        else:
            day = b[0]
        rows_first: list[Row] = []
        rows_second: list[Row] = []
        if a is not None and a[0] == day:
            rows_first = first.rows[a[1] : a[2]]
            a = next(days_first, None)
        if b is not None and b[0] == day:
            rows_second = second.rows[b[1] : b[2]]
            b = next(days_second, None)
        yield day, rows_first, rows_second


def _as_egfr(kind: ObservationKind, item: Measurement) -> tuple[object, ...]:
    """Tie order of eGFR results, computed ones included (their results are creatinine)."""
    return tie_order(_EGFR, item)


@dataclass(frozen=True)
class _EgfrFromCreatinine:
    """Computes eGFR from one creatinine result for a patient of known age and sex."""

    mapper: Mapper
    birth_date: date
    sex: str

    def read(self, result: Result) -> Measurement | None:
        """The computed eGFR, or None (too young, or no usable creatinine)."""
        k = self.mapper.terminology.knowledge.ckd_epi
        creatinine_mg_dl = measurement(self.mapper, result)
        if creatinine_mg_dl is None:
            return None
        age = (result.when.date() - self.birth_date).days / 365.25
        if age < k.minimum_age:
            return None
        if creatinine_mg_dl.value <= 0:
            self.mapper.skip(
                result.resource, "creatinine is not a positive number: no eGFR computed"
            )
            return None
        value = ckd_epi_2021(creatinine_mg_dl.value, age, self.sex == "female", k)
        bound = creatinine_mg_dl.comparator
        return Measurement(
            value=round(value, 1),
            unit=EGFR_UNIT,
            when=result.when,
            source=creatinine_mg_dl.source,
            code=result.code,
            computed=True,
            method=f"computed with CKD-EPI 2021 from creatinine {bound or ''}"
            f"{creatinine_mg_dl.value:.2f} mg/dL, age {int(age)}, {self.sex}",
            reference_high=None,
            comparator=_INVERTED[bound] if bound else None,
        )


def _creatinine_mg_dl(mapper: Mapper, value: float, unit: str) -> float | None:
    lowered = unit.lower()
    if lowered in _MG_DL:
        return value
    if lowered in _UMOL_L:
        return value / mapper.terminology.knowledge.creatinine_umol_per_mg_dl
    return None


def _reference_high(resource: Resource) -> float | None:
    for reference_range in as_list(resource.get("referenceRange")):
        if isinstance(reference_range, dict):
            high = quantity(reference_range.get("high"))
            if high is not None:
                return high[0]
    return None
