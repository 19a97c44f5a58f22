"""Bundles and OperationOutcomes: entries, paging links, errors, the shapes the service reads."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from fhir_mappings.facts import Unreadable
from fhir_mappings.readers import Resource, as_list, as_object, is_resource_of
from fhir_mappings.references import reference_of


def is_bundle(value: Any) -> TypeGuard[Resource]:
    """``value`` is a Bundle."""
    return is_resource_of(value, "Bundle")


def bundle_resources(bundle: Any) -> list[Resource]:
    """The resources of a Bundle (or a single resource), skipping search outcomes."""
    if not isinstance(bundle, dict):
        return []
    if bundle.get("resourceType") != "Bundle":
        return [bundle] if isinstance(bundle.get("resourceType"), str) else []
    result = []
    entries = bundle.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue
        result.append(entry["resource"])
    return result


def next_link(bundle: Resource) -> str | None:
    """The URL of a Bundle's ``next`` link (the next search page), or None."""
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) and url else None
    return None


def bundle_error(bundle: Resource) -> str | None:
    """An error or fatal OperationOutcome among a search Bundle's entries ("could not search" must
    not read as "found nothing"); warnings (e.g. an ignored parameter) are not errors."""
    entries = bundle.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "OperationOutcome":
            continue
        if _is_error(resource):
            return "search answered with an OperationOutcome: " + operation_outcome_text(resource)
    return None


def operation_outcome_text(outcome: Resource) -> str:
    """First issue of an OperationOutcome as short text (diagnostics or details)."""
    for code, text in _issues(outcome):
        return f"{code}: {text[:200]}" if text else code
    return "no issue given"


def outcome_issue_codes(value: Any) -> str:
    """``severity/code`` of each issue of an OperationOutcome (or of those inside a Bundle).

    For logs: ``diagnostics`` and ``details.text`` are free text a server may fill with the
    patient's name or birth date, so they stay out.
    """
    outcomes: list[Resource] = [value] if isinstance(value, dict) else []
    if isinstance(value, dict) and value.get("resourceType") == "Bundle":
        outcomes = [
            as_object(entry.get("resource"))
            for entry in as_list(value.get("entry"))
            if isinstance(entry, dict)
        ]
    codes = []
    for outcome in outcomes:
        if outcome.get("resourceType") != "OperationOutcome":
            continue
        for issue in as_list(outcome.get("issue")):
            if isinstance(issue, dict):
                codes.append(f"{_token(issue.get('severity'))}/{_token(issue.get('code'))}")
    return ", ".join(codes[:10]) or "no issue given"


def _token(value: Any) -> str:
    """A FHIR code as a short log-safe token (codes are [^\\s]+; anything else is '?')."""
    text = str(value) if isinstance(value, str) else ""
    return text[:40] if text.isascii() and text.isprintable() and " " not in text else "?"


def operation_outcome_texts(outcome: Resource) -> list[str]:
    """The text (diagnostics or details) of every issue of an OperationOutcome that has one."""
    return [text for _, text in _issues(outcome) if text]


def _issues(outcome: Resource) -> Iterator[tuple[str, str]]:
    """(code, text) of each issue; text is diagnostics, else details.text, else empty."""
    issues = outcome.get("issue")
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        text = issue.get("diagnostics") or (
            details.get("text") if isinstance(details, dict) else None
        )
        yield str(issue.get("code") or "error"), str(text or "")


def error_outcome(diagnostics: str) -> Resource:
    """An OperationOutcome with one error issue: what a client sends for a failed prefetch."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": diagnostics}],
    }


def collection_bundle(resources: Iterable[Mapping[str, Any]]) -> Resource:
    """A collection Bundle of ``resources`` (CDS Hooks draftOrders / medications)."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": dict(r)} for r in resources],
    }


def merged_searchset(pages: Sequence[Resource]) -> Resource:
    """One searchset Bundle holding the entries of every page, as a client prefetches a search.

    ``total`` comes from the first page; the last page's ``next`` link is kept (a page cap was
    hit: the service may follow the rest).
    """
    first, last = pages[0], pages[-1]
    entries = [e for page in pages for e in as_list(page.get("entry"))]
    merged: Resource = {"resourceType": "Bundle", "type": "searchset"}
    if "total" in first:
        merged["total"] = first["total"]
    last_next = next_link(last)
    if last_next is not None:
        merged["link"] = [{"relation": "next", "url": last_next}]
    if entries:
        merged["entry"] = entries
    return merged


def search_matches(bundle: Resource) -> int:
    """How many entries of a search Bundle are matches (not includes or outcomes)."""
    return sum(
        1
        for entry in as_list(bundle.get("entry"))
        if isinstance(entry, dict)
        and as_object(entry.get("search")).get("mode", "match") == "match"
    )


def resource_ids(bundle: Any, resource_type: str) -> list[str]:
    """The ids of the ``resource_type`` resources in a Bundle."""
    return [
        str(r["id"])
        for r in bundle_resources(bundle)
        if r.get("resourceType") == resource_type and r.get("id")
    ]


def answer_problem(body: Any) -> str | None:
    """Why a FHIR server's JSON answer is not a usable resource (spec: OperationOutcome = error)."""
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        return "FHIR server answered with something that is not a resource"
    if body["resourceType"] == "OperationOutcome":
        return "FHIR server answered with an OperationOutcome: " + operation_outcome_text(body)
    return None


