"""The validation gate's shortcuts (issue 14): trimmed copies and element verdicts by digest
give the verdict a whole validation of the read elements gives."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhir_mappings.validate import (
    VERDICTS,
    VerdictCache,
    _validate,
    trimmed,
    validation_problem,
)


def _observation(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-11-01T09:00:00Z",
        "valueQuantity": {"value": 72, "unit": "mL/min/1.73m2"},
        "referenceRange": [{"low": {"value": 60}}],
    }
    resource.update(changes)
    return resource


BROKEN = {
    "value-not-a-number": {"valueQuantity": {"value": "lots"}},
    "code-a-string": {"code": "98979-8"},
    "two-values": {"valueString": ">60"},
    "range-not-a-list": {"referenceRange": {"low": {"value": 60}}},
    "status-missing": {"status": None},
    "bad-date": {"effectiveDateTime": "yesterday"},
}


@pytest.mark.parametrize("name", list(BROKEN), ids=list(BROKEN))
def test_verdict_after_valid_elements_were_seen_is_the_whole_verdict(name: str) -> None:
    """A broken result whose other elements were seen valid before reports what a whole
    validation of its read elements reports, word for word."""
    validation_problem(_observation())  # its elements are now known valid
    broken = {k: v for k, v in _observation(**BROKEN[name]).items() if v is not None}
    expected = _validate("Observation", trimmed(copy.deepcopy(broken)))
    assert expected is not None
    assert validation_problem(broken) == expected


def test_valid_resource_stays_valid_with_stand_ins() -> None:
    """A second result with new ids and the same code and value validates through stand-ins."""
    assert validation_problem(_observation()) is None
    assert validation_problem(_observation(id="o2", subject={"reference": "Patient/p2"})) is None


def test_element_of_another_type_or_name_is_not_taken_as_valid() -> None:
    """An element is known valid only in the resource type and element it was seen in."""
    validation_problem(_observation())
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
        "clinicalStatus": "active",  # a string, not a CodeableConcept
    }
    assert validation_problem(condition) == _validate("Condition", trimmed(condition))
    assert validation_problem(condition) is not None


def test_verdict_cache_is_bounded_in_bytes() -> None:
    """Past its byte budget the cache forgets the least recently used verdicts first."""
    cache = VerdictCache(max_bytes=2_000)
    for n in range(100):
        cache.put(n.to_bytes(16, "big"), None)
    assert cache.used <= 2_000
    assert 0 < len(cache) < 100
    assert cache.get((99).to_bytes(16, "big")) == (True, None)
    assert cache.get((0).to_bytes(16, "big")) == (False, None)
    assert len(VERDICTS) <= VERDICTS.max_bytes  # the worker's cache has a budget too
