"""Dosage instructions -> Dosage facts: timing codes and periods, doses in mg or capsules."""

from __future__ import annotations

import math
from typing import Any

from fhir_mappings.facts import Dosage, DoseAmount
from fhir_mappings.readers import Resource, as_list, as_number, as_object, codings, quantity

_CAPSULE = frozenset({"capsule", "capsules", "cap", "caps", "{capsule}", "{capsules}", "{cap}"})
# HL7 v3 GTSAbbreviation timing codes -> administrations per day.
_TIMING_CODES = {
    "QD": 1.0,
    "BID": 2.0,
    "TID": 3.0,
    "QID": 4.0,
    "Q12H": 2.0,
    "Q8H": 3.0,
    "Q6H": 4.0,
    "Q4H": 6.0,
    "QOD": 0.5,
    "AM": 1.0,
    "PM": 1.0,
    "WK": 1 / 7,
}
_PERIOD_DAYS = {
    "s": 1 / 86400,
    "min": 1 / 1440,
    "h": 1 / 24,
    "d": 1.0,
    "wk": 7.0,
    "mo": 30.0,
    "a": 365.0,
}


def dosage(resource: Resource, capsule_mg: float) -> Dosage | None:
    """Read dose per administration (mg) and administrations per day."""
    instructions = [d for d in as_list(resource.get("dosageInstruction")) if isinstance(d, dict)]
    if not instructions:
        return None
    doses: list[DoseAmount] = []
    per_day_total: float | None = 0.0
    texts = []
    for instruction in instructions:
        if isinstance(instruction.get("text"), str):
            texts.append(instruction["text"])
        per_day, when = frequency(instruction.get("timing"))
        mg = dose_mg(instruction, capsule_mg)
        if per_day is None or per_day_total is None:
            per_day_total = None
        else:
            per_day_total += per_day
        if mg is None:
            continue
        if when:
            doses.extend(DoseAmount(mg, w) for w in when)
        elif per_day is not None and per_day == int(per_day) and per_day <= 6:
            doses.extend(DoseAmount(mg) for _ in range(int(per_day)))
        else:
            doses.append(DoseAmount(mg))
    return Dosage(tuple(doses), per_day_total, "; ".join(texts))


def to_days(duration: tuple[float, str, str | None]) -> float | None:
    """A duration Quantity (UCUM or spelled-out unit) in days, or None for an unknown unit."""
    value, unit, _ = duration
    factor = _PERIOD_DAYS.get(unit.lower().rstrip("s") if unit not in _PERIOD_DAYS else unit)
    named = {"day": 1.0, "week": 7.0, "month": 30.0, "year": 365.0}
    factor = factor or named.get(unit.lower().rstrip("s"))
    return value * factor if factor else None


def frequency(timing: Any) -> tuple[float | None, tuple[str, ...]]:
    """Administrations per day and the named times of day (MORN, EVE...) of a Timing."""
    if not isinstance(timing, dict):
        return None, ()
    repeat = as_object(timing.get("repeat"))
    when = tuple(w for w in as_list(repeat.get("when")) if isinstance(w, str))
    count = as_number(repeat.get("frequency"))
    period = as_number(repeat.get("period"))
    unit = repeat.get("periodUnit")
    if count is not None and period and isinstance(unit, str) and unit in _PERIOD_DAYS:
        days = period * _PERIOD_DAYS[unit]
        per_day = count / days if days > 0 else math.inf
        return (per_day if math.isfinite(per_day) else None), when
    time_of_day = [t for t in as_list(repeat.get("timeOfDay")) if isinstance(t, str)]
    if when or time_of_day:
        return float(len(when) or len(time_of_day)), when
    for coding in codings(timing.get("code")):
        if coding.code.upper() in _TIMING_CODES:
            return _TIMING_CODES[coding.code.upper()], when
    return None, when


def dose_mg(instruction: Resource, capsule_mg: float) -> float | None:
    """The dose of one instruction in mg (capsules converted), or None when it is not stated."""
    # R4 puts the dose under doseAndRate; STU3 (still sent by some clients) on the Dosage.
    places = [d for d in as_list(instruction.get("doseAndRate")) if isinstance(d, dict)]
    for dose_and_rate in [*places, instruction]:
        amount = quantity(dose_and_rate.get("doseQuantity"))
        if amount is None:
            continue
        value, unit, _ = amount
        if unit.lower() == "mg":
            return value
        if unit.lower() in _CAPSULE:
            return round(value * capsule_mg, 2)
    return None
