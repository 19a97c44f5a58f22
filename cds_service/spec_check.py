"""Check CDS Hooks 2.0 JSON documents against the rules of the specification.

Stdlib only, so anyone building a CDS Client or CDS Service can copy this one file. Each
``check_*`` function takes a parsed JSON document and returns every ``Violation`` it finds; an
empty list means the document keeps every rule checked here. An *error* breaks a SHALL/MUST of
CDS Hooks 2.0.1 (https://cds-hooks.hl7.org/2.0/, anchors quoted in the messages); a *warning*
flags a SHOULD, a deprecated form, or something that silently disables a feature (a card
without ``uuid`` can never receive feedback).

Paths name the offending element: ``cards[0].suggestions[1].actions[0].resource``. Keys that
are not plain identifiers are quoted (``prefetch["hemoglobin-a1c"]``); the document itself
is ``""``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

Severity = Literal["error", "warning"]
Kind = Literal["request", "response", "discovery", "feedback"]
JsonType = Literal["string", "boolean", "integer", "object", "array", "Bundle", "any"]
JsonObject = dict[str, object]


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

# ---------------------------------------------------------------------------------------------
# The spec's tables, as data.
# ---------------------------------------------------------------------------------------------

SUMMARY_LIMIT = 140  # #card-attributes: "<140-character"; Inferno fails at length >= 140.
USER_TOKENS = frozenset(
    {"userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}
)
USER_REFERENCE_TYPES = ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson")
DEPRECATED_HOOKS: Mapping[str, str] = {"medication-prescribe": "order-select and order-sign"}

CODING: Mapping[str, Field] = {
    "code": Field("string", required=True),
    "system": Field("string", required=True),
    "display": Field("string"),
}
# #reasons-for-rejecting-a-card: the service MUST populate display on each override reason.
OVERRIDE_REASON_CODING: Mapping[str, Field] = {**CODING, "display": Field("string", required=True)}

SOURCE: Mapping[str, Field] = {
    "label": Field("string", required=True),
    "url": Field("string"),
    "icon": Field("string"),
    "topic": Field("object"),
}
CARD: Mapping[str, Field] = {
    "uuid": Field("string"),
    "summary": Field("string", required=True),
    "detail": Field("string"),
    "indicator": Field("string", required=True, choices=("info", "warning", "critical")),
    "source": Field("object", required=True),
    "suggestions": Field("array"),
    "selectionBehavior": Field("string", choices=("at-most-one", "any")),
    "overrideReasons": Field("array"),
    "links": Field("array"),
}
SUGGESTION: Mapping[str, Field] = {
    "label": Field("string", required=True),
    "uuid": Field("string"),
    "isRecommended": Field("boolean"),
    "actions": Field("array"),
}
ACTION: Mapping[str, Field] = {
    "type": Field("string", required=True, choices=("create", "update", "delete")),
    "description": Field("string", required=True),
    "resource": Field("any"),  # an object, or (deprecated, delete only) an id string
    "resourceId": Field("string"),
}
LINK: Mapping[str, Field] = {
    "label": Field("string", required=True),
    "url": Field("string", required=True),
    "type": Field("string", required=True, choices=("absolute", "smart")),
    "appContext": Field("string"),
    "autolaunchable": Field("boolean"),
}
RESPONSE: Mapping[str, Field] = {
    "cards": Field("array", required=True),
    "systemActions": Field("array"),
}

REQUEST: Mapping[str, Field] = {
    "hook": Field("string", required=True),
    "hookInstance": Field("string", required=True),
    "fhirServer": Field("string"),
    "fhirAuthorization": Field("object"),
    "context": Field("object", required=True),
    "prefetch": Field("object"),
}
FHIR_AUTHORIZATION: Mapping[str, Field] = {
    "access_token": Field("string", required=True),
    "token_type": Field("string", required=True, choices=("Bearer",)),
    "expires_in": Field("integer", required=True),
    "scope": Field("string", required=True),
    "subject": Field("string", required=True),
    "patient": Field("string"),
}

_USER_ID = Field("string", required=True, prefetch_token=True)
_PATIENT_ID = Field("string", required=True, prefetch_token=True)
_ENCOUNTER_ID = Field("string", prefetch_token=True)
# Context tables of the hooks this checker knows (HL7 cds-hooks-library 1.0.1).
HOOK_CONTEXTS: Mapping[str, Mapping[str, Field]] = {
    "patient-view": {
        "userId": _USER_ID,
        "patientId": _PATIENT_ID,
        "encounterId": _ENCOUNTER_ID,
    },
    "order-select": {
        "userId": _USER_ID,
        "patientId": _PATIENT_ID,
        "encounterId": _ENCOUNTER_ID,
        "selections": Field("array", required=True),
        "draftOrders": Field("Bundle", required=True),
    },
    "order-sign": {
        "userId": _USER_ID,
        "patientId": _PATIENT_ID,
        "encounterId": _ENCOUNTER_ID,
        "draftOrders": Field("Bundle", required=True),
    },
    "medication-prescribe": {
        "userId": _USER_ID,
        "patientId": _PATIENT_ID,
        "encounterId": _ENCOUNTER_ID,
        "medications": Field("Bundle", required=True),
    },
}

DISCOVERY: Mapping[str, Field] = {"services": Field("array", required=True)}
SERVICE: Mapping[str, Field] = {
    "hook": Field("string", required=True),
    "title": Field("string"),
    "description": Field("string", required=True),
    "id": Field("string", required=True),
    "prefetch": Field("object"),
    "usageRequirements": Field("string"),
}

FEEDBACK_REQUEST: Mapping[str, Field] = {"feedback": Field("array", required=True)}
FEEDBACK: Mapping[str, Field] = {
    "card": Field("string", required=True),
    "outcome": Field("string", required=True, choices=("accepted", "overridden")),
    "acceptedSuggestions": Field("array"),
    "overrideReason": Field("object"),
    "outcomeTimestamp": Field("string", required=True),
}
ACCEPTED_SUGGESTION: Mapping[str, Field] = {"id": Field("string", required=True)}
OVERRIDE_REASON: Mapping[str, Field] = {
    "reason": Field("object"),
    "userComment": Field("string"),
}

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_RELATIVE_REFERENCE = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}")
_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_TOKEN = re.compile(r"\{\{(.*?)\}\}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")

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

# ---------------------------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------------------------


def check_response(doc: object) -> list[Violation]:
    """Check a CDS Service response: cards and systemActions (#cds-service-response)."""
    return _run(doc, _response, _allow_root_array("cards"))


def check_request(doc: object) -> list[Violation]:
    """Check a hook call a CDS Client POSTs to a service (#calling-a-cds-service)."""
    return _run(doc, _request, _allow_prefetch_null(doc))


def check_discovery(doc: object) -> list[Violation]:
    """Check a discovery response, including its prefetch templates (#discovery)."""
    # #response: a server with no services returns an empty services array.
    return _run(doc, _discovery, _allow_root_array("services"))


def check_feedback(doc: object) -> list[Violation]:
    """Check a feedback POST body (#feedback)."""
    return _run(doc, _feedback_request, _allow_nothing)


def detect_kind(doc: object) -> Kind | None:
    """Guess which CDS Hooks document this is from its top-level keys, so files need no flag."""
    if not isinstance(doc, dict):
        return None
    for kind, markers in _KIND_MARKERS:
        if markers & doc.keys():
            return kind
    return None


CHECKERS: Mapping[Kind, Callable[[object], list[Violation]]] = {
    "request": check_request,
    "response": check_response,
    "discovery": check_discovery,
    "feedback": check_feedback,
}

_KIND_MARKERS: tuple[tuple[Kind, frozenset[str]], ...] = (
    ("discovery", frozenset({"services"})),
    ("feedback", frozenset({"feedback"})),
    ("response", frozenset({"cards", "systemActions"})),
    ("request", frozenset({"hook", "hookInstance", "context"})),
)

# ---------------------------------------------------------------------------------------------
# Shared machinery.
# ---------------------------------------------------------------------------------------------


def _error(path: str, message: str) -> Violation:
    return Violation(path, message, "error")


def _warning(path: str, message: str) -> Violation:
    return Violation(path, message, "warning")


def _join(path: str, key: str) -> str:
    """Extend a path by one key, quoting keys that would be ambiguous after a dot."""
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _run(doc: object, check: Check, allowed: Allowance) -> list[Violation]:
    """Run the structural checks, then the document-wide null-and-empty rule."""
    if not isinstance(doc, dict):
        return [_error("", "must be a JSON object")]
    return [*check(doc, ""), *_null_and_empty(doc, "", allowed)]


def _fields(
    obj: JsonObject, path: str, fields: Mapping[str, Field], *, closed: bool = True
) -> Iterator[Violation]:
    """Check presence, JSON type and allowed values of each declared field of one object."""
    for name, field in fields.items():
        field_path = _join(path, name)
        if name not in obj:
            if field.required:
                yield _error(field_path, "is required")
            continue
        value = obj[name]
        if value is None:
            continue  # reported once, by the null-and-empty rule
        if not _TYPE_TESTS[field.type](value):
            yield _error(field_path, f"must be {_TYPE_NAMES[field.type]}")
        elif field.choices and value not in field.choices:
            allowed = " | ".join(field.choices)
            yield _error(field_path, f"must be one of {allowed}, not {json.dumps(value)}")
    # #extensions: "extension" is reserved on every object and its value MUST be an object.
    extension = obj.get("extension")
    if extension is not None and not isinstance(extension, dict):
        yield _error(_join(path, "extension"), "must be a JSON object (#extensions)")
    if closed:
        for name in sorted(obj.keys() - fields.keys() - {"extension"}):
            yield _warning(
                _join(path, name),
                "is not defined by CDS Hooks 2.0; put custom data under 'extension'",
            )


def _each(obj: JsonObject, key: str, path: str, check: Check) -> Iterator[Violation]:
    """Apply a check to every object in an array field; the field table reports its type."""
    items = obj.get(key)
    if not isinstance(items, list):
        return
    for index, item in enumerate(items):
        item_path = f"{_join(path, key)}[{index}]"
        if isinstance(item, dict):
            yield from check(item, item_path)
        elif item is not None:
            yield _error(item_path, "must be a JSON object")


def _one(obj: JsonObject, key: str, path: str, check: Check) -> Iterator[Violation]:
    """Apply a check to an object-valued field; the field table reports a wrong type."""
    value = obj.get(key)
    if isinstance(value, dict):
        yield from check(value, _join(path, key))


def _absolute_url(obj: JsonObject, key: str, path: str) -> Iterator[Violation]:
    """Require a URL-typed field to be absolute, as the spec's URL fields are."""
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        yield _error(_join(path, key), "must be an absolute http(s) URL")


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
        yield _error(
            path, f"must not be {problem}; omit an optional element instead (#use-of-json)"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _null_and_empty(item, _join(path, key), allowed)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _null_and_empty(item, f"{path}[{index}]", allowed)


def _allow_nothing(path: str, value: object) -> bool:
    return False


def _allow_root_array(key: str) -> Allowance:
    """Allow one top-level array to be empty: "cards": [] means no guidance (#http-response)."""
    return lambda path, value: path == key and value == []


def _allow_prefetch_null(doc: object) -> Allowance:
    """Allow null prefetch values: the client had no data for that key (#prefetch-template)."""
    prefetch = doc.get("prefetch") if isinstance(doc, dict) else None
    keys = {_join("prefetch", key) for key in prefetch} if isinstance(prefetch, dict) else set()
    return lambda path, value: value is None and path in keys


def _coding(coding: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(coding, path, CODING)


def _fhir_resource(value: object, path: str) -> Iterator[Violation]:
    """Require a JSON object naming its resourceType, the least any FHIR resource has."""
    if not isinstance(value, dict):
        yield _error(path, "must be a FHIR resource (a JSON object with resourceType)")
    elif "resourceType" not in value:
        yield _error(_join(path, "resourceType"), "is required on a FHIR resource")
    elif not isinstance(value["resourceType"], str | None):  # null: the null rule reports it
        yield _error(_join(path, "resourceType"), "must be a string")


# ---------------------------------------------------------------------------------------------
# Response: cards, suggestions, actions, links.
# ---------------------------------------------------------------------------------------------


def _response(doc: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(doc, path, RESPONSE)
    yield from _each(doc, "cards", path, _card)
    yield from _each(doc, "systemActions", path, _action)
    yield from _duplicate_uuids(doc)


def _card(card: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(card, path, CARD)
    if "uuid" not in card:
        yield _warning(
            _join(path, "uuid"), "is missing, so the CDS Client cannot send feedback (#feedback)"
        )
    summary = card.get("summary")
    if isinstance(summary, str) and len(summary) >= SUMMARY_LIMIT:
        yield _error(
            _join(path, "summary"),
            f"must be under {SUMMARY_LIMIT} characters, has {len(summary)} (#card-attributes)",
        )
    yield from _one(card, "source", path, _source)
    yield from _suggestions(card, path)
    yield from _each(card, "overrideReasons", path, _override_reason_coding)
    yield from _each(card, "links", path, _link)


def _source(source: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(source, path, SOURCE)
    yield from _absolute_url(source, "url", path)
    yield from _absolute_url(source, "icon", path)
    yield from _one(source, "topic", path, _coding)


def _suggestions(card: JsonObject, path: str) -> Iterator[Violation]:
    """Check each suggestion and the card-level rules that tie suggestions together."""
    suggestions = card.get("suggestions")
    if not isinstance(suggestions, list) or not suggestions:
        return
    if "selectionBehavior" not in card:
        yield _error(_join(path, "selectionBehavior"), "is required when suggestions are present")
    yield from _each(card, "suggestions", path, _suggestion)
    recommended = [s for s in suggestions if isinstance(s, dict) and s.get("isRecommended") is True]
    if card.get("selectionBehavior") == "at-most-one" and len(recommended) > 1:
        yield _error(
            _join(path, "suggestions"),
            "only one suggestion may be isRecommended when selectionBehavior is at-most-one",
        )


def _suggestion(suggestion: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(suggestion, path, SUGGESTION)
    if "uuid" not in suggestion:
        yield _warning(
            _join(path, "uuid"),
            "is missing, so the CDS Client cannot report it accepted (#suggestion-accepted)",
        )
    yield from _each(suggestion, "actions", path, _action)


def _action(action: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(action, path, ACTION)
    action_type = action.get("type")
    resource, resource_path = action.get("resource"), _join(path, "resource")
    if action_type in ("create", "update"):
        if "resource" not in action:
            yield _error(resource_path, f"is required for a {action_type} action")
        elif resource is not None:
            yield from _fhir_resource(resource, resource_path)
        if action_type == "update" and isinstance(resource, dict) and "id" not in resource:
            yield _warning(
                _join(resource_path, "id"),
                "is missing; an update carries the whole resource it replaces",
            )
    elif action_type == "delete":
        if "resource" in action:
            yield _warning(resource_path, "is deprecated for delete actions; use resourceId")
        elif "resourceId" not in action:
            yield _error(_join(path, "resourceId"), "is required for a delete action")
    resource_id = action.get("resourceId")
    if (
        isinstance(resource_id, str)
        and resource_id
        and not _RELATIVE_REFERENCE.fullmatch(resource_id)
    ):
        yield _warning(
            _join(path, "resourceId"),
            "should be a relative reference such as 'MedicationRequest/123'",
        )


def _override_reason_coding(coding: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(coding, path, OVERRIDE_REASON_CODING)


def _link(link: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(link, path, LINK)
    yield from _absolute_url(link, "url", path)
    if "appContext" in link and link.get("type") != "smart":
        yield _error(_join(path, "appContext"), "is only allowed on links of type smart (#link)")


def _duplicate_uuids(doc: JsonObject) -> Iterator[Violation]:
    """Report reused card or suggestion uuids: feedback could not tell them apart."""
    seen: dict[str, str] = {}
    cards = doc.get("cards")
    for card_index, card in enumerate(cards if isinstance(cards, list) else []):
        if not isinstance(card, dict):
            continue
        card_path = f"cards[{card_index}]"
        suggestions = card.get("suggestions")
        owners = [(card_path, card)] + [
            (f"{card_path}.suggestions[{index}]", suggestion)
            for index, suggestion in enumerate(suggestions if isinstance(suggestions, list) else [])
            if isinstance(suggestion, dict)
        ]
        for owner_path, owner in owners:
            uuid = owner.get("uuid")
            if not isinstance(uuid, str) or not uuid:
                continue
            uuid_path = f"{owner_path}.uuid"
            if uuid in seen:
                yield _error(uuid_path, f"must be unique; {seen[uuid]} has the same value")
            else:
                seen[uuid] = uuid_path


# ---------------------------------------------------------------------------------------------
# Request: the hook call.
# ---------------------------------------------------------------------------------------------


def _request(doc: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(doc, path, REQUEST)
    hook_instance = doc.get("hookInstance")
    if isinstance(hook_instance, str) and hook_instance and not _UUID.fullmatch(hook_instance):
        yield _error("hookInstance", "must be a UUID (#hookinstance)")
    if "fhirAuthorization" in doc and "fhirServer" not in doc:
        yield _error("fhirServer", "is required when fhirAuthorization is present")
    yield from _absolute_url(doc, "fhirServer", path)
    yield from _one(doc, "fhirAuthorization", path, _fhir_authorization)
    yield from _context(doc)
    yield from _prefetch_data(doc)


def _fhir_authorization(auth: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(auth, path, FHIR_AUTHORIZATION)
    scope = auth.get("scope")
    patient_scoped = isinstance(scope, str) and any(
        part.startswith("patient/") for part in scope.split()
    )
    if patient_scoped and "patient" not in auth:
        yield _warning(
            _join(path, "patient"), "should name the patient the patient/ scopes are limited to"
        )


def _context(doc: JsonObject) -> Iterator[Violation]:
    """Check the context against the definition of the hook that fired (#hooks)."""
    hook, context = doc.get("hook"), doc.get("context")
    if not isinstance(hook, str) or not hook or not isinstance(context, dict):
        return
    fields = HOOK_CONTEXTS.get(hook)
    if fields is None:
        yield _warning("hook", f"unknown hook {json.dumps(hook)}: context fields not checked")
        return
    if hook in DEPRECATED_HOOKS:
        yield _warning("hook", f"is deprecated in favour of {DEPRECATED_HOOKS[hook]}")
    # Hook definitions add optional fields over time, so unknown context fields are fine.
    yield from _fields(context, "context", fields, closed=False)
    yield from _user_id(context)
    for name in ("patientId", "encounterId"):
        value = context.get(name)
        if isinstance(value, str) and value and not _FHIR_ID.fullmatch(value):
            yield _error(f"context.{name}", "must be a bare FHIR id, not a reference")
    yield from _selections(context)


def _user_id(context: JsonObject) -> Iterator[Violation]:
    user_id = context.get("userId")
    if not isinstance(user_id, str) or not user_id:
        return
    resource_type, _, resource_id = user_id.partition("/")
    if resource_type not in USER_REFERENCE_TYPES or not _FHIR_ID.fullmatch(resource_id):
        yield _error(
            "context.userId",
            "must be a reference to a "
            + ", ".join(USER_REFERENCE_TYPES)
            + ", e.g. Practitioner/123",
        )


def _selections(context: JsonObject) -> Iterator[Violation]:
    """Require each order-select selection to name an entry of draftOrders."""
    selections, draft_orders = context.get("selections"), context.get("draftOrders")
    if not isinstance(selections, list):
        return
    drafted = _bundle_references(draft_orders)
    for index, selection in enumerate(selections):
        path = f"context.selections[{index}]"
        if selection is None:
            continue
        if not isinstance(selection, str):
            yield _error(path, "must be a string such as 'MedicationRequest/103'")
        elif drafted is not None and selection and selection not in drafted:
            yield _error(path, "does not reference an entry in context.draftOrders")


def _bundle_references(bundle: object) -> set[str] | None:
    """List the Type/id of each Bundle entry, or None when there is no Bundle to look in."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return None
    entries = bundle.get("entry")
    references = set()
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            references.add(f"{resource.get('resourceType')}/{resource.get('id')}")
    return references


def _prefetch_data(doc: JsonObject) -> Iterator[Violation]:
    """Require each prefetch value to be a FHIR resource or null (#prefetch-template)."""
    prefetch = doc.get("prefetch")
    if not isinstance(prefetch, dict):
        return
    for key, value in prefetch.items():
        if value is not None:
            yield from _fhir_resource(value, _join("prefetch", key))


# ---------------------------------------------------------------------------------------------
# Discovery: services and prefetch templates.
# ---------------------------------------------------------------------------------------------


def _discovery(doc: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(doc, path, DISCOVERY)
    yield from _each(doc, "services", path, _service)
    yield from _duplicate_services(doc)


def _service(service: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(service, path, SERVICE)
    if "title" not in service:
        yield _warning(_join(path, "title"), "is recommended: a human-friendly name")
    prefetch = service.get("prefetch")
    if not isinstance(prefetch, dict):
        return
    hook = service.get("hook")
    for key, template in prefetch.items():
        template_path = _join(_join(path, "prefetch"), key)
        if isinstance(template, str):
            yield from _template(template, template_path, hook if isinstance(hook, str) else "")
        elif template is not None:
            yield _error(template_path, "must be a string: a FHIR query template")


def _template(template: str, path: str, hook: str) -> Iterator[Violation]:
    """Check each {{token}} of a prefetch template (#prefetch-tokens)."""
    for token in _TOKEN.findall(template):
        problem = _token_problem(token, hook)
        if problem is not None:
            yield _error(path, problem)
    leftover = _TOKEN.sub("", template)
    if "{{" in leftover or "}}" in leftover:
        yield _error(path, "has a prefetch token without matching {{ and }}")


def _token_problem(token: str, hook: str) -> str | None:
    """Say why a token is invalid, or None when it is a context field or user token."""
    if token in USER_TOKENS:
        return None
    shown = "{{" + token + "}}"
    field = token.removeprefix("context.")
    if field == token:
        users = ", ".join(sorted(USER_TOKENS))
        return f"{shown} is not a prefetch token: use {{{{context.<field>}}}} or one of {users}"
    if not _IDENTIFIER.fullmatch(field):
        return f"{shown} is invalid: only root-level context fields may be tokens"
    context = HOOK_CONTEXTS.get(hook)
    if context is not None and not (field in context and context[field].prefetch_token):
        return f"{shown} is invalid: {field} is not a prefetch token field of {hook}"
    return None


def _duplicate_services(doc: JsonObject) -> Iterator[Violation]:
    """Report a service listed twice for one hook; one id for several hooks is allowed."""
    services = doc.get("services")
    seen: dict[tuple[object, object], int] = {}
    for index, service in enumerate(services if isinstance(services, list) else []):
        if not isinstance(service, dict):
            continue
        key = (service.get("id"), service.get("hook"))
        if key in seen:
            yield _error(f"services[{index}]", f"repeats the id and hook of services[{seen[key]}]")
        else:
            seen[key] = index


# ---------------------------------------------------------------------------------------------
# Feedback.
# ---------------------------------------------------------------------------------------------


def _feedback_request(doc: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(doc, path, FEEDBACK_REQUEST)
    yield from _each(doc, "feedback", path, _feedback)


def _feedback(feedback: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(feedback, path, FEEDBACK)
    outcome = feedback.get("outcome")
    if outcome == "accepted" and "acceptedSuggestions" not in feedback:
        yield _error(_join(path, "acceptedSuggestions"), "is required for an accepted outcome")
    if outcome == "overridden" and "acceptedSuggestions" in feedback:
        yield _warning(_join(path, "acceptedSuggestions"), "makes no sense for an overridden card")
    if outcome == "accepted" and "overrideReason" in feedback:
        yield _warning(_join(path, "overrideReason"), "makes no sense for an accepted card")
    yield from _each(feedback, "acceptedSuggestions", path, _accepted_suggestion)
    yield from _one(feedback, "overrideReason", path, _override_reason)
    timestamp = feedback.get("outcomeTimestamp")
    if isinstance(timestamp, str) and timestamp:
        yield from _timestamp(timestamp, _join(path, "outcomeTimestamp"))


def _accepted_suggestion(accepted: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(accepted, path, ACCEPTED_SUGGESTION)


def _override_reason(reason: JsonObject, path: str) -> Iterator[Violation]:
    yield from _fields(reason, path, OVERRIDE_REASON)
    yield from _one(reason, "reason", path, _coding)
    if reason and not {"reason", "userComment"} & reason.keys():
        yield _error(path, "needs a reason Coding, a userComment, or both (#overridereason)")


def _timestamp(value: str, path: str) -> Iterator[Violation]:
    """Require an RFC 3339 date-time with a time zone (section 5.6), ideally in UTC."""
    if not _RFC3339.fullmatch(value):
        yield _error(
            path, "must be an RFC 3339 date-time with time zone, e.g. 2021-12-11T10:05:31Z"
        )
        return
    try:
        moment = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        yield _error(path, "is not a real date and time")
        return
    if moment.utcoffset():
        yield _warning(path, "should be in UTC (#feedback)")