def prefetch_failure(value: Resource) -> str | None:
    """Why a prefetched value stands for an error, not data (spec: check for OperationOutcomes)."""
    if value.get("resourceType") == "OperationOutcome":
        return "prefetch held an OperationOutcome: " + operation_outcome_text(value)
    if value.get("resourceType") == "Bundle":
        return bundle_error(value)
    return None


def bundle_shape_problem(value: Any) -> str | None:
    """Why ``value`` is not a Bundle whose entries and links have the shapes the service reads."""
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        return "must be a FHIR Bundle (resourceType 'Bundle')"
    for name in ("entry", "link"):
        if not isinstance(value.get(name, []), list):
            return f"Bundle.{name} must be an array"
    for entry in value.get("entry", ()):  # every entry of a long chart: the cheap test first
        try:
            well_shaped = isinstance(entry["resource"]["resourceType"], str) and isinstance(
                entry.get("search", entry), dict
            )
        except (KeyError, TypeError):
            well_shaped = False
        if not well_shaped:
            return _entry_problem(value["entry"])
    if not all(isinstance(link, dict) for link in value.get("link", [])):
        return "Bundle.link entries must be objects"
    return None


def _entry_problem(entries: list[Any]) -> str | None:
    """What is wrong with the first ill-shaped entry (``bundle_shape_problem``)."""
    for number, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            return f"entry[{number}] has no resource with a resourceType"
        if not isinstance(entry.get("search", {}), dict):
            return f"entry[{number}].search must be an object"
    return None


def of_expected_types(
    values: Iterable[Any], expected: frozenset[str], where: str
) -> tuple[list[Resource], list[Unreadable]]:
    """The resources of the ``expected`` types, and a report of each other entry under ``where``
    (a prefetch key): no resourceType, an OperationOutcome, or a type not expected there."""
    kept: list[Resource] = []
    unreadable: list[Unreadable] = []
    for resource in values:
        if not isinstance(resource, dict):
            continue
        if _is_expected(resource.get("resourceType"), expected):
            kept.append(resource)
        else:
            unreadable.append(_unexpected(resource, where))
    return kept, unreadable


def _is_expected(resource_type: Any, expected: frozenset[str]) -> bool:
    """A resource type kept under a key (an OperationOutcome never is: it reports)."""
    return (
        isinstance(resource_type, str)
        and resource_type in expected
        and resource_type != "OperationOutcome"
    )


def _unexpected(resource: Resource, where: str) -> Unreadable:
    """The report of an entry under ``where`` that is not kept (``of_expected_types``)."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return Unreadable(f"prefetch {where}", "an entry without a valid resourceType was skipped")
    if resource_type == "OperationOutcome":
        return Unreadable(
            f"prefetch {where}", "OperationOutcome: " + operation_outcome_text(resource)
        )
    return Unreadable(reference_of(resource), f"a {resource_type} is not expected under '{where}'")


@dataclass(frozen=True)
class BundleContents:
    """What one walk over a prefetched Bundle found (``read_bundle``)."""

    # Why the Bundle stands for an error (``bundle_error``); then the rest is not read.
    failure: str | None
    resources: list[Resource]
    unreadable: list[Unreadable]


def read_bundle(bundle: Resource, expected: frozenset[str], where: str) -> BundleContents:
    """``bundle_error``, ``bundle_resources`` and ``of_expected_types`` of a Bundle in one walk
    over its entries (a prefetched chart can hold thousands, issue 14)."""
    kept: list[Resource] = []
    unreadable: list[Unreadable] = []
    entries = bundle.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        try:  # the usual entry first, in one expression: this runs for every entry
            resource = entry["resource"]
            resource_type = resource["resourceType"]
            # an OperationOutcome is never kept: it reports (or fails the Bundle)
            usual = resource_type in expected and resource_type != "OperationOutcome"
        except (KeyError, TypeError):  # no object, no resource, no (hashable) resourceType
            usual = False
        if usual:
            search = entry.get("search")
            if not (isinstance(search, dict) and search.get("mode") == "outcome"):
                kept.append(resource)
            continue
        if not isinstance(entry, dict):
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            continue
        if resource.get("resourceType") == "OperationOutcome" and _is_error(resource):
            failure = "search answered with an OperationOutcome: " + operation_outcome_text(
                resource
            )
            return BundleContents(failure, [], [])
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue
        unreadable.append(_unexpected(resource, where))
    return BundleContents(None, kept, unreadable)


def _is_error(outcome: Resource) -> bool:
    """An OperationOutcome with an error or fatal issue (a warning is no error)."""
    issues = outcome.get("issue")
    return any(
        isinstance(issue, dict) and issue.get("severity") in ("error", "fatal")
        for issue in (issues if isinstance(issues, list) else [])
    )


def entry_references(bundle: Resource) -> set[str]:
    """``Type/id`` of every entry of a Bundle already checked by ``bundle_shape_problem``."""
    return {
        f"{entry['resource'].get('resourceType')}/{entry['resource'].get('id')}"
        for entry in bundle.get("entry", [])
    }


def prefetch_value_problem(value: Any) -> str | None:
    """Why a prefetch value is neither null, a FHIR resource, nor a well-shaped Bundle."""
    if value is None:
        return None
    if not (isinstance(value, dict) and isinstance(value.get("resourceType"), str)):
        return "must be a FHIR resource, a Bundle, or null"
    return bundle_shape_problem(value) if value["resourceType"] == "Bundle" else None
