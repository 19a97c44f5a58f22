"""Observations -> lab Measurements and BloodPressure readings; eGFR computed from creatinine."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from fhir_mappings.categories import category_of_kind, observation_categories
from fhir_mappings.egfr import ckd_epi_2021
from fhir_mappings.facts import BloodPressure, Measurement
from fhir_mappings.mapper import Mapper
from fhir_mappings.readers import (
    Resource,
    as_code,
    as_list,
    codings,
    parse_datetime,
    quantity,
)
from fhir_mappings.references import reference_of
from fhir_mappings.selection import Result, first_copy, pick, tie_order
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
) -> dict[DataCategory, list[Result]]:
    """Every dated lab result of a kind the rules read, oldest first, keyed by its category.

    Only the code and date are read here: a chart can hold thousands of results and the rules
    read a handful, so values are read (and checked) only for those (``selection.pick``).
    """
    series: dict[DataCategory, list[Result]] = {}
    seen: dict[str, Any] = {}
    observation_match = mapper.terminology.observation_match_concept
    for spec in observation_categories():
        for resource in chart.get(spec.category, ()):
            if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
                continue
            match = observation_match(resource.get("code"))
            if match is None:
                continue
            kind, code = match
            if not first_copy(seen, resource):
                continue
            if as_code(resource.get("status")) in _RETRACTED_OBSERVATION:
                continue
            when = observation_time(resource)
            if when is None:
                mapper.skip(resource, f"{kind} result has no date")
                continue
            if when > now + FUTURE_TOLERANCE:
                mapper.skip(resource, f"{kind} result dated in the future ({when.date()})")
                continue
            series.setdefault(category_of_kind(kind), []).append(Result(when, kind, code, resource))
    for results in series.values():
        results.sort(key=lambda r: r.when)
    return series


def measurement(
    mapper: Mapper, resource: Resource, kind: ObservationKind, code: str
) -> Measurement | None:
    """One lab result of ``kind`` (LOINC ``code``) in canonical units, or None.

    None without a report for a result that has none (status registered/retracted, or a
    ``dataAbsentReason``: the chart has no value, a monitoring gap for the rule that wanted
    one); None with a report (the data-unavailable card) for a value that cannot be read.
    A comparator (``valueQuantity.comparator`` or a ``valueString`` such as ">60") makes the
    Measurement a bound (``comparator``), never a plain number.
    """
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
    if kind == ObservationKind.CREATININE:
        converted = _creatinine_mg_dl(mapper, value, unit)
        if converted is None:
            mapper.skip(resource, f"creatinine unit {unit!r} not recognised (mg/dL or umol/L)")
            return None
        value, unit = converted, "mg/dL"
    if kind == ObservationKind.POTASSIUM and unit.lower() not in _MMOL_L:
        mapper.skip(resource, f"potassium unit {unit!r} not recognised (mmol/L)")
        return None
    method = f"LOINC {code}" + (f", reported as '{comparator}{value:g}'" if comparator else "")
    if kind == ObservationKind.EGFR and code in mapper.terminology.knowledge.race_based_egfr_codes:
        method += ", race-based equation"
    return Measurement(
        value=value,
        unit=unit,
        when=observation_time(resource),
        source=reference_of(resource),
        code=code,
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
    if kind == ObservationKind.EGFR:
        if unit and not unit.lower().replace(" ", "").startswith("ml/min"):
            return None
        return number, unit.strip() or EGFR_UNIT, comparator
    return (number, unit.strip(), comparator) if unit else None


def blood_pressures(
    mapper: Mapper, resource: Resource, kind: ObservationKind
) -> Iterator[BloodPressure]:
    """The readings of a BP panel (its components) or of a lone systolic/diastolic result."""
    if as_code(resource.get("status")) in _UNUSABLE_OBSERVATION:
        return
    when, source = observation_time(resource), reference_of(resource)
    if kind == ObservationKind.BP_PANEL:
        parts: dict[str, float] = {}
        for component in as_list(resource.get("component")):
            if not isinstance(component, dict):
                continue
            part = mapper.terminology.observation_kind(codings(component.get("code")))
            amount = quantity(component.get("valueQuantity"))
            if part in ("systolic", "diastolic") and amount:
                parts[part] = amount[0]
        if parts:
            yield BloodPressure(parts.get("systolic"), parts.get("diastolic"), when, source)
        return
    amount = quantity(resource.get("valueQuantity"))
    if amount is None:
        mapper.skip(resource, f"{kind} blood pressure has no numeric valueQuantity")
    elif kind == ObservationKind.SYSTOLIC:
        yield BloodPressure(amount[0], None, when, source)
    else:
        yield BloodPressure(None, amount[0], when, source)


@dataclass(frozen=True)
class ResultReader:
    """Reads a picked result in full, for ``selection.pick`` (None: unusable, reported)."""

    mapper: Mapper

    def measurement(self, result: Result) -> Measurement | None:
        """The result as a Measurement."""
        return measurement(self.mapper, result.resource, result.kind, result.code)

    def systolic(self, result: Result) -> BloodPressure | None:
        """The first reading of the result that has a systolic value."""
        return self._reading(result, "systolic")

    def diastolic(self, result: Result) -> BloodPressure | None:
        """The first reading of the result that has a diastolic value."""
        return self._reading(result, "diastolic")

    def _reading(self, result: Result, part: str) -> BloodPressure | None:
        for bp in blood_pressures(self.mapper, result.resource, result.kind):
            if getattr(bp, part) is not None:
                return bp
        return None


def egfr_series(
    mapper: Mapper,
    measured: Sequence[Result],
    creatinine: Sequence[Result],
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
    never hides a usable one of the same day or an older day.
    """
    race_based = mapper.terminology.knowledge.race_based_egfr_codes
    reader = ResultReader(mapper)
    from_creatinine = (
        _EgfrFromCreatinine(mapper, birth_date, sex).read
        if compute and birth_date is not None and sex is not None
        else None
    )
    by_day: dict[date, list[Result]] = {}
    for result in sorted([*measured, *creatinine], key=lambda r: r.when):
        by_day.setdefault(result.when.date(), []).append(result)
    days = sorted(by_day)
    best: dict[date, tuple[Measurement, Resource] | None] = {}

    def day_result(day: date) -> tuple[Measurement, Resource] | None:
        results = by_day[day]
        egfrs = [r for r in results if r.kind == ObservationKind.EGFR]
        race_free = [r for r in egfrs if r.code not in race_based]
        creatinines = [r for r in results if r.kind == ObservationKind.CREATININE]
        steps: list[tuple[list[Result], Callable[[Result], Measurement | None] | None]] = [
            (race_free, reader.measurement),
            (creatinines, from_creatinine),
            ([r for r in egfrs if r.code in race_based], reader.measurement),
        ]
        for group, read in steps:
            if group and read is not None:
                chosen = pick(group, (None,), read, _as_egfr)
                if chosen:
                    return chosen[0]
        return None

    chosen: dict[int, tuple[Measurement, Resource]] = {}
    for anchor in anchors:
        for day in reversed(days):
            if anchor is not None and day > anchor.date():
                continue
            if day not in best:
                best[day] = day_result(day)
            item = best[day]
            if item is not None:
                chosen[id(item[1])] = item
                break
    return list(chosen.values())


def _as_egfr(kind: ObservationKind, item: Measurement) -> tuple[object, ...]:
    """Tie order of eGFR results, computed ones included (their results are creatinine)."""
    return tie_order(ObservationKind.EGFR, item)


@dataclass(frozen=True)
class _EgfrFromCreatinine:
    """Computes eGFR from one creatinine result for a patient of known age and sex."""

    mapper: Mapper
    birth_date: date
    sex: str

    def read(self, result: Result) -> Measurement | None:
        """The computed eGFR, or None (too young, or no usable creatinine)."""
        k = self.mapper.terminology.knowledge.ckd_epi
        creatinine_mg_dl = measurement(self.mapper, result.resource, result.kind, result.code)
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
