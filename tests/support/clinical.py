"""Small builders of PatientFacts for rule tests: readable, with only what a test cares about."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any

from fhir_mappings.facts import (
    Allergy,
    BloodPressure,
    Condition,
    Dosage,
    DoseAmount,
    Immunization,
    Measurement,
    Medication,
    PatientFacts,
)
from fhir_mappings.knowledge import CourseRules, load_knowledge

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def bid(mg: float) -> Dosage:
    return Dosage((DoseAmount(mg), DoseAmount(mg)), 2.0, f"{mg} mg twice daily")


def med(
    name: str,
    *roles: str,
    draft: bool = False,
    selected: bool = True,
    status: str | None = None,
    authored_days_ago: float | None = None,
    dosage: Dosage | None = None,
    ref: str | None = None,
    **extra: Any,
) -> Medication:
    reference = (
        ref or f"MedicationRequest/{name.split()[0].lower()}-{'draft' if draft else 'active'}"
    )
    return Medication(
        reference=reference,
        name=name,
        ingredients=frozenset(),
        roles=frozenset(roles),
        status=status or ("draft" if draft else "active"),
        authored_on=ago(authored_days_ago) if authored_days_ago is not None else None,
        is_draft=draft,
        is_selected=selected if draft else False,
        dosage=dosage,
        **extra,
    )


def voclosporin(draft: bool = True, dosage: Dosage | None = None, **kw: Any) -> Medication:
    return med(
        "LUPKYNIS 7.9 mg capsule",
        "voclosporin",
        draft=draft,
        dosage=dosage if dosage is not None else bid(23.7),
        **kw,
    )


def mmf(draft: bool = False) -> Medication:
    return med("mycophenolate mofetil 500 MG Oral Tablet", "mycophenolate", draft=draft)


def egfr(value: float, days_ago: float, computed: bool = False) -> Measurement:
    return Measurement(
        value,
        "mL/min/{1.73_m2}",
        ago(days_ago),
        f"Observation/egfr-{days_ago}",
        "98979-8",
        computed=computed,
        method="LOINC 98979-8",
    )


def potassium(value: float, days_ago: float = 3, high: float | None = None) -> Measurement:
    return Measurement(
        value,
        "mmol/L",
        ago(days_ago),
        "Observation/k",
        "2823-3",
        method="LOINC 2823-3",
        reference_high=high,
    )


def bp(systolic: float | None, diastolic: float | None, days_ago: float = 2) -> BloodPressure:
    return BloodPressure(systolic, diastolic, ago(days_ago), f"Observation/bp-{days_ago}")


def lupus_nephritis(status: str = "active") -> Condition:
    return Condition("Condition/ln", "Lupus nephritis", frozenset({"lupus-nephritis"}), status)


def live_vaccine_given(days_ago: float) -> Immunization:
    return Immunization("Immunization/mmr", "MMR", ("03",), True, ago(days_ago), "completed")


def allergy_to_voclosporin() -> Allergy:
    return Allergy(
        "AllergyIntolerance/a1", "voclosporin", True, "high", ("severe",), "confirmed", "active"
    )


@cache
def course_rules() -> CourseRules:
    """The course policy of the shipped knowledge (rules.toml [course])."""
    return load_knowledge().course


def facts(**overrides: Any) -> PatientFacts:
    """A 40-year-old woman with LN on MMF, normal recent labs, ordering voclosporin at order-sign.

    Every rule is quiet for this baseline except prior-authorization; tests change one thing.
    """
    base = PatientFacts(
        now=NOW,
        patient_id="p1",
        birth_date=date(1986, 5, 1),
        sex="female",
        draft_orders=(voclosporin(),),
        medications=(mmf(),),
        egfr=(egfr(88, 10),),
        blood_pressures=(bp(128, 82),),
        potassium=(potassium(4.2, high=5.1),),
        conditions=(lupus_nephritis(),),
        course_rules=course_rules(),
    )
    return replace(base, **overrides)
