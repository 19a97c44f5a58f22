"""The validation gate's shortcuts (issue 14): trimmed copies and element verdicts by digest
give the verdict a whole validation of the read elements gives."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_mappings.validate import (
    READ_ELEMENTS,
    VERDICTS,
    VerdictCache,
    _element_gate,
    _element_key,
    _validate,
    trimmed,
    validation_problem,
)
from tests.support.paths import SYNTHEA_DIR

SCENARIOS = Path(__file__).with_name("scenarios")
SYNTHEA_FILES = sorted(SYNTHEA_DIR.glob("*.json"))


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


BROKEN: dict[str, dict[str, Any]] = {
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
        cache.add(n.to_bytes(16, "big"))
    assert cache.used <= 2_000
    assert 0 < len(cache) < 100
    assert cache.known((99).to_bytes(16, "big"))
    assert not cache.known((0).to_bytes(16, "big"))
    assert len(VERDICTS) <= VERDICTS.max_bytes  # the worker's cache has a budget too


# --- The element-by-element check against the whole model -------------------------------------


def _resources_in(value: Any) -> list[dict[str, Any]]:
    """Every resource of a validated type anywhere in ``value`` (bundles, contexts, contained)."""
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        if value.get("resourceType") in READ_ELEMENTS:
            found.append(value)
        for item in value.values():
            found += _resources_in(item)
    elif isinstance(value, list):
        for item in value:
            found += _resources_in(item)
    return found


def _corpus() -> list[dict[str, Any]]:
    """Real shapes: every scenario file's resources and a sample of each Synthea chart's."""
    resources: list[dict[str, Any]] = []
    for path in sorted(SCENARIOS.glob("*.json")):
        resources += _resources_in(json.loads(path.read_text())["request"])
    for path in SYNTHEA_FILES:
        per_type: dict[str, int] = {}
        for resource in _resources_in(json.loads(path.read_text())):
            kind = resource["resourceType"]
            per_type[kind] = per_type.get(kind, 0) + 1
            if per_type[kind] <= 15:
                resources.append(resource)
    unique = {json.dumps(r, sort_keys=True): r for r in resources}
    return list(unique.values())


CORPUS = _corpus()
_ODD_VALUES: tuple[Any, ...] = (
    None,
    12345,
    True,
    "two words",
    "",
    [],
    [None],
    {},
    {"x": 1},
    [{"x": 1}],
)


def _mutants(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The resource broken one element at a time: odd values, deleted, nested values swapped,
    a second element of a choice."""
    copy_ = trimmed(resource)
    for key in [k for k in copy_ if k != "resourceType"]:
        for odd in _ODD_VALUES:
            yield {**copy_, key: odd}
        yield {k: v for k, v in copy_.items() if k != key}
        value = copy_[key]
        item = value[0] if isinstance(value, list) and value else value
        if isinstance(item, dict) and item:
            inner = next(iter(item))
            broken = {**item, inner: 12345}
            yield {**copy_, key: [broken, *value[1:]] if isinstance(value, list) else broken}
        for names, _ in (_element_gate(copy_["resourceType"]) or _NO_GATE).choices:
            if key in names:
                other = next(n for n in names if n != key)
                yield {**copy_, other: copy_.get(other) or "2026-01-01"}


_NO_GATE: Any = type("NoGate", (), {"choices": ()})()


def test_corpus_is_large_and_varied() -> None:
    kinds = {r["resourceType"] for r in CORPUS}
    assert len(CORPUS) > 300
    assert {"Patient", "Observation", "MedicationRequest", "Condition", "Immunization"} <= kinds


def test_element_check_passes_what_the_model_accepts() -> None:
    """Every valid real resource passes element by element: the fast path is taken (a check
    that never passes would silently cost the whole model every time)."""
    valid = [r for r in CORPUS if _validate(r["resourceType"], trimmed(r)) is None]
    assert len(valid) > 0.9 * len(CORPUS)
    refused = []
    for resource in valid:
        gate = _element_gate(resource["resourceType"])
        assert gate is not None
        if not gate.passes(resource["resourceType"], trimmed(resource)):
            refused.append(resource.get("id"))
    assert refused == []


def test_element_check_never_passes_what_the_model_refuses() -> None:
    """Thousands of broken variants of real resources: whenever the model refuses one, the
    element check does not pass it (it may refuse more: the model then decides)."""
    checked = refused_by_model = 0
    for resource in CORPUS[::3]:
        gate = _element_gate(resource["resourceType"])
        assert gate is not None
        for mutant in _mutants(resource):
            verdict = _validate(mutant["resourceType"], copy.deepcopy(mutant))
            passed = gate.passes(mutant["resourceType"], mutant)
            checked += 1
            if verdict is not None:
                refused_by_model += 1
                assert not passed, (mutant, verdict)
    assert checked > 2_000
    assert refused_by_model > 1_000


def test_gate_verdict_is_the_whole_models_for_every_variant() -> None:
    """The hook path's verdict (element check, else stand-ins, else the model) is the whole
    validation's, word for word, for real resources and their broken variants."""
    for resource in CORPUS[1::7]:
        for candidate in (resource, *_mutants(resource)):
            expected = _validate(candidate["resourceType"], trimmed(copy.deepcopy(candidate)))
            assert validation_problem(candidate) == expected, candidate


def test_an_element_too_large_to_keep_is_validated_every_time() -> None:
    """An element beyond the key limit is not cached (it would flush the cache), and a broken
    copy of it is still refused after a valid one was seen."""
    huge_text = "x" * 20_000
    valid = _observation(code={"text": huge_text})
    assert validation_problem(valid) is None
    assert not VERDICTS.known(b'["Observation","code",{"text":"' + huge_text.encode() + b'"}]')
    assert not VERDICTS.known(_element_key("Observation", "code", {"text": "x" * 100}) or b"")
    assert validation_problem(_observation(code={"text": "x" * 100})) is None
    assert VERDICTS.known(_element_key("Observation", "code", {"text": "x" * 100}) or b"")
    broken = _observation(code={"text": huge_text, "coding": "not-a-list"})
    assert validation_problem(broken) == _validate("Observation", trimmed(broken))
    assert validation_problem(broken) is not None


def test_verdict_cache_memory_is_what_its_budget_counts() -> None:
    """Keys are kept right-sized: a kept 60-byte key costs about that, not the 4 KiB buffer
    orjson wrote it into (the budget would otherwise count a sixtieth of the memory)."""
    import tracemalloc

    cache = VerdictCache()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(1_000):
            key = _element_key("Observation", "code", {"text": f"result {n}"})
            assert key is not None
            cache.add(key)
            del key
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == 1_000
    assert grown < cache.used  # the budget's count (200 bytes a slot + the key) covers it
