"""PatientFacts: the normalized clinical facts the rules read.

Everything here is frozen and FHIR-free. ``None`` always means "unknown", never "normal"; which
data could not be obtained at all is listed in ``PatientFacts.unavailable``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

from fhir_mappings.vocabulary import ConditionKind, DataCategory, Role


@dataclass(frozen=True)
class Measurement:
    """One numeric lab result in canonical units, with where it came from."""

    value: float
    unit: str
    when: datetime | None
    source: str
    code: str
    computed: bool = False
    method: str = ""
    reference_high: float | None = None
    # "<", "<=", ">" or ">=" when the lab sent a bound (">60"), not a number: ``value`` is then
    # the bound; ``above``/``below`` say what it proves (knowledge: "lab values as labs send them").
    comparator: str | None = None

    @property
    def shown(self) -> str:
        """The value as the lab reported it: "52", ">60"."""
        number = f"{round(self.value, 1 if abs(self.value) >= 10 else 2):g}"
        return f"{self.comparator or ''}{number}"

    def above(self, limit: float) -> bool | None:
        """Whether the true value is > ``limit``; None when a bound cannot tell."""
        v, c = self.value, self.comparator
        if c is None:
            return v > limit
        if (c == ">" and v >= limit) or (c == ">=" and v > limit):
            return True
        if c in ("<", "<=") and v <= limit:
            return False
        return None

    def below(self, limit: float) -> bool | None:
        """Whether the true value is < ``limit``; None when a bound cannot tell."""
        v, c = self.value, self.comparator
        if c is None:
            return v < limit
        if (c == "<" and v <= limit) or (c == "<=" and v < limit):
            return True
        if c in (">", ">=") and v >= limit:
            return False
        return None


@dataclass(frozen=True)
class BloodPressure:
    """One blood-pressure reading (either part may be missing)."""

    systolic: float | None
    diastolic: float | None
    when: datetime | None
    source: str


@dataclass(frozen=True)
class DoseAmount:
    """One administration of a dose: amount in mg and, when stated, the time of day.

    ``when`` is as written (an EventTiming code such as MORN, or a clock time "08:00:00");
    ``part`` is the part of the day it names (knowledge DAY_PARTS), so that an AM order and a
    PM order can be put side by side.
    """

    mg: float
    when: str | None = None
    part: str | None = None


@dataclass(frozen=True)
class Dosage:
    """The dosing regimen of an order, as far as it could be read."""

    doses: tuple[DoseAmount, ...]
    doses_per_day: float | None
    text: str


@dataclass(frozen=True)
class Medication:
    """A medication order (active, historical or draft) after terminology matching."""

    reference: str
    name: str
    ingredients: frozenset[str]
    roles: frozenset[Role]
    status: str | None
    authored_on: datetime | None
    is_draft: bool = False
    is_selected: bool = False
    # Position of a draft in the order session's draft list: what an update suggestion rewrites
    # (references can repeat across drafts, positions cannot).
    draft_index: int | None = None
    dosage: Dosage | None = None
    expected_supply_days: float | None = None
    number_of_repeats: int | None = None
    identified: bool = True  # False: no code, no name: the drug could not be told
    renews_prior: bool = False  # the order names a priorPrescription (a renewal)
    # The order's text read as voclosporin only because it is one letter off LUPKYNIS or
    # voclosporin (knowledge "names as EHRs write them"); cards say so. None: an exact match.
    matched_text: str | None = None
    # Route and dose form (routes.csv): "systemic", "non-systemic" or "unknown" (which fires,
    # like systemic); exposure_site names a non-systemic route (cutaneous, ophthalmic, otic).
    exposure: str = "unknown"
    exposure_site: str | None = None

    @property
    def is_non_systemic(self) -> bool:
        """Read as cutaneous, ophthalmic or otic only: spared the systemic interaction rules."""
        return self.exposure == "non-systemic"

    @property
    def is_voclosporin(self) -> bool:
        return Role.VOCLOSPORIN in self.roles

    @property
    def is_live_vaccine(self) -> bool:
        return Role.LIVE_VACCINE in self.roles

    def has_role(self, role: Role) -> bool:
        return role in self.roles

    @property
    def can_be_changed(self) -> bool:
        """A draft a suggestion can act on: it needs an id for the EHR to find it."""
        return self.is_draft and not self.reference.endswith("/?")


@dataclass(frozen=True)
class Immunization:
    """A recorded immunization (given, not ordered)."""

    reference: str
    name: str
    cvx_codes: tuple[str, ...]
    live: bool
    when: datetime | None
    status: str | None


@dataclass(frozen=True)
class Allergy:
    """A recorded allergy or intolerance, with whether it is to voclosporin.

    ``kind`` is AllergyIntolerance.type (``allergy`` or ``intolerance``; None when not stated);
    ``reactions`` names the manifestations (or the reaction's description) as recorded.
    """

    reference: str
    substance: str
    to_voclosporin: bool
    criticality: str | None
    severities: tuple[str, ...]
    verification: str | None
    clinical_status: str | None
    kind: str | None = None
    reactions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Condition:
    """A recorded condition and the kinds (``lupus-nephritis``) it matched.

    Also a status read from the coded answer of an Observation (pregnancy or breastfeeding
    status): then ``observed_on`` is the Observation's time and ``kinds`` what its answer says.
    """

    reference: str
    name: str
    kinds: frozenset[ConditionKind]
    clinical_status: str | None
    # Child-Pugh class ("A", "B" or "C") stated in the condition's text or stage; None: not stated.
    child_pugh_class: str | None = None
    observed_on: datetime | None = None

    @property
    def is_current(self) -> bool:
        """Not recorded as inactive, resolved or in remission (an unknown status counts)."""
        return self.clinical_status not in INACTIVE_CLINICAL_STATUSES


@dataclass(frozen=True)
class Unreadable:
    """A resource skipped because it failed validation; shown on the data-unavailable card."""

    reference: str
    reason: str


@dataclass(frozen=True)
class PatientFacts:
    """Everything the rules may read about one patient and one order session."""

    now: datetime
    patient_id: str
    # The draft orders are fully entered. False at order-select, which fires when an order is
    # picked and may come before its dose is entered (CDS Hooks order-select); the service sets it.
    order_entry_complete: bool = True
    birth_date: date | None = None
    sex: str | None = None
    draft_orders: tuple[Medication, ...] = ()
    medications: tuple[Medication, ...] = ()
    egfr: tuple[Measurement, ...] = ()
    creatinine: tuple[Measurement, ...] = ()
    blood_pressures: tuple[BloodPressure, ...] = ()
    potassium: tuple[Measurement, ...] = ()
    upcr: tuple[Measurement, ...] = ()
    conditions: tuple[Condition, ...] = ()
    immunizations: tuple[Immunization, ...] = ()
    allergies: tuple[Allergy, ...] = ()
    unavailable: frozenset[DataCategory] = frozenset()
    unavailable_reasons: tuple[tuple[DataCategory, str], ...] = ()
    unreadable: tuple[Unreadable, ...] = ()

    @property
    def age_years(self) -> int | None:
        """Age in whole years at ``now``; None when the birth date is unknown."""
        if self.birth_date is None:
            return None
        today = self.now.date()
        before_birthday = (today.month, today.day) < (self.birth_date.month, self.birth_date.day)
        return today.year - self.birth_date.year - int(before_birthday)

    @property
    def active_medications(self) -> tuple[Medication, ...]:
        """Recorded orders that are in force (not the drafts being signed)."""
        return tuple(m for m in self.medications if m.status in ACTIVE_STATUSES)

    @property
    def draft_voclosporin(self) -> tuple[Medication, ...]:
        """Voclosporin orders being written now (for order-select: the selected ones)."""
        return tuple(m for m in self.draft_orders if m.is_voclosporin and m.is_selected)

    @property
    def ordering_voclosporin(self) -> bool:
        """Voclosporin is among the orders being written (initiation or renewal)."""
        return bool(self.draft_voclosporin)

    @property
    def takes_voclosporin(self) -> bool:
        """Voclosporin is already in force, or drafted earlier in this ordering session."""
        return any(m.is_voclosporin for m in self.active_medications) or any(
            m.is_voclosporin and not m.is_selected for m in self.draft_orders
        )

    @property
    def is_renewal(self) -> bool:
        """A voclosporin order while a course is already running (or the order says it renews)."""
        return self.ordering_voclosporin and (
            any(m.is_voclosporin for m in self.active_medications)
            or any(m.renews_prior for m in self.draft_voclosporin)
        )

    @property
    def is_initiation(self) -> bool:
        return self.ordering_voclosporin and not self.is_renewal

    @property
    def voclosporin_involved(self) -> bool:
        """Voclosporin is being ordered, or the patient takes it: the service has a say."""
        return self.ordering_voclosporin or self.takes_voclosporin

    @property
    def course_start(self) -> datetime | None:
        return course_start(self.medications)

    def partners(self, role: Role, *, include_non_systemic: bool = False) -> tuple[Medication, ...]:
        """Orders with ``role`` that would be taken together with voclosporin.

        Ordering voclosporin meets every drafted and active order; a patient who already takes
        voclosporin meets the newly written (selected) orders. For the systemic interaction
        roles a cutaneous, ophthalmic or otic product is no partner (knowledge "route and dose
        form"; unknown route fires) unless ``include_non_systemic`` asks for it.
        """
        if self.ordering_voclosporin:
            pool = (*self.draft_orders, *self.active_medications)
        elif self.takes_voclosporin:
            pool = tuple(m for m in self.draft_orders if m.is_selected)
        else:
            return ()
        spare = role in SYSTEMIC_INTERACTION_ROLES and not include_non_systemic
        return tuple(
            m
            for m in pool
            if m.has_role(role) and not m.is_voclosporin and not (spare and m.is_non_systemic)
        )


# Roles whose interaction needs systemic exposure to the partner (knowledge "route and dose
# form": CYP3A4 inhibitors, inducers, P-gp, cyclophosphamide, second calcineurin inhibitor).
# Nephrotoxicity (PI 5.3) and hyperkalemia (PI 5.6) are systemic effects too: tobramycin eye
# drops or trimethoprim eye drops do not fire them.
SYSTEMIC_INTERACTION_ROLES = frozenset(
    {
        Role.NEPHROTOXIC,
        Role.HYPERKALEMIA_RISK,
        Role.ACE_INHIBITOR_OR_ARB,
        Role.STRONG_CYP3A4_INHIBITOR,
        Role.MODERATE_CYP3A4_INHIBITOR,
        Role.STRONG_CYP3A4_INDUCER,
        Role.MODERATE_CYP3A4_INDUCER,
        Role.P_GP_SUBSTRATE,
        Role.CYCLOPHOSPHAMIDE,
        Role.CALCINEURIN_INHIBITOR,
    }
)

ACTIVE_STATUSES = frozenset({"active", "on-hold"})
# Condition.clinicalStatus codes that say the condition is over (FHIR R4 condition-clinical).
INACTIVE_CLINICAL_STATUSES = frozenset({"inactive", "resolved", "remission"})
# Orders that belong to a voclosporin course (not drafts, cancelled or entered-in-error ones).
COURSE_STATUSES = frozenset({"active", "on-hold", "completed", "stopped"})


def course_start(medications: Iterable[Medication]) -> datetime | None:
    """Start of the voclosporin course: the earliest authoredOn of its orders (team decision,
    knowledge sheet: "pre-treatment baseline")."""
    dates = [
        m.authored_on
        for m in medications
        if m.is_voclosporin and m.authored_on and m.status in COURSE_STATUSES
    ]
    return min(dates) if dates else None
