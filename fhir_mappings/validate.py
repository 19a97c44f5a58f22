"""The R4B validation gate: only the resources a rule reads are validated, once, after picking.

A resource that fails validation is skipped and reported on the data-unavailable card; it never
fails the request. The warm-up samples build pydantic's validators at start-up.

The gate is on the hot path (about 1 M instructions per whole resource), so it validates a
trimmed copy: the top-level elements the mappings read (``READ_ELEMENTS``) and those R4B
requires, never narrative, meta or extensions no rule reads. Verdicts of its complex elements
are kept per worker by their content in their position (``VerdictCache``, bounded in bytes): an
element seen valid before (a LOINC code, a dosage) is not validated again; a changed one is.

A resource is first checked element by element (``ElementGate``): each top-level element
with the R4B model's own validator for that field (fhir.resources types), and the checks the
model makes across its fields (required elements, one element per choice, no nulls in lists of
complex elements, no unknown elements) from the model's own metadata. Instantiating the whole
model costs about ten times as much, so it runs only when that check does not pass, to give
the verdict word for word (tests/test_validate_gate.py checks the two agree).
"""

from __future__ import annotations

import importlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

import orjson
from pydantic import TypeAdapter, ValidationError

from fhir_mappings.codes import UCUM
from fhir_mappings.readers import Resource


@cache
def _model(resource_type: str) -> Any:
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    return getattr(module, resource_type)


# One resource of each validated type using the nested elements the rules read: validating them
# once at start-up builds pydantic's lazily compiled validators (~100 ms for the first
# MedicationRequest), so the first hook call does not pay for it.
_WARM_UP: tuple[Resource, ...] = (
    {
        "resourceType": "Patient",
        "id": "w",
        "gender": "female",
        "birthDate": "1980-01-01",
        "name": [{"family": "w", "given": ["w"]}],
        "identifier": [{"system": "urn:w", "value": "w"}],
        "telecom": [{"system": "phone", "value": "1"}],
        "address": [{"city": "w"}],
        "extension": [{"url": "urn:w", "valueCode": "F"}],
    },
    {
        "resourceType": "Observation",
        "id": "w",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "BP"},
        "subject": {"reference": "Patient/w"},
        "effectiveDateTime": "2026-01-01T00:00:00Z",
        "issued": "2026-01-01T00:00:00Z",
        "valueQuantity": {
            "value": 1,
            "unit": "mg/dL",
            "system": UCUM,
            "code": "mg/dL",
            "comparator": ">",
        },
        "referenceRange": [{"low": {"value": 1}, "high": {"value": 2}}],
        "component": [{"code": {"text": "c"}, "valueQuantity": {"value": 1}}],
    },
    {
        "resourceType": "MedicationRequest",
        "id": "w",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/w"},
        "authoredOn": "2026-01-01",
        "contained": [
            {
                "resourceType": "Medication",
                "id": "m",
                "code": {"text": "m"},
                "ingredient": [{"itemCodeableConcept": {"text": "i"}}],
            }
        ],
        "medicationReference": {"reference": "#m", "display": "m"},
        "priorPrescription": {"reference": "MedicationRequest/p"},
        "dosageInstruction": [
            {
                "text": "t",
                "sequence": 1,
                "route": {"text": "oral"},
                "timing": {
                    "repeat": {"frequency": 2, "period": 1, "periodUnit": "d", "when": ["MORN"]},
                    "code": {"coding": [{"code": "BID"}]},
                },
                "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "mg"}}],
            }
        ],
        "dispenseRequest": {
            "quantity": {"value": 1},
            "numberOfRepeatsAllowed": 1,
            "expectedSupplyDuration": {"value": 30, "unit": "d"},
            "validityPeriod": {"start": "2026-01-01"},
        },
    },
    {"resourceType": "Medication", "id": "w", "code": {"text": "m"}},
    {
        "resourceType": "MedicationStatement",
        "id": "w",
        "status": "active",
        "subject": {"reference": "Patient/w"},
        "medicationCodeableConcept": {"text": "m"},
        "effectivePeriod": {"start": "2026-01-01", "end": "2026-02-01"},
        "dateAsserted": "2026-01-01",
        "dosage": [{"text": "t"}],
    },
    {
        "resourceType": "MedicationDispense",
        "id": "w",
        "status": "completed",
        "subject": {"reference": "Patient/w"},
        "medicationCodeableConcept": {"text": "m"},
        "whenHandedOver": "2026-01-01T00:00:00Z",
        "daysSupply": {"value": 30, "unit": "day"},
        "dosageInstruction": [{"text": "t"}],
    },
    {
        "resourceType": "Condition",
        "id": "w",
        "subject": {"reference": "Patient/w"},
        "code": {"text": "c"},
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "verificationStatus": {"coding": [{"code": "confirmed"}]},
    },
    {
        "resourceType": "Immunization",
        "id": "w",
        "status": "completed",
        "vaccineCode": {"text": "v"},
        "patient": {"reference": "Patient/w"},
        "occurrenceDateTime": "2026-01-01",
    },
    {
        "resourceType": "AllergyIntolerance",
        "id": "w",
        "patient": {"reference": "Patient/w"},
        "code": {"text": "a"},
        "criticality": "high",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "reaction": [
            {"substance": {"text": "s"}, "manifestation": [{"text": "m"}], "severity": "severe"}
        ],
    },
)


