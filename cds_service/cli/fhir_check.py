"""FHIR R4 checks of the resources inside a hook request, for ``voclosporin-cds validate``.

``cds_service.spec_check`` checks the CDS Hooks envelope and stays stdlib-only; this module adds
what the service itself does with the FHIR inside (``fhir_mappings.validate``): every resource in
a context Bundle (``draftOrders``, ``medications``) or a prefetch value is validated against R4 and
reported with its path, so a draft the service would flag as invalid is an error here too.
The check validates whole resources (``whole_resource_problem``): stricter than the hook path,
whose gate validates only the elements the rules read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from cds_service.spec_check import Violation
from fhir_mappings.validate import whole_resource_problem


def request_resource_violations(document: object) -> list[Violation]:
    """Return one error per invalid FHIR resource in a hook request's context and prefetch."""
    if not isinstance(document, Mapping):
        return []
    violations: list[Violation] = []
    for section in ("context", "prefetch"):
        values = document.get(section)
        if not isinstance(values, Mapping):
            continue
        for key, value in values.items():
            for path, resource in _resources(f"{section}.{key}", value):
                problem = whole_resource_problem(resource)
                if problem is not None:
                    violations.append(Violation(path, problem, "error"))
    return violations


def _resources(path: str, value: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield each FHIR resource in ``value`` with its path; a Bundle's entries one by one."""
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return  # not a resource (patientId, selections, a failed prefetch null): not ours
    if value["resourceType"] != "Bundle" or not isinstance(value.get("entry"), list):
        yield path, value
        return
    entries = value["entry"]
    # The Bundle itself without its entries' resources, so each problem is reported once, at
    # the entry that has it.
    yield (
        path,
        {
            **value,
            "entry": [
                {k: v for k, v in entry.items() if k != "resource"}
                if isinstance(entry, dict)
                else entry
                for entry in entries
            ],
        },
    )
    for index, entry in enumerate(entries):
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            yield from _resources(f"{path}.entry[{index}].resource", entry["resource"])
