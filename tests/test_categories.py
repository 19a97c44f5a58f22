"""fhir_mappings.categories: one table from data category to prefetch key, types and kinds."""

from __future__ import annotations

from fhir_mappings.categories import (
    CATEGORIES,
    REQUIRED_KEYS,
    category_of_key,
    category_of_kind,
    prefetch_key,
)
from fhir_mappings.vocabulary import DataCategory, ObservationKind


def test_every_category_has_one_row_and_its_wire_name():
    """Each category is in the table once; prefetch keys are the CDS Hooks wire names."""
    assert set(CATEGORIES) == set(DataCategory)
    assert [prefetch_key(c) for c in DataCategory] == [
        "patient",
        "medications",
        "medicationStatements",
        "medicationDispenses",
        "egfr",
        "creatinine",
        "bloodPressure",
        "potassium",
        "upcr",
        "conditions",
        "immunizations",
        "allergies",
        "pregnancyLactation",
    ]
    assert all(category_of_key(prefetch_key(c)) is c for c in DataCategory)


def test_without_patient_or_medications_the_call_is_412():
    """Only patient and medications are required (the rest goes on the unavailable card)."""
    assert {"patient", "medications"} == REQUIRED_KEYS


def test_every_observation_kind_belongs_to_one_category():
    """Each kind the knowledge data may name is carried by exactly one category."""
    carried = [k for spec in CATEGORIES.values() for k in spec.observation_kinds]
    assert sorted(carried) == sorted(ObservationKind)
    assert category_of_kind("systolic") is DataCategory.BLOOD_PRESSURE
