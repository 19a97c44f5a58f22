"""Small, defensive readers over raw FHIR JSON (unchecked input): concepts, dates, quantities."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Any, TypeGuard

from fhir_mappings.codes import UCUM, Coding

Resource = dict[str, Any]


def codings(concept: Any) -> list[Coding]:
    """Codings of a CodeableConcept, tolerating junk."""
    if not isinstance(concept, dict):
        return []
    result = []
    listed = concept.get("coding")  # as_list, written out: every concept read goes here
    for c in listed if isinstance(listed, list) else ():
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            result.append(
                Coding(str(c.get("system") or ""), c["code"], str(c.get("display") or ""))
            )
    return result


def concept_texts(concept: Any) -> list[str]:
    """The text and the coding displays of a CodeableConcept, text first."""
    if not isinstance(concept, dict):
        return []
    texts = [concept["text"]] if isinstance(concept.get("text"), str) else []
    listed = concept.get("coding")  # as_list, written out: every concept read goes here
    for c in listed if isinstance(listed, list) else ():  # ``codings``' displays, no Codings
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            display = str(c.get("display") or "")
            if display:
                texts.append(display)
    return texts


def codings_and_texts(concept: Any) -> tuple[list[Coding], list[str]]:
    """``codings`` and ``concept_texts`` of a CodeableConcept, read at once (every order of a
    chart is read so)."""
    if not isinstance(concept, dict):
        return [], []
    result = []
    texts = [concept["text"]] if isinstance(concept.get("text"), str) else []
    listed = concept.get("coding")  # as_list, written out: every concept read goes here
    for c in listed if isinstance(listed, list) else ():
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            display = str(c.get("display") or "")
            result.append(Coding(str(c.get("system") or ""), c["code"], display))
            if display:
                texts.append(display)
    return result, texts


def concept_name(concept: Any) -> str:
    """The first name a CodeableConcept gives, or "(unnamed)"."""
    texts = concept_texts(concept)
    return texts[0] if texts else "(unnamed)"


def status_code(concept: Any) -> str | None:
    """The code of a status CodeableConcept (clinicalStatus, verificationStatus)."""
    if not isinstance(concept, dict):
        return None
    listed = concept.get("coding")  # as_list, written out: every concept read goes here
    for c in listed if isinstance(listed, list) else ():  # the first of ``codings``
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            return str(c["code"])
    return None


def parse_datetime(value: Any) -> datetime | None:
    """FHIR date/dateTime/instant (partial dates allowed) -> aware UTC datetime."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    try:
        size = len(text)
        if size == 4:
            return datetime(int(text), 1, 1, tzinfo=UTC)
        if size == 7:
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        parsed = _from_iso(text.replace("Z", "+00:00"))
        zone = parsed.tzinfo
        if zone is UTC:  # the usual "...Z" / "+00:00": already what astimezone would give
            return parsed
        return parsed.replace(tzinfo=UTC) if zone is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 shifted past the range
        return None


# Bound once: this runs for every dated result of a long chart (issue 14).
_from_iso = datetime.fromisoformat


def parse_date(value: Any) -> date | None:
    """A FHIR date (or dateTime) as a calendar date."""
    parsed = parse_datetime(value)
    return parsed.date() if parsed else None


def is_resource_of(value: Any, resource_type: str) -> TypeGuard[Resource]:
    """``value`` is a JSON object with resourceType ``resource_type``."""
    return isinstance(value, dict) and value.get("resourceType") == resource_type


def as_object(value: Any) -> dict[str, Any]:
    """A JSON object field, or {} when it is missing or of the wrong type."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """A JSON array field, or [] when it is missing or of the wrong type (raw JSON is unchecked)."""
    return value if isinstance(value, list) else []


def as_code(value: Any) -> str | None:
    """A FHIR code field, or None when it is missing or not a string (lists are unhashable)."""
    return value if isinstance(value, str) else None


def as_number(value: Any) -> float | None:
    """A JSON number as a finite float; huge integers, NaN and Infinity are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range (json.loads makes those)
        return None
    return number if math.isfinite(number) else None


def quantity(value: Any) -> tuple[float, str, str | None] | None:
    """(value, unit, comparator) of a Quantity, or None."""
    if not isinstance(value, dict):
        return None
    number = value.get("value")
    # ``as_number`` written out for the usual finite float or int: every result read comes here.
    if type(number) is float and _isfinite(number):
        pass
    elif type(number) is int and -_EXACT_INT < number < _EXACT_INT:
        number = float(number)
    else:
        number = as_number(number)
        if number is None:
            return None
    code = value.get("code")
    unit = (code if value.get("system") == UCUM else None) or value.get("unit") or code or ""
    comparator = value.get("comparator")
    return number, str(unit), comparator if isinstance(comparator, str) else None


_isfinite = math.isfinite
# Integers this small convert to a float exactly (no overflow, no rounding).
_EXACT_INT = 2**53
