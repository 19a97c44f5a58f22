"""PatientFacts: the normalized clinical facts the rules read.

Everything here is frozen and FHIR-free. ``None`` always means "unknown", never "normal"; which
data could not be obtained at all is listed in ``PatientFacts.unavailable``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cached_property

from fhir_mappings.knowledge import CourseRules
from fhir_mappings.vocabulary import ConditionKind, DataCategory, Role

# Bound once: the rules test these roles of every medication many times a call, and a member
# looked up on its Enum class costs about 65 ns (issue 14).
_VOCLOSPORIN, _LIVE_VACCINE = Role.VOCLOSPORIN, Role.LIVE_VACCINE


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
    """A medication record after terminology matching: an order (active, historical or draft),
    a MedicationStatement or a MedicationDispense. ``authored_on`` is when its use starts (for a
    statement its effective start, for a dispense its hand-over)."""

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
    # Which record it is (MedicationRequest, MedicationStatement, MedicationDispense), its intent
    # (MedicationRequest only) and the last day its supply covers (``supply.supply_until``):
    # what decides whether it is current (``is_current``).
    record_type: str = "MedicationRequest"
    intent: str | None = None
    supply_until: date | None = None
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
        return _VOCLOSPORIN in self.roles

    @property
    def is_live_vaccine(self) -> bool:
        return _LIVE_VACCINE in self.roles

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
    # The local policy that joins orders into courses (rules.toml [course]); build_facts sets it.
    course_rules: CourseRules | None = None

    @property
    def age_years(self) -> int | None:
        """Age in whole years at ``now``; None when the birth date is unknown."""
        if self.birth_date is None:
            return None
        today = self.now.date()
        before_birthday = (today.month, today.day) < (self.birth_date.month, self.birth_date.day)
        return today.year - self.birth_date.year - int(before_birthday)

    @cached_property
    def current_medications(self) -> tuple[Medication, ...]:
        """Recorded medications in force today (``is_current``), not the drafts being signed."""
        today = self.now.date()
        return tuple(m for m in self.medications if is_current(m, today))

    @cached_property
    def draft_voclosporin(self) -> tuple[Medication, ...]:
        """Voclosporin orders being written now (for order-select: the selected ones)."""
        return tuple(m for m in self.draft_orders if m.is_voclosporin and m.is_selected)

    @cached_property
    def ordering_voclosporin(self) -> bool:
        """Voclosporin is among the orders being written (initiation or renewal)."""
        return bool(self.draft_voclosporin)

    @cached_property
    def takes_voclosporin(self) -> bool:
        """Voclosporin is already in force, or drafted earlier in this ordering session.

        A current MedicationStatement or MedicationDispense of voclosporin counts as much as an
        order: the patient takes it (an outside prescriber, a pharmacy record), so a drug drafted
        now meets it. Statements and dispenses alone never make a voclosporin order
        *required* data: they are optional prefetch keys, read when the EHR offers them.
        """
        return any(m.is_voclosporin for m in self.current_medications) or any(
            m.is_voclosporin and not m.is_selected for m in self.draft_orders
        )

    @cached_property
    def courses(self) -> tuple[Course, ...]:
        """Every voclosporin treatment course on record, oldest first (``treatment_courses``)."""
        if self.course_rules is None:
            raise ValueError("PatientFacts.course_rules is not set: courses cannot be told")
        return treatment_courses(self.medications, self.now, self.course_rules)

    @cached_property
    def course(self) -> Course | None:
        """The course a voclosporin order written now continues: the latest one, when it is
        current or ended at most ``max_gap_days`` ago; None when there is none (a new start)."""
        if not self.courses:
            return None
        latest = self.courses[-1]
        assert self.course_rules is not None  # courses raised otherwise
        if gap_days(latest.end, self.now.date()) <= self.course_rules.max_gap_days:
            return latest
        return None

    @cached_property
    def is_renewal(self) -> bool:
        """A voclosporin order that continues a course (current, or ended within the gap,
        whatever its orders' status), or while voclosporin is in force. A draft's
        ``priorPrescription`` counts only when no course is on record: a course that ended
        longer than the gap ago is a new start whatever the order says (decision "treatment
        course")."""
        return self.ordering_voclosporin and (
            self.course is not None
            or (not self.courses and any(m.renews_prior for m in self.draft_voclosporin))
            or any(m.is_voclosporin for m in self.current_medications)
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
        """Start of the course a voclosporin order now continues (None: none on record)."""
        return self.course.start if self.course is not None else None

    def partners(self, role: Role, *, include_non_systemic: bool = False) -> tuple[Medication, ...]:
        """Orders with ``role`` that would be taken together with voclosporin.

        Ordering voclosporin meets every drafted and active order; a patient who already takes
        voclosporin meets the newly written (selected) orders. For the systemic interaction
        roles a cutaneous, ophthalmic or otic product is no partner (knowledge "route and dose
        form"; unknown route fires) unless ``include_non_systemic`` asks for it.
        """
        return self._partners_by_role.get((role, include_non_systemic), ())

    @cached_property
    def _partners_by_role(self) -> dict[tuple[Role, bool], tuple[Medication, ...]]:
        """``partners`` of every role, keyed by (role, include_non_systemic), in pool order:
        read in one pass, as the rules ask for a dozen roles per call (issue 14)."""
        if self.ordering_voclosporin:
            pool: tuple[Medication, ...] = (*self.draft_orders, *self.current_medications)
        elif self.takes_voclosporin:
            pool = tuple(m for m in self.draft_orders if m.is_selected)
        else:
            return {}
        found: dict[tuple[Role, bool], list[Medication]] = {}
        for m in pool:
            if m.is_voclosporin:
                continue
            for role in m.roles:
                found.setdefault((role, True), []).append(m)
                if not (m.is_non_systemic and role in SYSTEMIC_INTERACTION_ROLES):
                    found.setdefault((role, False), []).append(m)
        return {key: tuple(medications) for key, medications in found.items()}


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

# Condition.clinicalStatus codes that say the condition is over (FHIR R4 condition-clinical).
INACTIVE_CLINICAL_STATUSES = frozenset({"inactive", "resolved", "remission"})


@dataclass(frozen=True)
class Course:
    """One voclosporin treatment course: a run of records whose spans touch or leave short gaps.

    ``start`` is the earliest start (authoredOn) of its records, ``end`` the last day any of them
    covers (today or later while one is current), ``orders`` its records oldest first.
    """

    start: datetime
    end: date
    orders: tuple[Medication, ...]
    current: bool

    @property
    def stopped(self) -> bool:
        """The course ended by a stop: nothing in it is current and its latest record is stopped."""
        return not self.current and bool(self.orders) and self.orders[-1].status == "stopped"


# Per record type: statuses that are current on their own, and statuses that are current while
# the supply covers today (knowledge decisions, second round, "which medications are current";
# FHIR R4 status value sets). "completed" means all actions were done, not that the patient
# stopped. A MedicationStatement "intended" is a drug the patient is about to take and a dispense
# being prepared is one about to be handed over: both current (co-administration ahead, PI 4).
# stopped, cancelled, entered-in-error, declined, not-taken and draft (a draft outside this
# session) never count.
IN_FORCE_STATUSES = {
    "MedicationRequest": frozenset({"active", "on-hold"}),
    "MedicationStatement": frozenset({"active", "on-hold", "intended"}),
    "MedicationDispense": frozenset({"preparation", "in-progress", "on-hold"}),
}
WHILE_SUPPLIED_STATUSES = frozenset({"completed", "unknown"})
# MedicationRequest intents that are no order of their own: current only while active.
PLAN_INTENTS = frozenset({"plan", "proposal", "option"})
# The earlier name of the MedicationRequest in-force statuses.
ACTIVE_STATUSES = IN_FORCE_STATUSES["MedicationRequest"]
# Records that belong to a voclosporin course when not current: finished or stopped ones.
COURSE_STATUSES = frozenset({"completed", "stopped", "unknown"})


def is_current(medication: Medication, today: date) -> bool:
    """The one decision of whether a recorded medication is in force on ``today``.

    In force by status (active, on-hold ...); or completed/unknown while its supply still covers
    today (``supply_until`` is the last covered day, so the day after it is not covered); a
    plan or proposal only while active. No supply stated: completed is over.
    """
    status = medication.status
    if medication.is_draft or status is None:
        return False
    if medication.record_type == "MedicationRequest" and medication.intent in PLAN_INTENTS:
        return status == "active"
    if status in IN_FORCE_STATUSES.get(medication.record_type, ACTIVE_STATUSES):
        return True
    return (
        status in WHILE_SUPPLIED_STATUSES
        and medication.supply_until is not None
        and today <= medication.supply_until
    )


def gap_days(end: date, start: date) -> int:
    """Uncovered days between a span's last covered day and the next start (touching: 0)."""
    return (start - end).days - 1


def treatment_courses(
    medications: Iterable[Medication], now: datetime, rules: CourseRules
) -> tuple[Course, ...]:
    """Voclosporin records -> courses, oldest first (knowledge decisions: "treatment course").

    A record's span runs from its start (authoredOn; a statement's effective start; a dispense's
    hand-over) to the last day its supply covers, else ``default_span_days`` (local policy); a
    current record runs at least to today. Spans that overlap, touch or leave at most
    ``max_gap_days`` uncovered days join. Records without a start cannot be placed and stay out.
    Requests, statements and dispenses all count: a course is known from whatever the chart holds.
    """
    today = now.date()
    spans: list[tuple[datetime, date, Medication, bool]] = []
    for m in medications:
        if not m.is_voclosporin or m.is_draft or m.authored_on is None:
            continue
        current = is_current(m, today)
        if not current and (
            m.status not in COURSE_STATUSES
            or (m.record_type == "MedicationRequest" and m.intent in PLAN_INTENTS)
        ):
            continue
        start = m.authored_on
        end = m.supply_until or start.date() + timedelta(days=rules.default_span_days - 1)
        spans.append((start, max(end, today) if current else end, m, current))
    spans.sort(key=lambda span: span[0])
    courses: list[Course] = []
    for start, end, m, current in spans:
        last = courses[-1] if courses else None
        if last is not None and gap_days(last.end, start.date()) <= rules.max_gap_days:
            courses[-1] = Course(
                last.start, max(last.end, end), (*last.orders, m), last.current or current
            )
        else:
            courses.append(Course(start, end, (m,), current))
    return tuple(courses)
