"""Check a hook call a CDS Client POSTs: the request, fhirAuthorization, context and prefetch."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping

from .core import (
    FHIR_ID,
    USER_REFERENCE_TYPES,
    Allowance,
    Field,
    JsonObject,
    Violation,
    absolute_url,
    check_fields,
    error,
    fhir_resource,
    join,
    one,
    run,
    warning,
)
from .hooks import DEPRECATED_HOOKS, HOOK_CONTEXTS

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

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def check_request(doc: object) -> list[Violation]:
    """Check a hook call a CDS Client POSTs to a service (#calling-a-cds-service)."""
    return run(doc, _request, _allow_prefetch_null(doc))


def _allow_prefetch_null(doc: object) -> Allowance:
    """Allow null prefetch values: the client had no data for that key (#prefetch-template)."""
    prefetch = doc.get("prefetch") if isinstance(doc, dict) else None
    keys = {join("prefetch", key) for key in prefetch} if isinstance(prefetch, dict) else set()
    return lambda path, value: value is None and path in keys


def _request(doc: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(doc, path, REQUEST)
    hook_instance = doc.get("hookInstance")
    if isinstance(hook_instance, str) and hook_instance and not _UUID.fullmatch(hook_instance):
        yield error("hookInstance", "must be a UUID (#hookinstance)")
    if "fhirAuthorization" in doc and "fhirServer" not in doc:
        yield error("fhirServer", "is required when fhirAuthorization is present")
    yield from absolute_url(doc, "fhirServer", path)
    yield from one(doc, "fhirAuthorization", path, _fhir_authorization)
    yield from _context(doc)
    yield from _prefetch_data(doc)


def _fhir_authorization(auth: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(auth, path, FHIR_AUTHORIZATION)
    scope = auth.get("scope")
    patient_scoped = isinstance(scope, str) and any(
        part.startswith("patient/") for part in scope.split()
    )
    if patient_scoped and "patient" not in auth:
        yield warning(
            join(path, "patient"), "should name the patient the patient/ scopes are limited to"
        )


def _context(doc: JsonObject) -> Iterator[Violation]:
    """Check the context against the definition of the hook that fired (#hooks)."""
    hook, context = doc.get("hook"), doc.get("context")
    if not isinstance(hook, str) or not hook or not isinstance(context, dict):
        return
    fields = HOOK_CONTEXTS.get(hook)
    if fields is None:
        yield warning("hook", f"unknown hook {json.dumps(hook)}: context fields not checked")
        return
    if hook in DEPRECATED_HOOKS:
        yield warning("hook", f"is deprecated in favour of {DEPRECATED_HOOKS[hook]}")
    # Hook definitions add optional fields over time, so unknown context fields are fine.
    yield from check_fields(context, "context", fields, closed=False)
    yield from _user_id(context)
    for name in ("patientId", "encounterId"):
        value = context.get(name)
        if isinstance(value, str) and value and not FHIR_ID.fullmatch(value):
            yield error(f"context.{name}", "must be a bare FHIR id, not a reference")
    yield from _selections(context)


def _user_id(context: JsonObject) -> Iterator[Violation]:
    user_id = context.get("userId")
    if not isinstance(user_id, str) or not user_id:
        return
    resource_type, _, resource_id = user_id.partition("/")
    if resource_type not in USER_REFERENCE_TYPES or not FHIR_ID.fullmatch(resource_id):
        yield error(
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
            yield error(path, "must be a string such as 'MedicationRequest/103'")
        elif drafted is not None and selection and selection not in drafted:
            yield error(path, "does not reference an entry in context.draftOrders")


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
            yield from fhir_resource(value, join("prefetch", key))
