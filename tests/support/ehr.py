"""Act as an EHR towards the service: prefetch from a real FHIR server, draft orders, card keys.

``ehr_prefetch`` does what a CDS client does with a service's discovery ``prefetch``: it fills the
tokens from the hook context, runs each query against its FHIR server, follows every ``next``
link and hands the service one searchset Bundle per key (a read gives the resource itself, a 404
gives ``null``; CDS Hooks 2.0 #prefetch-template). It is written from the spec, not from the
service's code, so a test comparing its prefetch with the service's own fetching pins templates,
paging, fetch code and mapping together.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from tests.charts.lupus import RXNORM, dosage
from tests.charts.lupus import Drug as ChartDrug
from tests.support.fhir_server import FHIR_JSON, REQUEST_TIMEOUT_S, FhirServer, FhirServerError

Resource = dict[str, Any]
CVX = "http://hl7.org/fhir/sid/cvx"
# Spec #prefetch-tokens: {{context.<field>}} or one of the user* tokens.
_TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner/",
    "userPractitionerRoleId": "PractitionerRole/",
    "userPatientId": "Patient/",
    "userRelatedPersonId": "RelatedPerson/",
}
_MAX_PAGES = 100


class PrefetchTemplateError(ValueError):
    """A template uses a token the EHR cannot fill (spec: root-level primitive context only)."""


def fill_tokens(template: str, context: Mapping[str, Any]) -> str:
    """Replace every prefetch token with its context value; raise on one the EHR cannot fill."""

    def value(match: re.Match[str]) -> str:
        token = match.group(1)
        if token.startswith("context."):
            name = token.removeprefix("context.")
            found = context.get(name)
            if not isinstance(found, str | int | float) or isinstance(found, bool):
                raise PrefetchTemplateError(f"{template}: {{{{{token}}}}} is not a primitive")
            return str(found)
        prefix = _USER_TOKENS.get(token)
        user = str(context.get("userId", ""))
        if prefix is None or not user.startswith(prefix):
            raise PrefetchTemplateError(f"{template}: token {{{{{token}}}}} cannot be filled")
        return user.removeprefix(prefix)

    return _TOKEN.sub(value, template)


@dataclass
class EhrPrefetch:
    """The prefetch an EHR sends, and what it saw on the way (for assertions and timings)."""

    prefetch: dict[str, Resource | None]
    pages: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, list[str]] = field(default_factory=dict)  # key -> OperationOutcome texts


def _get(server: FhirServer, url: str) -> Resource | None:
    """GET as a client does (no raise on 404: a read of a missing resource is ``null``)."""
    resp = server.session.get(
        server.url(url), headers={"Accept": FHIR_JSON}, timeout=REQUEST_TIMEOUT_S
    )
    if resp.status_code == 404:
        return None
    if not resp.ok:
        raise FhirServerError(f"GET {resp.url} -> HTTP {resp.status_code}: {resp.text[:2000]}")
    body: Resource = resp.json()
    return body


def _outcome_texts(entries: list[Resource]) -> list[str]:
    texts = []
    for entry in entries:
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "OperationOutcome":
            texts += [str(i.get("diagnostics", i.get("code"))) for i in resource.get("issue", [])]
    return texts


def run_query(server: FhirServer, query: str) -> tuple[Resource | None, int, list[str]]:
    """Run one filled template: a read, or a search merged over all its pages.

    Returns (prefetch value, pages fetched, OperationOutcome texts the server put in the results).
    """
    _, _, params = query.partition("?")
    if not params:  # Type/id: an instance read
        return _get(server, query), 1, []
    entries: list[Resource] = []
    url: str | None = query
    pages = 0
    while url is not None:
        pages += 1
        if pages > _MAX_PAGES:
            raise FhirServerError(f"more than {_MAX_PAGES} pages for {query}")
        bundle = _get(server, url)
        if bundle is None or bundle.get("resourceType") != "Bundle":
            raise FhirServerError(f"search {url} did not answer with a Bundle: {bundle}")
        entries += bundle.get("entry", [])
        url = next((li["url"] for li in bundle.get("link", []) if li["relation"] == "next"), None)
    matches = [e for e in entries if e.get("search", {}).get("mode", "match") == "match"]
    merged: Resource = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(matches),
        "link": [{"relation": "self", "url": server.url(query)}],
        "entry": entries,  # as served: outcome entries (if any) stay, the service must skip them
    }
    if not entries:
        del merged["entry"]  # spec #use-of-json: no empty arrays
    return merged, pages, _outcome_texts(entries)


def ehr_prefetch(
    server: FhirServer, templates: Mapping[str, str], context: Mapping[str, Any]
) -> EhrPrefetch:
    """Answer every template against ``server`` the way a CDS client does."""
    result = EhrPrefetch({})
    for key, template in templates.items():
        value, pages, outcomes = run_query(server, fill_tokens(template, context))
        result.prefetch[key] = value
        result.pages[key] = pages
        if outcomes:
            result.outcomes[key] = outcomes
    return result


# ---------------- draft orders ----------------


def draft_medication_order(
    patient_id: str, today: date, drug: ChartDrug, order_id: str
) -> Resource:
    """A draft MedicationRequest for ``drug`` as the EHR puts it in ``draftOrders``."""
    concept: Resource = {"text": drug.text}
    if drug.rxnorm:
        concept["coding"] = [{"system": RXNORM, "code": drug.rxnorm[0], "display": drug.rxnorm[1]}]
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": concept,
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": today.isoformat(),
        "dosageInstruction": [dosage(drug)],
    }


def draft_vaccine_order(
    patient_id: str, today: date, cvx: str, display: str, order_id: str
) -> Resource:
    """A draft vaccine order: a MedicationRequest coded in CVX (one dose, today)."""
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": CVX, "code": cvx, "display": display}],
            "text": display,
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": today.isoformat(),
        "dosageInstruction": [{"text": "0.5 mL subcutaneously, once"}],
    }


# ---------------- comparing answers ----------------


def card_key(card: Resource) -> tuple[Any, ...]:
    """What a card says, without its uuids: rule id, indicator, texts, suggestions and actions."""
    suggestions = tuple(
        (
            s["label"],
            bool(s.get("isRecommended")),
            tuple(
                (
                    a["type"],
                    a["description"],
                    a.get("resourceId"),
                    json.dumps(a.get("resource"), sort_keys=True),
                )
                for a in s.get("actions", [])
            ),
        )
        for s in card.get("suggestions", [])
    )
    return (
        card["source"]["topic"]["code"],
        card["indicator"],
        card["summary"],
        card.get("detail", ""),
        suggestions,
    )


def rule_ids(cards: list[Resource]) -> list[str]:
    """The rule id of each card, in the order the service sent them."""
    return [card["source"]["topic"]["code"] for card in cards]
