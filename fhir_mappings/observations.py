"""Observations -> lab Measurements and BloodPressure readings; eGFR computed from creatinine."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
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
from fhir_mappings.selection import Result, first_copy, pick
from fhir_mappings.vocabulary import DataCategory, ObservationKind

# Observation statuses that carry no usable result.
_UNUSABLE_OBSERVATION = frozenset({"entered-in-error", "cancelled", "registered"})
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
    for spec in observation_categories():
        for resource in chart.get(spec.category, ()):
            if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
                continue
            match = mapper.terminology.observation_match(codings(resource.get("code")))
            if match is None:
                continue
            kind, code = match
            if not first_copy(seen, resource):
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
    """One lab result of ``kind`` (LOINC ``code``) in canonical units, or None."""
    if as_code(resource.get("status")) in _UNUSABLE_OBSERVATION:
        return None
    amount = quantity(resource.get("valueQuantity"))
    if amount is None:
        mapper.skip(resource, f"{kind} result has no numeric valueQuantity")
        return None
    value, unit, comparator = amount
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
    return Measurement(
        value=value,
        unit=unit,
        when=observation_time(resource),
        source=reference_of(resource),
        code=code,
        method=method,
        reference_high=_reference_high(resource),
    )


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


def computed_egfr(
    mapper: Mapper,
    measured: Sequence[Result],
    creatinine: Sequence[Result],
    anchors: Sequence[datetime | None],
    birth_date: date | None,
    sex: str | None,
) -> list[tuple[Measurement, Resource]]:
    """CKD-EPI 2021 eGFR from the creatinine results the rules would read, on days with no
    measured eGFR (the measured one wins the day)."""
    if birth_date is None or sex is None:
        return []
    measured_days = {r.when.date() for r in measured}
    candidates = [r for r in creatinine if r.when.date() not in measured_days]
    return pick(candidates, anchors, _EgfrFromCreatinine(mapper, birth_date, sex).read)


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
        return Measurement(
            value=round(value, 1),
            unit="mL/min/1.73m2",
            when=result.when,
            source=creatinine_mg_dl.source,
            code=result.code,
            computed=True,
            method=f"computed with CKD-EPI 2021 from creatinine {creatinine_mg_dl.value:.2f} "
            f"mg/dL, age {int(age)}, {self.sex}",
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
