"""One table of the data categories: per category its prefetch key, resource types and kinds.

The prefetch key is the wire name (CDS Hooks 2.0 #prefetch-template) the discovery document,
the prefetch, the audit and the data-unavailable card use; the category itself is a plain enum
(``fhir_mappings.vocabulary.DataCategory``) so facts and rules never carry a wire name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fhir_mappings.vocabulary import DataCategory, ObservationKind


@dataclass(frozen=True)
class CategorySpec:
    """What one data category means on the wire and in FHIR."""

    category: DataCategory
    prefetch_key: str
    resource_types: frozenset[str]
    # Observation kinds (``observations.csv``) the category carries; () for the rest.
    observation_kinds: tuple[ObservationKind, ...] = ()
    # Without it the service cannot tell whether voclosporin is involved: 412 when it cannot be
    # obtained (spec #http-status-codes); any other category goes on the data-unavailable card.
    required: bool = False


_OBSERVATION = frozenset({"Observation"})

CATEGORIES: dict[DataCategory, CategorySpec] = {
    spec.category: spec
    for spec in (
        CategorySpec(DataCategory.PATIENT, "patient", frozenset({"Patient"}), required=True),
        CategorySpec(
            DataCategory.MEDICATIONS,
            "medications",
            frozenset({"MedicationRequest", "Medication"}),
            required=True,
        ),
        CategorySpec(DataCategory.EGFR, "egfr", _OBSERVATION, (ObservationKind.EGFR,)),
        CategorySpec(
            DataCategory.CREATININE, "creatinine", _OBSERVATION, (ObservationKind.CREATININE,)
        ),
        CategorySpec(
            DataCategory.BLOOD_PRESSURE,
            "bloodPressure",
            _OBSERVATION,
            (ObservationKind.BP_PANEL, ObservationKind.SYSTOLIC, ObservationKind.DIASTOLIC),
        ),
        CategorySpec(
            DataCategory.POTASSIUM, "potassium", _OBSERVATION, (ObservationKind.POTASSIUM,)
        ),
        CategorySpec(DataCategory.UPCR, "upcr", _OBSERVATION, (ObservationKind.UPCR,)),
        CategorySpec(DataCategory.CONDITIONS, "conditions", frozenset({"Condition"})),
        CategorySpec(DataCategory.IMMUNIZATIONS, "immunizations", frozenset({"Immunization"})),
        CategorySpec(DataCategory.ALLERGIES, "allergies", frozenset({"AllergyIntolerance"})),
    )
}
_BY_PREFETCH_KEY = {spec.prefetch_key: spec.category for spec in CATEGORIES.values()}
_BY_OBSERVATION_KIND = {
    kind: spec.category for spec in CATEGORIES.values() for kind in spec.observation_kinds
}
REQUIRED_KEYS = frozenset(spec.prefetch_key for spec in CATEGORIES.values() if spec.required)


def prefetch_key(category: DataCategory) -> str:
    """The wire name of ``category`` (the prefetch key), as cards and the audit show it."""
    return CATEGORIES[category].prefetch_key


def category_of_key(key: str) -> DataCategory:
    """The category a prefetch key names; KeyError for a key the service does not define."""
    return _BY_PREFETCH_KEY[key]


def category_of_kind(kind: ObservationKind) -> DataCategory:
    """The category whose results carry observation ``kind`` (a BP component: blood pressure)."""
    return _BY_OBSERVATION_KIND[kind]


def observation_categories() -> Iterator[CategorySpec]:
    """The categories that hold Observations, in table order."""
    return (spec for spec in CATEGORIES.values() if spec.observation_kinds)
