"""FHIR references: a resource's own reference and the Medications that orders point at."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from fhir_mappings.readers import Resource, as_list, is_resource_of


def reference_of(resource: Resource) -> str:
    """``Type/id`` of a resource ("Resource/?" parts when they are missing)."""
    return f"{resource.get('resourceType', 'Resource')}/{resource.get('id', '?')}"


def medications_by_reference(resources: Iterable[Resource]) -> dict[str, Resource]:
    """The Medication resources among ``resources``, by ``Medication/id``."""
    result: dict[str, Resource] = {}
    for resource in resources:  # every order of a chart: the test written out (issue 14)
        if isinstance(resource, dict) and resource.get("resourceType") == "Medication":
            result[f"Medication/{resource.get('id')}"] = resource
    return result


def medication_reference(order: Resource) -> tuple[str | None, str | None]:
    """(reference, display) of an order's ``medicationReference``, each None when absent."""
    reference = order.get("medicationReference")
    if not isinstance(reference, dict):
        return None, None
    target, display = reference.get("reference"), reference.get("display")
    return (
        target if isinstance(target, str) else None,
        display if isinstance(display, str) else None,
    )


def contained(resource: Resource, local_reference: str) -> Resource | None:
    """The contained resource a local reference (``#id``) names, the last of repeats."""
    found = None
    for item in as_list(resource.get("contained")):
        if isinstance(item, dict) and item.get("id") == local_reference[1:]:
            found = item
    return found


def relative_reference(target: str) -> str:
    """``Type/id`` of a relative or absolute literal reference ("Medication/1", or a URL)."""
    return "/".join(target.rstrip("/").split("/")[-2:])


def missing_medications(
    orders: Sequence[Resource], base_url: str, id_pattern: re.Pattern[str]
) -> list[str]:
    """``Medication/id`` references of ``orders`` on ``base_url`` that no sent resource answers.

    Local (``#id``) references are contained; another server's Medication is never read from
    this one; ids that do not match ``id_pattern`` are not read at all.
    """
    present = {f"Medication/{r.get('id')}" for r in orders if is_resource_of(r, "Medication")}
    wanted: list[str] = []
    for order in orders:
        target = _target(order.get("medicationReference"))
        if target is None or target.startswith("#"):
            continue
        if target.startswith(("http://", "https://")):
            if not target.startswith(base_url + "/"):
                continue  # another server's Medication: never read it from this one
            target = target[len(base_url) + 1 :]
        kind, _, medication_id = target.partition("/")
        if kind != "Medication" or not id_pattern.match(medication_id):
            continue
        if target not in present and target not in wanted:
            wanted.append(target)
    return wanted


def _target(reference: Any) -> str | None:
    target = reference.get("reference") if isinstance(reference, dict) else None
    return target if isinstance(target, str) else None
