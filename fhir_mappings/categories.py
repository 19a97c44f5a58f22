"""One table of the data categories: per category its prefetch key, resource types and kinds.

The prefetch key is the wire name (CDS Hooks 2.0 #prefetch-template) the discovery document,
the prefetch, the audit and the data-unavailable card use; the category itself is a plain enum
(``fhir_mappings.vocabulary.DataCategory``) so facts and rules never carry a wire name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fhir_mappings.codes import LOINC
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.vocabulary import DataCategory, ObservationKind

PATIENT_TOKEN = "{{context.patientId}}"
# In an Observation query: replaced by the LOINC codes of the category's kinds (observations.csv).
LOINC_CODES = "<loinc-codes>"


@dataclass(frozen=True)
class CategorySpec:
    """What one data category means on the wire and in FHIR."""

    category: DataCategory
    prefetch_key: str
    resource_types: frozenset[str]
    # The FHIR query (CDS Hooks prefetch template) that reads the category.
    query: str
    # Observation kinds (``observations.csv``) the category carries; () for the rest.
    observation_kinds: tuple[ObservationKind, ...] = ()
    # Without it the service cannot tell whether voclosporin is involved: 412 when it cannot be
    # obtained (spec #http-status-codes); any other category goes on the data-unavailable card.
    required: bool = False
    # Data an EHR may not hold at all (patient-reported, pharmacy): a key the EHR neither
    # prefetches nor lets the service fetch (no fhirServer) reads as "not offered", i.e. none,
    # not as "could not obtain" (decision "outside and OTC medications": "where the EHR offers
    # them"). A key that was sent as an error, or a fetch that failed, still is unavailable.
    absent_if_not_offered: bool = False


_OBSERVATION = frozenset({"Observation"})
_OBSERVATION_QUERY = (
    f"Observation?patient={PATIENT_TOKEN}&code={LOINC_CODES}&_sort=-date&_count=100"
)
K = ObservationKind

# In discovery order: the prefetch object lists its keys in this order.
CATEGORIES: dict[DataCategory, CategorySpec] = {
    spec.category: spec
    for spec in (
        CategorySpec(
            DataCategory.PATIENT,
            "patient",
            frozenset({"Patient"}),
            f"Patient/{PATIENT_TOKEN}",
            required=True,
        ),
        CategorySpec(
            DataCategory.MEDICATIONS,
            "medications",
            frozenset({"MedicationRequest", "Medication"}),
            # Completed, unknown and stopped orders too: a completed order is current while its
            # supply lasts, and the voclosporin course is told from its orders (facts.py).
            f"MedicationRequest?patient={PATIENT_TOKEN}"
            "&status=active,on-hold,completed,stopped,unknown&_count=100",
            required=True,
        ),
        # Outside and OTC medications (knowledge decisions, second round). Not required: a
        # voclosporin order or an interacting draft is judged on the orders when these are
        # missing (the data-unavailable card names them), and the statuses asked for are the
        # ones facts.is_current or the course may read.
        CategorySpec(
            DataCategory.MEDICATION_STATEMENTS,
            "medicationStatements",
            frozenset({"MedicationStatement", "Medication"}),
            f"MedicationStatement?patient={PATIENT_TOKEN}"
            "&status=active,on-hold,intended,completed,unknown,stopped&_count=100",
            absent_if_not_offered=True,
        ),
        CategorySpec(
            DataCategory.MEDICATION_DISPENSES,
            "medicationDispenses",
            frozenset({"MedicationDispense", "Medication"}),
            f"MedicationDispense?patient={PATIENT_TOKEN}"
            "&status=preparation,in-progress,on-hold,completed,unknown,stopped&_count=100",
            absent_if_not_offered=True,
        ),
        CategorySpec(
            DataCategory.CONDITIONS,
            "conditions",
            frozenset({"Condition"}),
            f"Condition?patient={PATIENT_TOKEN}&clinical-status=active&_count=100",
        ),
        CategorySpec(
            DataCategory.IMMUNIZATIONS,
            "immunizations",
            frozenset({"Immunization"}),
            f"Immunization?patient={PATIENT_TOKEN}&_count=100",
        ),
        CategorySpec(
            DataCategory.ALLERGIES,
            "allergies",
            frozenset({"AllergyIntolerance"}),
            f"AllergyIntolerance?patient={PATIENT_TOKEN}&_count=100",
        ),
        CategorySpec(DataCategory.EGFR, "egfr", _OBSERVATION, _OBSERVATION_QUERY, (K.EGFR,)),
        CategorySpec(
            DataCategory.CREATININE, "creatinine", _OBSERVATION, _OBSERVATION_QUERY, (K.CREATININE,)
        ),
        CategorySpec(
            DataCategory.BLOOD_PRESSURE,
            "bloodPressure",
            _OBSERVATION,
            _OBSERVATION_QUERY,
            (K.BP_PANEL, K.SYSTOLIC, K.DIASTOLIC),
        ),
        CategorySpec(
            DataCategory.POTASSIUM, "potassium", _OBSERVATION, _OBSERVATION_QUERY, (K.POTASSIUM,)
        ),
        CategorySpec(DataCategory.UPCR, "upcr", _OBSERVATION, _OBSERVATION_QUERY, (K.UPCR,)),
        # Coded-answer observations (pregnancy status, breastfeeding status): the populations
        # rules read their answers; a fetch failure is named, never read as "not pregnant".
        CategorySpec(
            DataCategory.PREGNANCY_LACTATION,
            "pregnancyLactation",
            _OBSERVATION,
            _OBSERVATION_QUERY,
            (K.PREGNANCY_STATUS, K.BREASTFEEDING_STATUS),
        ),
    )
}
_BY_PREFETCH_KEY = {spec.prefetch_key: spec.category for spec in CATEGORIES.values()}
_BY_OBSERVATION_KIND = {
    kind: spec.category for spec in CATEGORIES.values() for kind in spec.observation_kinds
}
REQUIRED_KEYS = frozenset(spec.prefetch_key for spec in CATEGORIES.values() if spec.required)
# The categories that hold medication records (orders, statements, dispenses) and the Medication
# resources they reference.
MEDICATION_CATEGORIES = (
    DataCategory.MEDICATIONS,
    DataCategory.MEDICATION_STATEMENTS,
    DataCategory.MEDICATION_DISPENSES,
)


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


def prefetch_templates(knowledge: Knowledge) -> dict[str, str]:
    """The discovery prefetch (prefetch key -> query): everything the rules read, by code where
    it helps (Observations are asked for by the LOINC codes of the category's kinds)."""
    templates = {}
    for spec in CATEGORIES.values():
        codes = ",".join(f"{LOINC}|{c}" for c in knowledge.loinc_codes(*spec.observation_kinds))
        templates[spec.prefetch_key] = spec.query.replace(LOINC_CODES, codes)
    return templates
