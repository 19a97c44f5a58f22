"""Build whole hook requests for tests: prefetch evaluated locally from a chart's resources.

``prefetch_for`` answers the service's own discovery templates the way an EHR would, with a tiny
evaluator that understands exactly the search parameters those templates use (patient, code,
status, clinical-status). The real-server tests check the same templates against sekmet-fhir.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

Resource = dict[str, Any]


def chart_resources(bundle: Resource) -> list[Resource]:
    """Resources of a transaction Bundle, with urn:uuid references rewritten to Type/id."""
    resources = [e["resource"] for e in bundle.get("entry", [])]
    return resources


def _subject_id(resource: Resource) -> str | None:
    for key in ("subject", "patient"):
        reference = (resource.get(key) or {}).get("reference", "")
        if reference:
            return reference.rsplit("/", 1)[-1].replace("urn:uuid:", "")
    return None


def _codes(resource: Resource) -> set[str]:
    found = set()
    for key in ("code", "vaccineCode"):
        for coding in (resource.get(key) or {}).get("coding", []):
            found.add(coding.get("code"))
            found.add(f"{coding.get('system')}|{coding.get('code')}")
    return found


def _matches(resource: Resource, params: list[tuple[str, str]], patient_id: str) -> bool:
    for name, value in params:
        if name == "patient" and _subject_id(resource) != patient_id:
            return False
        if name == "code" and not (_codes(resource) & set(value.split(","))):
            return False
        if name == "status" and resource.get("status") not in value.split(","):
            return False
        if name == "clinical-status":
            codes = {
                c.get("code") for c in (resource.get("clinicalStatus") or {}).get("coding", [])
            }
            if not codes & set(value.split(",")):
                return False
    return True


def search(resources: Iterable[Resource], query: str, patient_id: str) -> Resource:
    """A searchset Bundle for ``query`` over ``resources`` (sorted by date when asked)."""
    resource_type, _, raw = query.partition("?")
    params = [(k, v) for k, v in parse_qsl(raw) if not k.startswith("_")]
    hits = [
        r
        for r in resources
        if r.get("resourceType") == resource_type and _matches(r, params, patient_id)
    ]
    if "_sort=-date" in raw:
        hits.sort(key=lambda r: r.get("effectiveDateTime") or "", reverse=True)
    bundle: Resource = {"resourceType": "Bundle", "type": "searchset", "total": len(hits)}
    if hits:  # CDS Hooks #use-of-json: no empty arrays
        bundle["entry"] = [{"resource": r, "search": {"mode": "match"}} for r in hits]
    return bundle


def prefetch_for(
    resources: list[Resource], patient_id: str, templates: Mapping[str, str]
) -> dict[str, Any]:
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        query = template.replace("{{context.patientId}}", patient_id)
        if "?" not in query:
            resource_type, _, rid = query.partition("/")
            found = [
                r
                for r in resources
                if r.get("resourceType") == resource_type and r.get("id") == rid
            ]
            prefetch[key] = found[0] if found else None
        else:
            prefetch[key] = search(resources, query, patient_id)
    return prefetch


def hook_request(
    hook: str,
    patient_id: str,
    draft_orders: list[Resource],
    prefetch: dict[str, Any] | None = None,
    *,
    selections: list[str] | None = None,
    fhir_server: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """A spec-shaped hook request for ``hook`` with the given draft orders."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in draft_orders],
    }
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": patient_id}
    if hook == "medication-prescribe":
        context["medications"] = bundle
    else:
        context["draftOrders"] = bundle
    if hook == "order-select":
        context["selections"] = selections or [
            f"{r['resourceType']}/{r['id']}" for r in draft_orders
        ]
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if prefetch is not None:
        body["prefetch"] = prefetch
    if fhir_server:
        body["fhirServer"] = fhir_server
    if token:
        body["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "voclosporin-cds",
            "patient": patient_id,
        }
    return body