def warm_up() -> None:
    """Build the R4B validators at start-up so the first hook call does not pay for it, and
    check every stand-in on the samples (a stand-in the model refuses is not used)."""
    for resource_type in READ_ELEMENTS:  # their field validators, built once (~25 ms)
        _element_gate(resource_type)
    for resource in _WARM_UP:
        problem = _validate(str(resource["resourceType"]), resource)
        if problem:  # a broken sample would mean the models changed under us
            raise RuntimeError(f"FHIR model warm-up failed: {problem}")
        stand_ins = _stand_ins(str(resource["resourceType"])) or {}
        for key, stand_in in list(stand_ins.items()):
            if stand_in is _LEAVE_OUT:
                continue
            for name in [key] if key in resource else []:
                if _validate(str(resource["resourceType"]), {**resource, name: stand_in}):
                    del stand_ins[key]


_COMMON = ("resourceType", "id")
_MEDICATION = ("medicationCodeableConcept", "medicationReference", "contained", "status", "subject")
# Per resource type, the top-level elements the mappings read (fhir_mappings/*.py) plus the ones
# R4B requires (so a trimmed copy of a valid resource is valid). A type not listed is validated
# whole.
READ_ELEMENTS: dict[str, frozenset[str]] = {
    name: frozenset((*_COMMON, *elements))
    for name, elements in {
        "Patient": ("gender", "birthDate"),
        "Observation": (
            "status",
            "code",
            "component",
            "dataAbsentReason",
            "effectiveDateTime",
            "effectiveInstant",
            "effectivePeriod",
            "issued",
            "referenceRange",
            "valueQuantity",
            "valueString",
            "valueCodeableConcept",
        ),
        "MedicationRequest": (
            *_MEDICATION,
            "intent",
            "authoredOn",
            "dispenseRequest",
            "dosageInstruction",
            "priorPrescription",
        ),
        "MedicationStatement": (
            *_MEDICATION,
            "effectiveDateTime",
            "effectivePeriod",
            "dateAsserted",
            "dosage",
        ),
        "MedicationDispense": (
            *_MEDICATION,
            "whenHandedOver",
            "whenPrepared",
            "daysSupply",
            "dosageInstruction",
        ),
        "Medication": ("code", "ingredient", "form"),
        "Condition": (
            "subject",
            "code",
            "clinicalStatus",
            "verificationStatus",
            "stage",
        ),
        "Immunization": (
            "status",
            "vaccineCode",
            "patient",
            "occurrenceDateTime",
            "occurrenceString",
            "recorded",
        ),
        "AllergyIntolerance": (
            "patient",
            "code",
            "clinicalStatus",
            "verificationStatus",
            "criticality",
            "reaction",
            "type",
        ),
    }.items()
}
VERDICT_CACHE_BYTES = 4 * 1024 * 1024
_ENTRY_OVERHEAD = 200  # bytes of an OrderedDict slot and node and a bytes header
_MAX_KEY_BYTES = 16 * 1024  # a larger element is validated every time rather than flush the cache


