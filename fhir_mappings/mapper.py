"""The state of one mapping run: the terminology, validation once per resource, the skip report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from fhir_mappings.codes import Terminology
from fhir_mappings.facts import Unreadable
from fhir_mappings.readers import Resource
from fhir_mappings.references import reference_of
from fhir_mappings.validate import validation_problem

T = TypeVar("T")


@dataclass
class Mapper:
    """What the per-resource mappings share while building one PatientFacts."""

    terminology: Terminology
    unreadable: list[Unreadable] = field(default_factory=list)
    _checked: set[int] = field(default_factory=set)

    def check(self, resource: Resource) -> None:
        """Validate a resource a rule reads, once; report it on the card when it fails."""
        if id(resource) in self._checked:
            return
        self._checked.add(id(resource))
        problem = validation_problem(resource)
        if problem:
            self.unreadable.append(Unreadable(reference_of(resource), problem))

    def checked(self, resource: Resource, item: T) -> T:
        """``item`` (read from ``resource``), after checking the resource."""
        self.check(resource)
        return item

    def skip(self, resource: Resource, reason: str) -> None:
        """Report ``resource`` as unusable for ``reason`` on the data-unavailable card."""
        self.unreadable.append(Unreadable(reference_of(resource), reason))
