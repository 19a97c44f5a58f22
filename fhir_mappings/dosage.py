"""Dosage instructions -> Dosage facts: timing codes and periods, doses in mg or capsules.

What EHRs write is data (``DoseVocabulary``: dose_units.csv, timing_codes.csv,
event_timing.csv): UCUM annotations such as ``{capsule}`` and the CDS Hooks Sandbox's
``{pill}``, spelled-out units, and Timing.code abbreviations (HL7 GTSAbbreviation, HL7 v2 table
0335) sent as a coding or as text only (Epic-style ``{"text": "BID"}``).
"""

from __future__ import annotations

import math
from typing import Any

from fhir_mappings.facts import Dosage, DoseAmount
from fhir_mappings.knowledge import DoseVocabulary, TimingCode
from fhir_mappings.readers import Resource, as_list, as_number, as_object, codings, quantity

# UCUM units of time (Timing.repeat.periodUnit) in days.
_PERIOD_DAYS = {
    "s": 1 / 86400,
    "min": 1 / 1440,
    "h": 1 / 24,
    "d": 1.0,
    "wk": 7.0,
    "mo": 30.0,
    "a": 365.0,
}
# An order rarely lists more administrations a day than this; beyond it one dose stands for all
# (the frequency is still reported).
_MAX_LISTED_PER_DAY = 24


def dosage(
    resource: Resource, vocabulary: DoseVocabulary, capsule_mg: float | None
) -> Dosage | None:
    """Read dose per administration (mg) and administrations per day.

    ``capsule_mg`` converts capsule counts ({capsule}, {pill}, caps ...) to mg; None (a drug
    other than voclosporin, whose capsule strength is not known here) leaves them unread.
    Instructions are read as taken together (conservative for a maximum-dose check).
    """
    instructions = [d for d in as_list(resource.get("dosageInstruction")) if isinstance(d, dict)]
    if not instructions:
        return None
    doses: list[DoseAmount] = []
    per_day_total: float | None = 0.0
    texts = []
    for instruction in instructions:
        if isinstance(instruction.get("text"), str):
            texts.append(instruction["text"])
        per_day, when = frequency(instruction.get("timing"), vocabulary)
        mg = dose_mg(instruction, vocabulary, capsule_mg)
        if per_day is None or per_day_total is None:
            per_day_total = None
        else:
            per_day_total += per_day
        if mg is not None:
            doses.extend(_administrations(mg, per_day, when, vocabulary))
    return Dosage(tuple(doses), per_day_total, "; ".join(texts))


def _administrations(
    mg: float, per_day: float | None, when: tuple[str, ...], vocabulary: DoseVocabulary
) -> list[DoseAmount]:
    """One DoseAmount per administration in a day: a named time each, then untimed ones."""
    timed = [DoseAmount(mg, w, vocabulary.day_parts.get(w.upper())) for w in when]
    if per_day is None or per_day != int(per_day) or per_day > _MAX_LISTED_PER_DAY:
        return timed or [DoseAmount(mg)]
    return timed + [DoseAmount(mg) for _ in range(int(per_day) - len(timed))]


def to_days(duration: tuple[float, str, str | None]) -> float | None:
    """A duration Quantity (UCUM or spelled-out unit) in days, or None for an unknown unit."""
    value, unit, _ = duration
    factor = _PERIOD_DAYS.get(unit.lower().rstrip("s") if unit not in _PERIOD_DAYS else unit)
    named = {"day": 1.0, "week": 7.0, "month": 30.0, "year": 365.0}
    factor = factor or named.get(unit.lower().rstrip("s"))
    return value * factor if factor else None


def frequency(timing: Any, vocabulary: DoseVocabulary) -> tuple[float | None, tuple[str, ...]]:
    """Administrations per day and the named times (MORN, EVE, "08:00:00") of a Timing.

    ``repeat`` (frequency, frequencyMax, period, periodUnit; DSTU2 ``periodUnits``) first;
    ``when`` / ``timeOfDay`` alone count one administration each; else ``code`` (coding or
    text only). ``frequencyMax`` counts when higher: the check is against a maximum.
    """
    if not isinstance(timing, dict):
        return None, ()
    repeat = as_object(timing.get("repeat"))
    named = as_list(repeat.get("when")) + as_list(repeat.get("timeOfDay"))
    when = tuple([w for w in named if isinstance(w, str)]) if named else ()
    count = as_number(repeat.get("frequency"))
    most = as_number(repeat.get("frequencyMax"))
    if count is not None and most is not None:
        count = max(count, most)
    period = as_number(repeat.get("period"))
    unit = repeat.get("periodUnit", repeat.get("periodUnits"))
    if count is not None and period and isinstance(unit, str) and unit in _PERIOD_DAYS:
        days = period * _PERIOD_DAYS[unit]
        per_day = count / days if days > 0 else math.inf
        if not math.isfinite(per_day):
            return None, when
        return max(per_day, float(len(when))), when
    if when:
        return float(len(when)), when
    code = _timing_code(timing.get("code"), vocabulary)
    if code is None:
        return None, ()
    per_day = code.frequency / (code.period * _PERIOD_DAYS[code.period_unit])
    return per_day, ((code.when,) if code.when else ())


def _timing_code(concept: Any, vocabulary: DoseVocabulary) -> TimingCode | None:
    """The TimingCode a Timing.code names by a coding or, Epic-style, by its text alone."""
    candidates = [c.code for c in codings(concept)]
    if isinstance(concept, dict) and isinstance(concept.get("text"), str):
        candidates.append(concept["text"])
    for candidate in candidates:
        code = vocabulary.timing_codes.get(candidate.strip().upper())
        if code is not None:
            return code
    return None


def dose_mg(
    instruction: Resource, vocabulary: DoseVocabulary, capsule_mg: float | None
) -> float | None:
    """The dose of one instruction in mg (capsules converted), or None when it is not stated."""
    # R4 puts the dose under doseAndRate; STU3 (still sent by some clients) on the Dosage.
    places = [d for d in as_list(instruction.get("doseAndRate")) if isinstance(d, dict)]
    for dose_and_rate in [*places, instruction]:
        value = dose_and_rate.get("doseQuantity")
        amount = quantity(value)
        if amount is None or not isinstance(value, dict):
            continue
        for unit in _units(value, amount[1]):
            counts = vocabulary.units.get(unit.strip().lower())
            if counts == "mg":
                return amount[0]
            if counts == "capsule" and capsule_mg is not None:
                return round(amount[0] * capsule_mg, 2)
    return None


def _units(value: dict[str, Any], read: str) -> list[str]:
    """The unit as read (UCUM code first), then the Quantity's other spelling of it."""
    spellings = [read]
    for key in ("code", "unit"):
        if isinstance(value.get(key), str) and value[key] not in spellings:
            spellings.append(value[key])
    return spellings