class VerdictCache:
    """The elements known valid, least recently used first out, bounded in bytes.

    Per worker process (threads share it under a lock). The key is an element's JSON with its
    resource type and name (``_element_key``), so only an element identical in
    content and position is answered from it. Only valid elements are kept: a broken one is
    validated (and reported) every time.
    """

    def __init__(self, max_bytes: int = VERDICT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._entries: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def known(self, key: bytes) -> bool:
        """Whether ``key`` is known valid (a hit counts as a use)."""
        with self._lock:
            if key not in self._entries:
                return False
            self._entries.move_to_end(key)
            return True

    def add(self, key: bytes) -> None:
        """Remember ``key`` as valid, forgetting the least recently used beyond the budget."""
        with self._lock:
            if key in self._entries:
                return
            # A right-sized copy: orjson's output keeps the buffer it grew into (4 KiB for a
            # 60-byte element), which would make the budget count a fraction of the memory.
            self._entries[bytes(memoryview(key))] = None
            self.used += _ENTRY_OVERHEAD + len(key)
            while self.used > self.max_bytes and self._entries:
                old_key, _ = self._entries.popitem(last=False)
                self.used -= _ENTRY_OVERHEAD + len(old_key)

    def __len__(self) -> int:
        return len(self._entries)


VERDICTS = VerdictCache()


def trimmed(resource: Resource) -> Resource:
    """The elements of ``resource`` a rule reads (all of it for a type not listed)."""
    elements = READ_ELEMENTS.get(str(resource.get("resourceType")))
    if elements is None:
        return resource
    return {key: value for key, value in resource.items() if key in elements}


def validation_problem(resource: Resource) -> str | None:
    """Validate the read elements of one picked resource against the R4B model; return a
    short reason or None.

    Complex elements already known valid in this position (``VERDICTS``, by resource type,
    element name and content) are not validated again: an optional one is left
    out of the copy, a required or choice one is replaced by a minimal valid stand-in of the
    same name (``_stand_ins``), so presence and choice checks see what they saw. Only a copy
    that validates marks its elements valid, so a failing resource gives the same verdict as
    a whole validation: the elements left out were valid and add no problem.
    """
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type.isalpha():
        return "resource has no valid resourceType"
    copy = trimmed(resource)
    gate = _element_gate(resource_type)
    if gate is not None and gate.passes(resource_type, copy):
        return None
    stand_ins = _stand_ins(resource_type)
    if stand_ins is None:  # an unknown type: the model look-up reports it
        return _validate(resource_type, copy)
    probe: Resource = {}
    fresh: list[bytes] = []
    for key, value in copy.items():
        if key in stand_ins and isinstance(value, dict | list) and value:
            element_key = _element_key(resource_type, key, value)
            if element_key is None:
                probe[key] = value
                continue
            if VERDICTS.known(element_key):
                stand_in = stand_ins[key]
                if stand_in is not _LEAVE_OUT:
                    probe[key] = stand_in
                continue
            fresh.append(element_key)
        probe[key] = value
    verdict = _validate(resource_type, probe)
    if verdict is None:
        for element_key in fresh:
            VERDICTS.add(element_key)
    return verdict


def _element_key(resource_type: str, key: str, value: Any) -> bytes | None:
    """The verdict cache key of one complex element in its position: its JSON (the bytes
    themselves, not a hash of them, so two elements can never share a key; keys in the order
    sent: the same element in another order is validated once more, never taken for another);
    None when it has none (an integer beyond 64 bits, or too long to keep)."""
    try:
        serialised = orjson.dumps([resource_type, key, value])
    except (TypeError, orjson.JSONEncodeError):
        return None
    return serialised if len(serialised) <= _MAX_KEY_BYTES else None


_INVALID = (ValidationError, ValueError, TypeError, RecursionError)


@dataclass(frozen=True)
class ElementGate:
    """One R4B resource model taken apart: a validator per top-level element (by JSON name),
    and what the model checks across elements (``FHIRAbstractModel``'s model validators).

    ``passes`` answers True only when the model would accept the copy; anything it cannot
    decide (``_x`` primitive extensions, an unknown element, a null in a list of complex
    elements, an invalid value) answers False, and the caller validates the whole model.
    """

    validators: dict[str, Any]  # JSON name -> its TypeAdapter's core validator
    complex: frozenset[str]  # elements of a complex type (their verdicts are cached)
    complex_lists: frozenset[str]  # lists of a complex type: a null item is refused
    required: frozenset[str]  # present and not null (pydantic-required, element_required)
    choices: tuple[tuple[frozenset[str], bool], ...]  # (the choice's elements, required)

    def passes(self, resource_type: str, copy: Resource) -> bool:
        fresh: list[bytes] = []
        present: set[str] = set()
        for key, value in copy.items():
            if key == "resourceType" or value is None:
                continue  # the type chose the model; a null is "absent" (required, below)
            validator = self.validators.get(key)
            if validator is None:
                return False
            present.add(key)
            element_key = None
            if key in self.complex and isinstance(value, dict | list) and value:
                if key in self.complex_lists and isinstance(value, list) and None in value:
                    return False
                element_key = _element_key(resource_type, key, value)
                if element_key is not None and VERDICTS.known(element_key):
                    continue
            try:
                validator.validate_python(value)
            except _INVALID:
                return False
            if element_key is not None:
                fresh.append(element_key)
        if not self.required <= present:
            return False
        for names, required in self.choices:
            chosen = len(names & present)
            if chosen > 1 or (required and chosen == 0):
                return False
        for element_key in fresh:
            VERDICTS.add(element_key)
        return True


@cache
def _element_gate(resource_type: str) -> ElementGate | None:
    """The element-by-element check of ``resource_type``'s R4B model, with a validator for each
    element of its ``READ_ELEMENTS`` (None: a type validated whole, or unknown)."""
    elements = READ_ELEMENTS.get(resource_type)
    if elements is None:
        return None
    model = _model(resource_type)
    instance = model.model_construct()
    by_name = {name: field.alias or name for name, field in model.model_fields.items()}
    validators: dict[str, Any] = {}
    complex_names, complex_lists, required = set(), set(), []
    for name, field in model.model_fields.items():
        alias = by_name[name]
        if field.is_required():  # one outside READ_ELEMENTS fails the check: the model says why
            required.append(alias)
        if alias not in elements:
            continue  # never in a trimmed copy (``_x`` extensions, comments, unread elements)
        annotation = field.annotation
        # The adapter's core validator itself: its Python wrapper costs more than a Code check.
        validators[alias] = TypeAdapter(
            Annotated[annotation, *field.metadata] if field.metadata else annotation
        ).validator
        text = str(annotation)
        if _COMPLEX_TYPE.search(text) or "ResourceType" in text:
            complex_names.add(alias)
            if "List" in text:
                complex_lists.add(alias)
    required += [by_name[name] for name, _ in instance.get_required_fields()]
    choices = tuple(
        (frozenset(by_name.get(n, n) for n in names), _choice_required(model, names))
        for names in instance.get_one_of_many_fields().values()
    )
    return ElementGate(
        validators, frozenset(complex_names), frozenset(complex_lists), frozenset(required), choices
    )


def _choice_required(model: Any, names: list[str]) -> bool:
    extra = model.model_fields[names[0]].json_schema_extra
    return isinstance(extra, dict) and extra.get("one_of_many_required") is True


_LEAVE_OUT: Any = object()
_COMPLEX_TYPE = re.compile(r"abc\.(\w+Type)\b")
# Minimal valid values of the element types a required or choice element can have.
_MINIMAL = {
    "CodeableConceptType": {"text": "x"},
    "QuantityType": {"value": 1},
    "PeriodType": {"start": "2000-01-01"},
}


@cache
def _stand_ins(resource_type: str) -> dict[str, Any] | None:
    """Per complex top-level element of the model (by JSON name): what stands in for it once
    known valid: ``_LEAVE_OUT`` for an optional element, a minimal value for a required or
    choice element, none (always validated) when no minimal value is known. ``contained``
    and ``_x`` primitive extensions are always validated."""
    try:
        model = _model(resource_type)
    except (ImportError, AttributeError):
        return None
    stand_ins: dict[str, Any] = {}
    for field in model.model_fields.values():
        name = field.alias or ""
        if not name or name.startswith("_") or name == "contained":
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        annotation = str(field.annotation)
        complex_type = _COMPLEX_TYPE.search(annotation)
        if complex_type is None:
            continue
        type_name = complex_type[1]
        optional = "None" in annotation or annotation.startswith("typing.Optional[")
        required = not optional or extra.get("one_of_many") or extra.get("element_required")
        if not required:
            stand_ins[name] = _LEAVE_OUT
        elif "List" in annotation:
            continue
        elif type_name == "ReferenceType":
            targets = extra.get("enum_reference_types") or []
            target = targets[0] if isinstance(targets, list) and targets else "Resource"
            stand_ins[name] = {"reference": f"{target}/x"}
        elif type_name in _MINIMAL:
            stand_ins[name] = _MINIMAL[type_name]
    return stand_ins


def whole_resource_problem(resource: Resource) -> str | None:
    """Validate every element of ``resource`` (no trimming, no verdict reuse): the R4 check
    of ``voclosporin-cds validate``, stricter than the hook path's gate."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type.isalpha():
        return "resource has no valid resourceType"
    return _validate(resource_type, resource)


def _validate(resource_type: str, resource: Resource) -> str | None:
    try:
        model = _model(resource_type)
    except (ImportError, AttributeError):
        return f"unknown FHIR resource type {resource_type!r}"
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return (
            f"invalid FHIR R4 {resource_type} ({exc.error_count()} problem(s); first at "
            f"{where or 'root'}: {first.get('msg', 'invalid')})"
        )
    except (ValueError, TypeError) as exc:
        return f"invalid FHIR R4 {resource_type}: {exc}"
    except RecursionError:  # extensions nested ~120 deep exhaust the model validator's stack
        return f"invalid FHIR R4 {resource_type}: nested too deeply to validate"
    return None
