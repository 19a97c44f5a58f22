"""Share what every check uses: Violation, Field, the contract limits and the walking helpers.

A check walks one object of a document: ``check_fields`` tests its attributes against a table
of ``Field``s, ``each`` and ``one`` descend into nested objects, and ``run`` adds the
document-wide rule that no value may be null or empty unless the spec allows it there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

Severity = Literal["error", "warning"]
Kind = Literal["request", "response", "discovery", "feedback"]
JsonType = Literal["string", "boolean", "integer", "object", "array", "Bundle", "any"]
JsonObject = dict[str, object]

# ---------------------------------------------------------------------------------------------
# Contract limits: the numbers of the wire contract this checker holds documents to.
# ---------------------------------------------------------------------------------------------

# #card-attributes: summary is a "<140-character" string; Inferno fails at length >= 140.
SUMMARY_MAX_LENGTH = 139
# FHIR R4 datatype id: letters, digits, '-' and '.', "with a length limit of 64 characters".
FHIR_ID_MAX_LENGTH = 64
FHIR_ID = re.compile(rf"[A-Za-z0-9\-.]{{1,{FHIR_ID_MAX_LENGTH}}}")
# #userid: the resource types context.userId may name.
USER_REFERENCE_TYPES = ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson")
RELATIVE_REFERENCE = re.compile(r"[A-Z][A-Za-z]+/" + FHIR_ID.pattern)
IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


@dataclass(frozen=True)
class Violation:
    """One broken rule, located by the path of the element that breaks it."""

    path: str
    message: str
    severity: Severity

    def __str__(self) -> str:
        return f"{self.severity}: {self.path or '(document)'}: {self.message}"


@dataclass(frozen=True)
class Field:
    """Declare one attribute of a CDS Hooks object as the spec's tables define it."""

    type: JsonType
    required: bool = False
    choices: tuple[str, ...] = ()
    # Hook context tables only: may the field appear as {{context.<field>}} (#prefetch-tokens)?
    prefetch_token: bool = False


Check = Callable[[JsonObject, str], Iterator[Violation]]
Allowance = Callable[[str, object], bool]

CODING: Mapping[str, Field] = {
    "code": Field("string", required=True),
    "system": Field("string", required=True),
    "display": Field("string"),
}

_TYPE_TESTS: Mapping[JsonType, Callable[[object], bool]] = {
    "string": lambda value: isinstance(value, str),
    "boolean": lambda value: isinstance(value, bool),
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "Bundle": lambda value: isinstance(value, dict) and value.get("resourceType") == "Bundle",
    "any": lambda value: True,
}
_TYPE_NAMES: Mapping[JsonType, str] = {
    "string": "a string",
    "boolean": "a boolean",
    "integer": "an integer",
    "object": "a JSON object",
    "array": "an array",
    "Bundle": "a FHIR Bundle",
    "any": "a value",
}


def error(path: str, message: str) -> Violation:
    """Report a broken SHALL/MUST."""
    return Violation(path, message, "error")


def warning(path: str, message: str) -> Violation:
    """Report a broken SHOULD, a deprecated form, or a feature silently disabled."""
    return Violation(path, message, "warning")


def join(path: str, key: str) -> str:
    """Extend a path by one key, quoting keys that would be ambiguous after a dot."""
    if IDENTIFIER.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def run(doc: object, check: Check, allowed: Allowance) -> list[Violation]:
    """Run the structural checks, then the document-wide null-and-empty rule."""
    if not isinstance(doc, dict):
        return [error("", "must be a JSON object")]
    return [*check(doc, ""), *_null_and_empty(doc, "", allowed)]


def check_fields(
    obj: JsonObject, path: str, fields: Mapping[str, Field], *, closed: bool = True
) -> Iterator[Violation]:
    """Check presence, JSON type and allowed values of each declared field of one object."""
    for name, field in fields.items():
        field_path = join(path, name)
        if name not in obj:
            if field.required:
                yield error(field_path, "is required")
            continue
        value = obj[name]
        if value is None:
            continue  # reported once, by the null-and-empty rule
        if not _TYPE_TESTS[field.type](value):
            yield error(field_path, f"must be {_TYPE_NAMES[field.type]}")
        elif field.choices and value not in field.choices:
            allowed = " | ".join(field.choices)
            yield error(field_path, f"must be one of {allowed}, not {json.dumps(value)}")
    # #extensions: "extension" is reserved on every object and its value MUST be an object.
    extension = obj.get("extension")
    if extension is not None and not isinstance(extension, dict):
        yield error(join(path, "extension"), "must be a JSON object (#extensions)")
    if closed:
        for name in sorted(obj.keys() - fields.keys() - {"extension"}):
            yield warning(
                join(path, name),
                "is not defined by CDS Hooks 2.0; put custom data under 'extension'",
            )


def each(obj: JsonObject, key: str, path: str, check: Check) -> Iterator[Violation]:
    """Apply a check to every object in an array field; the field table reports its type."""
    items = obj.get(key)
    if not isinstance(items, list):
        return
    for index, item in enumerate(items):
        item_path = f"{join(path, key)}[{index}]"
        if isinstance(item, dict):
            yield from check(item, item_path)
        elif item is not None:
            yield error(item_path, "must be a JSON object")


def one(obj: JsonObject, key: str, path: str, check: Check) -> Iterator[Violation]:
    """Apply a check to an object-valued field; the field table reports a wrong type."""
    value = obj.get(key)
    if isinstance(value, dict):
        yield from check(value, join(path, key))


def absolute_url(obj: JsonObject, key: str, path: str) -> Iterator[Violation]:
    """Require a URL-typed field to be absolute, as the spec's URL fields are."""
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        yield error(join(path, key), "must be an absolute http(s) URL")


def _emptiness(value: object) -> str | None:
    """Name the kind of emptiness of a value, or None when it has content."""
    if value is None:
        return "null"
    for empty, name in (("", "an empty string"), ([], "an empty array"), ({}, "an empty object")):
        if type(value) is type(empty) and value == empty:
            return name
    return None


def _null_and_empty(value: object, path: str, allowed: Allowance) -> Iterator[Violation]:
    """Report every null and empty value (#use-of-json) the spec does not allow at its path."""
    problem = _emptiness(value)
    # An empty document is left to the required-member errors, which say more.
    if problem is not None and path and not allowed(path, value):
        yield error(path, f"must not be {problem}; omit an optional element instead (#use-of-json)")
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _null_and_empty(item, join(path, key), allowed)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _null_and_empty(item, f"{path}[{index}]", allowed)


def allow_nothing(path: str, value: object) -> bool:
    """Allow no null or empty value anywhere."""
    return False


def allow_root_array(key: str) -> Allowance:
    """Allow one top-level array to be empty: "cards": [] means no guidance (#http-response)."""
    return lambda path, value: path == key and value == []


def coding(obj: JsonObject, path: str) -> Iterator[Violation]:
    """Check a FHIR Coding: code and system required."""
    yield from check_fields(obj, path, CODING)


def fhir_resource(value: object, path: str) -> Iterator[Violation]:
    """Require a JSON object naming its resourceType, the least any FHIR resource has."""
    if not isinstance(value, dict):
        yield error(path, "must be a FHIR resource (a JSON object with resourceType)")
    elif "resourceType" not in value:
        yield error(join(path, "resourceType"), "is required on a FHIR resource")
    elif not isinstance(value["resourceType"], str | None):  # null: the null rule reports it
        yield error(join(path, "resourceType"), "must be a string")
