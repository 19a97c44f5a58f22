"""The closed vocabulary of the core: roles, kinds, payer criteria and data categories.

Each value is the exact string written in the data files (``drugs.csv`` ``role``,
``observations.csv`` and ``conditions.csv`` ``kind``, ``prior_authorization.toml`` ``id``). The
loader refuses a value that is not a member, so a typo in the data stops start-up. Code names
the members (``Role.CYCLOPHOSPHAMIDE``), never the strings; ``DataCategory`` values are internal
names, the wire names (prefetch keys) are in ``fhir_mappings.categories``.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """What a medication is, as far as voclosporin is concerned (``drugs.csv`` ``role``)."""

    VOCLOSPORIN = "voclosporin"
    STRONG_CYP3A4_INHIBITOR = "strong-cyp3a4-inhibitor"
    MODERATE_CYP3A4_INHIBITOR = "moderate-cyp3a4-inhibitor"
    STRONG_CYP3A4_INDUCER = "strong-cyp3a4-inducer"
    MODERATE_CYP3A4_INDUCER = "moderate-cyp3a4-inducer"
    CYCLOPHOSPHAMIDE = "cyclophosphamide"
    CALCINEURIN_INHIBITOR = "calcineurin-inhibitor"
    P_GP_SUBSTRATE = "p-gp-substrate"
    MYCOPHENOLATE = "mycophenolate"
    CORTICOSTEROID = "corticosteroid"
    # Assigned by terminology matching (a live CVX code or a live-vaccine term, codes.py), never
    # written in drugs.csv.
    LIVE_VACCINE = "live-vaccine"


# Roles a drugs.csv row may carry: every role except the one terminology assigns.
DRUG_LIST_ROLES = frozenset(Role) - {Role.LIVE_VACCINE}

# Roles that make an order matter to voclosporin (PI 4, 5.9, 7; the duplicate-CNI local rule):
# a drafted order with one of them is checked even when the medication list cannot be read.
INTERACTING_ROLES = frozenset(
    {
        Role.STRONG_CYP3A4_INHIBITOR,
        Role.MODERATE_CYP3A4_INHIBITOR,
        Role.STRONG_CYP3A4_INDUCER,
        Role.MODERATE_CYP3A4_INDUCER,
        Role.CYCLOPHOSPHAMIDE,
        Role.CALCINEURIN_INHIBITOR,
        Role.P_GP_SUBSTRATE,
        Role.LIVE_VACCINE,
    }
)


class ObservationKind(StrEnum):
    """What a LOINC-coded Observation measures (``observations.csv`` ``kind``)."""

    EGFR = "egfr"
    CREATININE = "creatinine"
    POTASSIUM = "potassium"
    BP_PANEL = "bp-panel"
    SYSTOLIC = "systolic"
    DIASTOLIC = "diastolic"
    UPCR = "upcr"


class ConditionKind(StrEnum):
    """What a coded Condition is (``conditions.csv`` ``kind``)."""

    LUPUS_NEPHRITIS = "lupus-nephritis"


class Criterion(StrEnum):
    """A payer prior-authorization criterion (``prior_authorization.toml`` ``id``).

    The data gives each its name, order and source; ``cds_service/rules/coverage.py`` has one
    checker per member.
    """

    AGE = "age"
    DIAGNOSIS = "lupus-nephritis-diagnosis"
    ACTIVE_DISEASE = "active-lupus-nephritis"
    BACKGROUND_THERAPY = "background-immunosuppression"
    NO_CYCLOPHOSPHAMIDE = "no-cyclophosphamide"
    MONITOR_EGFR_AND_BP = "monitor-egfr-and-blood-pressure"
    MONITOR_INFECTIONS = "monitor-infections-and-malignancies"
    NO_LIVE_VACCINES = "no-live-vaccines"
    QUANTITY_LIMIT = "quantity-limit"
    APPROVAL_DURATION = "approval-duration"


class DataCategory(StrEnum):
    """A slice of the chart that is fetched (or prefetched) as one unit.

    Its prefetch key, resource types and observation kinds are in ``fhir_mappings.categories``.
    """

    PATIENT = "patient"
    MEDICATIONS = "medications"
    # Outside and OTC medications (knowledge decisions, second round): optional, read when the
    # EHR offers them; they never decide on their own whether voclosporin is involved.
    MEDICATION_STATEMENTS = "medication_statements"
    MEDICATION_DISPENSES = "medication_dispenses"
    EGFR = "egfr"
    CREATININE = "creatinine"
    BLOOD_PRESSURE = "blood_pressure"
    POTASSIUM = "potassium"
    UPCR = "upcr"
    CONDITIONS = "conditions"
    IMMUNIZATIONS = "immunizations"
    ALLERGIES = "allergies"
