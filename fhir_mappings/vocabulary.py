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
    # Co-medication that adds to a voclosporin risk (PI 5.3 nephrotoxicity, 5.6 hyperkalemia).
    NEPHROTOXIC = "nephrotoxic"
    HYPERKALEMIA_RISK = "hyperkalemia-risk"
    # Standard lupus nephritis care that also raises potassium: flagged only at high potassium.
    ACE_INHIBITOR_OR_ARB = "ace-inhibitor-or-arb"
    # Assigned by terminology matching (a live CVX code or a live-vaccine term, codes.py), never
    # written in drugs.csv.
    LIVE_VACCINE = "live-vaccine"


# Roles a drugs.csv row may carry: every role except the one terminology assigns.
DRUG_LIST_ROLES = frozenset(Role) - {Role.LIVE_VACCINE}

# Roles that make an order matter to voclosporin (PI 4, 5.3, 5.6, 5.9, 7; the duplicate-CNI rule):
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
        Role.NEPHROTOXIC,
        Role.HYPERKALEMIA_RISK,
        Role.ACE_INHIBITOR_OR_ARB,
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
    # Coded-answer observations: the answer (valueCodeableConcept) is matched in conditions.csv.
    PREGNANCY_STATUS = "pregnancy-status"
    BREASTFEEDING_STATUS = "breastfeeding-status"


class ConditionKind(StrEnum):
    """What a coded Condition is, or what a coded Observation answer says (``conditions.csv``).

    The answer kinds (``not-pregnant``, ``pregnancy-unknown``) are read only from the answer of a
    pregnancy-status Observation; on a Condition they mean nothing to any rule.
    """

    LUPUS_NEPHRITIS = "lupus-nephritis"
    # Cirrhosis or hepatic failure: LUPKYNIS PI 2 / 8 (knowledge 1.18) doses by Child-Pugh class.
    HEPATIC_IMPAIRMENT = "hepatic-impairment"
    # End-stage renal disease, and dependence on dialysis (knowledge 1.17: PK not known).
    END_STAGE_RENAL_DISEASE = "end-stage-renal-disease"
    DIALYSIS = "dialysis"
    PREGNANCY = "pregnancy"
    LACTATION = "lactation"
    NOT_PREGNANT = "not-pregnant"
    PREGNANCY_UNKNOWN = "pregnancy-unknown"


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
    # Renewal only (FEP 5.99.021 Prior-Approval Renewal Requirements 1 and 2).
    CLINICAL_BENEFIT = "documented-clinical-benefit"
    BENEFITS_OUTWEIGH_RISKS = "benefits-outweigh-risks"


# Which criteria each set of the policy has: the renewal asks for a documented benefit instead of
# active disease (FEP 5.99.021 Prior-Approval Renewal Requirements); the limits are "same as above".
INITIATION_CRITERIA = frozenset(Criterion) - {
    Criterion.CLINICAL_BENEFIT,
    Criterion.BENEFITS_OUTWEIGH_RISKS,
}
RENEWAL_CRITERIA = frozenset(Criterion) - {Criterion.ACTIVE_DISEASE}


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
    PREGNANCY_LACTATION = "pregnancy_lactation"
