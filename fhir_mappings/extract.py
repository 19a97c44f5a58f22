"""FHIR R4 resources (raw JSON) -> PatientFacts, one function per resource type.

The hook path is hot: parsing every resource into fhir.resources models costs ~0.3 ms each, so
resources are first picked from the raw JSON by code (only the ones a rule reads), then only those
are validated with the R4B models. A resource that fails validation is skipped and reported on the
data-unavailable card; it never fails the request.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any, TypeVar

from pydantic import ValidationError

from fhir_mappings.codes import UCUM, Coding, Terminology
from fhir_mappings.egfr import ckd_epi_2021
from fhir_mappings.facts import (
    Allergy,
    BloodPressure,
    Condition,
    DataCategory,
    Dosage,
    DoseAmount,
    Immunization,
    Measurement,
    Medication,
    PatientFacts,
    Unreadable,
    course_start,
)

Resource = dict[str, Any]
Dated = TypeVar("Dated", Measurement, BloodPressure)
T = TypeVar("T")

# Observation statuses that carry no usable result.
_UNUSABLE_OBSERVATION = frozenset({"entered-in-error", "cancelled", "registered"})
_UNUSABLE_VERIFICATION = frozenset({"refuted", "entered-in-error"})
_INACTIVE_CLINICAL = frozenset({"inactive", "resolved", "remission"})
# UCUM/common spellings of the units the rules read.
_MG_DL = frozenset({"mg/dl"})
_UMOL_L = frozenset({"umol/l", "µmol/l", "μmol/l", "micromol/l"})
_MMOL_L = frozenset({"mmol/l", "meq/l", "meq/liter"})
_CAPSULE = frozenset({"capsule", "capsules", "cap", "caps", "{capsule}", "{capsules}", "{cap}"})
# HL7 v3 GTSAbbreviation timing codes -> administrations per day.
_TIMING_CODES = {
    "QD": 1.0,
    "BID": 2.0,
    "TID": 3.0,
    "QID": 4.0,
    "Q12H": 2.0,
    "Q8H": 3.0,
    "Q6H": 4.0,
    "Q4H": 6.0,
    "QOD": 0.5,
    "AM": 1.0,
    "PM": 1.0,
    "WK": 1 / 7,
}
_PERIOD_DAYS = {
    "s": 1 / 86400,
    "min": 1 / 1440,
    "h": 1 / 24,
    "d": 1.0,
    "wk": 7.0,
    "mo": 30.0,
    "a": 365.0,
}


# ----------------------------------------------------------------------------------------------
# Small readers over raw JSON


def codings(concept: Any) -> list[Coding]:
    """Codings of a CodeableConcept, tolerating junk."""
    if not isinstance(concept, dict):
        return []
    result = []
    for c in _list(concept.get("coding")):
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            result.append(
                Coding(str(c.get("system") or ""), c["code"], str(c.get("display") or ""))
            )
    return result


def concept_texts(concept: Any) -> list[str]:
    if not isinstance(concept, dict):
        return []
    texts = [concept["text"]] if isinstance(concept.get("text"), str) else []
    texts += [c.display for c in codings(concept) if c.display]
    return texts


def concept_name(concept: Any) -> str:
    texts = concept_texts(concept)
    return texts[0] if texts else "(unnamed)"


def parse_datetime(value: Any) -> datetime | None:
    """FHIR date/dateTime/instant (partial dates allowed) -> aware UTC datetime."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    try:
        if len(text) == 4:
            return datetime(int(text), 1, 1, tzinfo=UTC)
        if len(text) == 7:
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 shifted past the range
        return None


def parse_date(value: Any) -> date | None:
    parsed = parse_datetime(value)
    return parsed.date() if parsed else None


def reference_of(resource: Resource) -> str:
    return f"{resource.get('resourceType', 'Resource')}/{resource.get('id', '?')}"


def observation_time(resource: Resource) -> datetime | None:
    when = parse_datetime(resource.get("effectiveDateTime")) or parse_datetime(
        resource.get("effectiveInstant")
    )
    period = resource.get("effectivePeriod")
    if when is None and isinstance(period, dict):
        when = parse_datetime(period.get("end")) or parse_datetime(period.get("start"))
    return when or parse_datetime(resource.get("issued"))


def _object(value: Any) -> dict[str, Any]:
    """A JSON object field, or {} when it is missing or of the wrong type."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    """A JSON array field, or [] when it is missing or of the wrong type (raw JSON is unchecked)."""
    return value if isinstance(value, list) else []


def _code(value: Any) -> str | None:
    """A FHIR code field, or None when it is missing or not a string (lists are unhashable)."""
    return value if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    """A JSON number as a finite float; huge integers, NaN and Infinity are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range (json.loads makes those)
        return None
    return number if math.isfinite(number) else None


def _quantity(value: Any) -> tuple[float, str, str | None] | None:
    """(value, unit, comparator) of a Quantity, or None."""
    if not isinstance(value, dict):
        return None
    number = _number(value.get("value"))
    if number is None:
        return None
    unit = value.get("code") if value.get("system") == UCUM else None
    unit = unit or value.get("unit") or value.get("code") or ""
    comparator = value.get("comparator") if isinstance(value.get("comparator"), str) else None
    return number, str(unit), comparator


# ----------------------------------------------------------------------------------------------
# Validation gate


@cache
def _model(resource_type: str) -> Any:
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    return getattr(module, resource_type)


# One resource of each validated type using the nested elements the rules read: validating them
# once at start-up builds pydantic's lazily compiled validators (~100 ms for the first
# MedicationRequest), so the first hook call does not pay for it.
_WARM_UP: tuple[Resource, ...] = (
    {
        "resourceType": "Patient",
        "id": "w",
        "gender": "female",
        "birthDate": "1980-01-01",
        "name": [{"family": "w", "given": ["w"]}],
        "identifier": [{"system": "urn:w", "value": "w"}],
        "telecom": [{"system": "phone", "value": "1"}],
        "address": [{"city": "w"}],
        "extension": [{"url": "urn:w", "valueCode": "F"}],
    },
    {
        "resourceType": "Observation",
        "id": "w",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "BP"},
        "subject": {"reference": "Patient/w"},
        "effectiveDateTime": "2026-01-01T00:00:00Z",
        "issued": "2026-01-01T00:00:00Z",
        "valueQuantity": {
            "value": 1,
            "unit": "mg/dL",
            "system": UCUM,
            "code": "mg/dL",
            "comparator": ">",
        },
        "referenceRange": [{"low": {"value": 1}, "high": {"value": 2}}],
        "component": [{"code": {"text": "c"}, "valueQuantity": {"value": 1}}],
    },
    {
        "resourceType": "MedicationRequest",
        "id": "w",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/w"},
        "authoredOn": "2026-01-01",
        "contained": [
            {
                "resourceType": "Medication",
                "id": "m",
                "code": {"text": "m"},
                "ingredient": [{"itemCodeableConcept": {"text": "i"}}],
            }
        ],
        "medicationReference": {"reference": "#m", "display": "m"},
        "priorPrescription": {"reference": "MedicationRequest/p"},
        "dosageInstruction": [
            {
                "text": "t",
                "sequence": 1,
                "route": {"text": "oral"},
                "timing": {
                    "repeat": {"frequency": 2, "period": 1, "periodUnit": "d", "when": ["MORN"]},
                    "code": {"coding": [{"code": "BID"}]},
                },
                "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "mg"}}],
            }
        ],
        "dispenseRequest": {
            "quantity": {"value": 1},
            "numberOfRepeatsAllowed": 1,
            "expectedSupplyDuration": {"value": 30, "unit": "d"},
            "validityPeriod": {"start": "2026-01-01"},
        },
    },
    {"resourceType": "Medication", "id": "w", "code": {"text": "m"}},
    {
        "resourceType": "Condition",
        "id": "w",
        "subject": {"reference": "Patient/w"},
        "code": {"text": "c"},
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "verificationStatus": {"coding": [{"code": "confirmed"}]},
    },
    {
        "resourceType": "Immunization",
        "id": "w",
        "status": "completed",
        "vaccineCode": {"text": "v"},
        "patient": {"reference": "Patient/w"},
        "occurrenceDateTime": "2026-01-01",
    },
    {
        "resourceType": "AllergyIntolerance",
        "id": "w",
        "patient": {"reference": "Patient/w"},
        "code": {"text": "a"},
        "criticality": "high",
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "reaction": [
            {"substance": {"text": "s"}, "manifestation": [{"text": "m"}], "severity": "severe"}
        ],
    },
)


def warm_up() -> None:
    """Build the R4B validators at start-up so the first hook call does not pay for it."""
    for resource in _WARM_UP:
        problem = validation_problem(resource)
        if problem:  # a broken sample would mean the models changed under us
            raise RuntimeError(f"FHIR model warm-up failed: {problem}")


def validation_problem(resource: Resource) -> str | None:
    """Validate one picked resource against the R4B model; return a short reason or None."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type.isalpha():
        return "resource has no valid resourceType"
    try:
        model = _model(resource_type)
    except (ImportError, AttributeError):
        return f"unknown FHIR resource type {resource_type!r}"
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return (
            f"invalid FHIR R4 {resource_type} ({exc.error_count()} problem(s); first at "
            f"{where or 'root'}: {first.get('msg', 'invalid')})"
        )
    except (ValueError, TypeError) as exc:
        return f"invalid FHIR R4 {resource_type}: {exc}"
    except RecursionError:  # extensions nested ~120 deep exhaust the model validator's stack
        return f"invalid FHIR R4 {resource_type}: nested too deeply to validate"
    return None


def bundle_resources(bundle: Any) -> list[Resource]:
    """The resources of a Bundle (or a single resource), skipping search outcomes."""
    if not isinstance(bundle, dict):
        return []
    if bundle.get("resourceType") != "Bundle":
        return [bundle] if isinstance(bundle.get("resourceType"), str) else []
    result = []
    entries = bundle.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue
        result.append(entry["resource"])
    return result


# ----------------------------------------------------------------------------------------------
# The mapping


@dataclass
class _Mapper:
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
        self.unreadable.append(Unreadable(reference_of(resource), reason))

    # -- medications ---------------------------------------------------------------------------

    def medication(
        self,
        resource: Resource,
        medications_by_ref: Mapping[str, Resource],
        *,
        draft: bool = False,
        selected: bool = False,
    ) -> Medication:
        concept, extra_texts = self._medication_concept(resource, medications_by_ref)
        concept_codings, texts = codings(concept), concept_texts(concept) + extra_texts
        match = self.terminology.match_medication(concept_codings, texts)
        dispense = _object(resource.get("dispenseRequest"))
        quantity = _quantity(dispense.get("quantity"))
        supply = _quantity(dispense.get("expectedSupplyDuration"))
        repeats = dispense.get("numberOfRepeatsAllowed")
        name = texts[0] if texts else "(unidentified medication)"
        return Medication(
            reference=reference_of(resource),
            name=name,
            ingredients=match.ingredients,
            roles=match.roles,
            status=resource.get("status") if isinstance(resource.get("status"), str) else None,
            authored_on=parse_datetime(resource.get("authoredOn")),
            is_draft=draft,
            is_selected=selected,
            dosage=self.dosage(resource) if match.roles else None,
            live_vaccine_codes=match.live_vaccine_codes,
            dispense_quantity=quantity[0] if quantity else None,
            dispense_unit=quantity[1] if quantity else None,
            expected_supply_days=_to_days(supply) if supply else None,
            number_of_repeats=repeats if isinstance(repeats, int) else None,
            resource=resource if draft else None,
            identified=bool(concept_codings or texts),
            renews_prior=bool(resource.get("priorPrescription")),
        )

    def _medication_concept(
        self, resource: Resource, medications_by_ref: Mapping[str, Resource]
    ) -> tuple[Any, list[str]]:
        """The medication concept of a request: inline, contained, or a referenced Medication."""
        for key in ("medicationCodeableConcept", "vaccineCode"):
            if isinstance(resource.get(key), dict):
                return resource[key], []
        reference = resource.get("medicationReference")
        if not isinstance(reference, dict):
            return None, []
        extra = [reference["display"]] if isinstance(reference.get("display"), str) else []
        target = reference.get("reference")
        medication: Resource | None = None
        if isinstance(target, str) and target.startswith("#"):
            for contained in _list(resource.get("contained")):
                if isinstance(contained, dict) and contained.get("id") == target[1:]:
                    medication = contained
        elif isinstance(target, str):
            # "Medication/1", or an absolute URL ending in it.
            medication = medications_by_ref.get("/".join(target.rstrip("/").split("/")[-2:]))
        if medication is None:
            named = repr(target) if isinstance(target, str) else "(no reference)"
            shown = f" (display: {extra[0]!r})" if extra else ""
            self.skip(
                resource,
                f"medicationReference {named} is not in the chart: the drug "
                f"could not be identified{shown}",
            )
            return None, extra
        for ingredient in _list(medication.get("ingredient")):
            if isinstance(ingredient, dict):
                extra += concept_texts(ingredient.get("itemCodeableConcept"))
                item = ingredient.get("itemReference")
                if isinstance(item, dict) and isinstance(item.get("display"), str):
                    extra.append(item["display"])
        return medication.get("code"), extra

    def dosage(self, resource: Resource) -> Dosage | None:
        """Read dose per administration (mg) and administrations per day."""
        instructions = [d for d in _list(resource.get("dosageInstruction")) if isinstance(d, dict)]
        if not instructions:
            return None
        capsule_mg = self.terminology.knowledge.dose.capsule_mg
        doses: list[DoseAmount] = []
        per_day_total: float | None = 0.0
        texts = []
        for instruction in instructions:
            if isinstance(instruction.get("text"), str):
                texts.append(instruction["text"])
            per_day, when = _frequency(instruction.get("timing"))
            mg = _dose_mg(instruction, capsule_mg)
            if per_day is None or per_day_total is None:
                per_day_total = None
            else:
                per_day_total += per_day
            if mg is None:
                continue
            if when:
                doses.extend(DoseAmount(mg, w) for w in when)
            elif per_day is not None and per_day == int(per_day) and per_day <= 6:
                doses.extend(DoseAmount(mg) for _ in range(int(per_day)))
            else:
                doses.append(DoseAmount(mg))
        return Dosage(tuple(doses), per_day_total, "; ".join(texts))

    # -- observations --------------------------------------------------------------------------

    def measurement(self, resource: Resource, kind: str, code: str) -> Measurement | None:
        """One lab result of ``kind`` (LOINC ``code``) in canonical units, or None."""
        if _code(resource.get("status")) in _UNUSABLE_OBSERVATION:
            return None
        quantity = _quantity(resource.get("valueQuantity"))
        if quantity is None:
            self.skip(resource, f"{kind} result has no numeric valueQuantity")
            return None
        value, unit, comparator = quantity
        if kind == "creatinine":
            converted = self._creatinine_mg_dl(value, unit)
            if converted is None:
                self.skip(resource, f"creatinine unit {unit!r} not recognised (mg/dL or umol/L)")
                return None
            value, unit = converted, "mg/dL"
        if kind == "potassium" and unit.lower() not in _MMOL_L:
            self.skip(resource, f"potassium unit {unit!r} not recognised (mmol/L)")
            return None
        method = f"LOINC {code}" + (f", reported as '{comparator}{value:g}'" if comparator else "")
        return Measurement(
            value=value,
            unit=unit,
            when=observation_time(resource),
            source=reference_of(resource),
            code=code,
            method=method,
            reference_high=_reference_high(resource),
        )

    def _creatinine_mg_dl(self, value: float, unit: str) -> float | None:
        lowered = unit.lower()
        if lowered in _MG_DL:
            return value
        if lowered in _UMOL_L:
            return value / self.terminology.knowledge.creatinine_umol_per_mg_dl
        return None

    def blood_pressures(self, resource: Resource, kind: str) -> Iterator[BloodPressure]:
        if _code(resource.get("status")) in _UNUSABLE_OBSERVATION:
            return
        when, source = observation_time(resource), reference_of(resource)
        if kind == "bp-panel":
            parts: dict[str, float] = {}
            for component in _list(resource.get("component")):
                if not isinstance(component, dict):
                    continue
                part = self.terminology.observation_kind(codings(component.get("code")))
                quantity = _quantity(component.get("valueQuantity"))
                if part in ("systolic", "diastolic") and quantity:
                    parts[part] = quantity[0]
            if parts:
                yield BloodPressure(parts.get("systolic"), parts.get("diastolic"), when, source)
            return
        quantity = _quantity(resource.get("valueQuantity"))
        if quantity is None:
            self.skip(resource, f"{kind} blood pressure has no numeric valueQuantity")
        elif kind == "systolic":
            yield BloodPressure(quantity[0], None, when, source)
        else:
            yield BloodPressure(None, quantity[0], when, source)

    # -- other resources -----------------------------------------------------------------------

    def condition(self, resource: Resource) -> Condition | None:
        status = _status_code(resource.get("clinicalStatus"))
        verification = _status_code(resource.get("verificationStatus"))
        if verification in _UNUSABLE_VERIFICATION:
            return None
        concept = resource.get("code")
        kinds = self.terminology.condition_kinds(codings(concept), concept_texts(concept))
        return Condition(reference_of(resource), concept_name(concept), kinds, status)

    def immunization(self, resource: Resource) -> Immunization | None:
        status = resource.get("status")
        if status in ("not-done", "entered-in-error"):
            return None
        concept = resource.get("vaccineCode")
        match = self.terminology.match_medication(codings(concept), concept_texts(concept))
        return Immunization(
            reference=reference_of(resource),
            name=concept_name(concept),
            cvx_codes=tuple(c.code for c in codings(concept) if "cvx" in c.system),
            live=match.is_live_vaccine,
            when=parse_datetime(resource.get("occurrenceDateTime"))
            or parse_datetime(resource.get("recorded")),
            status=status if isinstance(status, str) else None,
        )

    def allergy(self, resource: Resource) -> Allergy | None:
        clinical = _status_code(resource.get("clinicalStatus"))
        verification = _status_code(resource.get("verificationStatus"))
        if verification in _UNUSABLE_VERIFICATION or clinical in _INACTIVE_CLINICAL:
            return None
        texts = concept_texts(resource.get("code"))
        severities: list[str] = []
        for reaction in _list(resource.get("reaction")):
            if not isinstance(reaction, dict):
                continue
            texts += concept_texts(reaction.get("substance"))
            if isinstance(reaction.get("severity"), str):
                severities.append(reaction["severity"])
        match = self.terminology.match_medication(codings(resource.get("code")), texts)
        criticality = resource.get("criticality")
        return Allergy(
            reference=reference_of(resource),
            substance=([*texts, "(unnamed substance)"])[0],
            to_voclosporin="voclosporin" in match.roles,
            criticality=criticality if isinstance(criticality, str) else None,
            severities=tuple(severities),
            verification=verification,
            clinical_status=clinical,
        )


def _status_code(concept: Any) -> str | None:
    for coding in codings(concept):
        return coding.code
    return None


def _reference_high(resource: Resource) -> float | None:
    for reference_range in _list(resource.get("referenceRange")):
        if isinstance(reference_range, dict):
            high = _quantity(reference_range.get("high"))
            if high is not None:
                return high[0]
    return None


def _to_days(quantity: tuple[float, str, str | None]) -> float | None:
    value, unit, _ = quantity
    factor = _PERIOD_DAYS.get(unit.lower().rstrip("s") if unit not in _PERIOD_DAYS else unit)
    named = {"day": 1.0, "week": 7.0, "month": 30.0, "year": 365.0}
    factor = factor or named.get(unit.lower().rstrip("s"))
    return value * factor if factor else None


def _frequency(timing: Any) -> tuple[float | None, tuple[str, ...]]:
    """Administrations per day and the named times of day (MORN, EVE...) of a Timing."""
    if not isinstance(timing, dict):
        return None, ()
    repeat = _object(timing.get("repeat"))
    when = tuple(w for w in _list(repeat.get("when")) if isinstance(w, str))
    frequency = _number(repeat.get("frequency"))
    period = _number(repeat.get("period"))
    unit = repeat.get("periodUnit")
    if frequency is not None and period and isinstance(unit, str) and unit in _PERIOD_DAYS:
        days = period * _PERIOD_DAYS[unit]
        per_day = frequency / days if days > 0 else math.inf
        return (per_day if math.isfinite(per_day) else None), when
    time_of_day = [t for t in _list(repeat.get("timeOfDay")) if isinstance(t, str)]
    if when or time_of_day:
        return float(len(when) or len(time_of_day)), when
    for coding in codings(timing.get("code")):
        if coding.code.upper() in _TIMING_CODES:
            return _TIMING_CODES[coding.code.upper()], when
    return None, when


def _dose_mg(instruction: Resource, capsule_mg: float) -> float | None:
    # R4 puts the dose under doseAndRate; STU3 (still sent by some clients) on the Dosage.
    places = [d for d in _list(instruction.get("doseAndRate")) if isinstance(d, dict)]
    for dose_and_rate in [*places, instruction]:
        quantity = _quantity(dose_and_rate.get("doseQuantity"))
        if quantity is None:
            continue
        value, unit, _ = quantity
        if unit.lower() == "mg":
            return value
        if unit.lower() in _CAPSULE:
            return round(value * capsule_mg, 2)
    return None


def build_facts(
    *,
    terminology: Terminology,
    now: datetime,
    hook: str,
    patient_id: str,
    patient: Resource | None,
    chart: Mapping[DataCategory, Sequence[Resource]],
    draft_orders: Sequence[Resource],
    selections: frozenset[str] | None,
    unavailable: Mapping[DataCategory, str],
) -> PatientFacts:
    """Turn the chart (resources per category) and the draft orders into PatientFacts.

    Only what a rule reads is kept, and only that is validated: medications with a role, the
    latest result of each lab (and the latest eGFR/creatinine at the start of a voclosporin
    course), live vaccines, voclosporin allergies, lupus-nephritis conditions. Validation reports,
    it never hides: a resource a rule reads that fails it is still read (defensively) and named on
    the data-unavailable card, because dropping it could turn a warning into silence.
    """
    mapper = _Mapper(terminology)
    medications_by_ref = _medications_by_reference(
        [*chart.get(DataCategory.MEDICATIONS, ()), *draft_orders]
    )
    birth_date, sex = None, None
    if patient is not None:
        mapper.check(patient)
        birth_date = parse_date(patient.get("birthDate"))
        gender = patient.get("gender")
        sex = gender if gender in ("female", "male") else None

    drafts = []
    for r in draft_orders:
        if not isinstance(r.get("resourceType"), str) or r["resourceType"] not in DRAFT_TYPES:
            continue
        mapper.check(r)
        selected = selections is None or reference_of(r) in selections
        drafts.append(mapper.medication(r, medications_by_ref, draft=True, selected=selected))
    medications = [
        mapper.checked(r, m)
        for r in _unique(chart.get(DataCategory.MEDICATIONS, ()), "MedicationRequest")
        if (m := mapper.medication(r, medications_by_ref)).roles
    ]
    anchors = (None, course_start(medications))

    series = _observation_series(mapper, chart, now)
    latest_only: tuple[datetime | None, ...] = (None,)

    def measure(result: _Result) -> Measurement | None:
        return mapper.measurement(result.resource, result.kind, result.code)

    def reading(part: str) -> Callable[[_Result], BloodPressure | None]:
        def read(result: _Result) -> BloodPressure | None:
            for bp in mapper.blood_pressures(result.resource, result.kind):
                if getattr(bp, part) is not None:
                    return bp
            return None

        return read

    egfr_series = _pick(series.get("egfr", []), anchors, measure) + _computed_egfr(
        mapper, series.get("egfr", []), series.get("creatinine", []), anchors, birth_date, sex
    )
    bps = series.get("bp", [])
    blood_pressures = _pick(bps, latest_only, reading("systolic")) + _pick(
        bps, latest_only, reading("diastolic")
    )

    return PatientFacts(
        now=now,
        patient_id=patient_id,
        hook=hook,
        birth_date=birth_date,
        sex=sex,
        draft_orders=tuple(drafts),
        medications=tuple(medications),
        egfr=_latest(mapper, egfr_series, anchors),
        creatinine=_latest(mapper, _pick(series.get("creatinine", []), anchors, measure), anchors),
        blood_pressures=tuple(
            sorted({mapper.checked(r, bp) for bp, r in blood_pressures}, key=_by_time)
        ),
        potassium=_latest(mapper, _pick(series.get("potassium", []), latest_only, measure)),
        upcr=_latest(mapper, _pick(series.get("upcr", []), latest_only, measure)),
        conditions=tuple(
            mapper.checked(r, c)
            for r in _unique(chart.get(DataCategory.CONDITIONS, ()), "Condition")
            if (c := mapper.condition(r)) and c.kinds
        ),
        immunizations=tuple(
            mapper.checked(r, i)
            for r in _unique(chart.get(DataCategory.IMMUNIZATIONS, ()), "Immunization")
            if (i := mapper.immunization(r)) and i.live
        ),
        allergies=tuple(
            mapper.checked(r, a)
            for r in _unique(chart.get(DataCategory.ALLERGIES, ()), "AllergyIntolerance")
            if (a := mapper.allergy(r)) and a.to_voclosporin
        ),
        unavailable=frozenset(unavailable),
        unavailable_reasons=tuple(sorted(unavailable.items())),
        unreadable=tuple(mapper.unreadable),
    )


# Request types read from draftOrders / medications (MedicationOrder: DSTU2 medication-prescribe,
# read leniently; it has no R4 model, so it is also reported).
DRAFT_TYPES = frozenset({"MedicationRequest", "Immunization", "MedicationOrder"})
# A result dated beyond this is a data error, not "the latest" result.
FUTURE_TOLERANCE = timedelta(days=1)


_OBSERVATION_CATEGORIES = (
    DataCategory.EGFR,
    DataCategory.CREATININE,
    DataCategory.BLOOD_PRESSURE,
    DataCategory.POTASSIUM,
    DataCategory.UPCR,
)
_BP_KINDS = frozenset({"bp-panel", "systolic", "diastolic"})


@dataclass(frozen=True)
class _Result:
    """An Observation of a kind the rules read, not yet turned into a Measurement."""

    when: datetime
    kind: str
    code: str
    resource: Resource = field(compare=False)


def _observation_series(
    mapper: _Mapper, chart: Mapping[DataCategory, Sequence[Resource]], now: datetime
) -> dict[str, list[_Result]]:
    """Every dated lab result of a kind the rules read, oldest first, keyed by kind.

    Only the code and date are read here: a chart can hold thousands of results and the rules
    read a handful, so values are read (and checked) only for those (``_pick``).
    """
    series: dict[str, list[_Result]] = {}
    seen: dict[str, Any] = {}
    for category in _OBSERVATION_CATEGORIES:
        for resource in chart.get(category, ()):
            if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
                continue
            match = mapper.terminology.observation_match(codings(resource.get("code")))
            if match is None:
                continue
            kind, code = match
            if not _first_copy(seen, resource):
                continue
            when = observation_time(resource)
            if when is None:
                mapper.skip(resource, f"{kind} result has no date")
                continue
            if when > now + FUTURE_TOLERANCE:
                mapper.skip(resource, f"{kind} result dated in the future ({when.date()})")
                continue
            series.setdefault("bp" if kind in _BP_KINDS else kind, []).append(
                _Result(when, kind, code, resource)
            )
    for results in series.values():
        results.sort(key=lambda r: r.when)
    return series


def _pick(
    results: Sequence[_Result],
    anchors: Sequence[datetime | None],
    read: Callable[[_Result], Dated | None],
) -> list[tuple[Dated, Resource]]:
    """The newest readable result overall and on or before each anchor's day.

    ``read`` turns a result into the item the rules use, or None when it is unusable (reported
    by ``read``); the next older result is then taken.
    """
    chosen: dict[int, tuple[Dated, Resource]] = {}
    cache: dict[int, Dated | None] = {}
    for anchor in anchors:
        for result in reversed(results):
            if anchor is not None and result.when.date() > anchor.date():
                continue
            if id(result) not in cache:
                cache[id(result)] = read(result)
            item = cache[id(result)]
            if item is not None:
                chosen[id(result)] = (item, result.resource)
                break
    return list(chosen.values())


def _latest(
    mapper: _Mapper,
    series: Sequence[tuple[Dated, Resource]],
    anchors: Sequence[datetime | None] = (None,),
) -> tuple[Dated, ...]:
    """The latest item overall and on or before each anchor's day; their resources are checked.

    Anchors compare by calendar day: an eGFR drawn on the day the course starts is its baseline.
    """
    chosen: dict[int, tuple[Dated, Resource]] = {}
    dated = sorted((i for i in series if i[0].when is not None), key=lambda i: _by_time(i[0]))
    for anchor in anchors:
        for item in reversed(dated):
            when = item[0].when
            if anchor is None or (when is not None and when.date() <= anchor.date()):
                chosen[id(item)] = item
                break
    return tuple(sorted({mapper.checked(r, item) for item, r in chosen.values()}, key=_by_time))


def _computed_egfr(
    mapper: _Mapper,
    measured: Sequence[_Result],
    creatinine: Sequence[_Result],
    anchors: Sequence[datetime | None],
    birth_date: date | None,
    sex: str | None,
) -> list[tuple[Measurement, Resource]]:
    """CKD-EPI 2021 eGFR from the creatinine results the rules would read, on days with no
    measured eGFR (the measured one wins the day)."""
    if birth_date is None or sex is None:
        return []
    measured_days = {r.when.date() for r in measured}
    k = mapper.terminology.knowledge.ckd_epi

    def compute(result: _Result) -> Measurement | None:
        creatinine_mg_dl = mapper.measurement(result.resource, result.kind, result.code)
        if creatinine_mg_dl is None:
            return None
        age = (result.when.date() - birth_date).days / 365.25
        if age < k.minimum_age:
            return None
        if creatinine_mg_dl.value <= 0:
            mapper.skip(result.resource, "creatinine is not a positive number: no eGFR computed")
            return None
        value = ckd_epi_2021(creatinine_mg_dl.value, age, sex == "female", k)
        return Measurement(
            value=round(value, 1),
            unit="mL/min/1.73m2",
            when=result.when,
            source=creatinine_mg_dl.source,
            code=result.code,
            computed=True,
            method=f"computed with CKD-EPI 2021 from creatinine {creatinine_mg_dl.value:.2f} "
            f"mg/dL, age {int(age)}, {sex}",
        )

    candidates = [r for r in creatinine if r.when.date() not in measured_days]
    return _pick(candidates, anchors, compute)


def _by_time(item: Measurement | BloodPressure) -> datetime:
    return item.when or datetime.min.replace(tzinfo=UTC)


def _unique(resources: Iterable[Resource], resource_type: str) -> Iterator[Resource]:
    """Resources of one type, each exact copy once (prefetch and paging can repeat entries)."""
    seen: dict[str, Any] = {}
    for resource in resources:
        if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
            continue
        if _first_copy(seen, resource):
            yield resource


def _first_copy(seen: dict[str, Any], resource: Resource) -> bool:
    """False only for an exact repeat; a different resource reusing an id is kept.

    Dropping a same-id resource with other content could hide an interacting drug or a lab
    result. Contents are compared only when an id repeats, so the usual case stays cheap.
    """
    key = str(resource.get("id") or id(resource))
    earlier = seen.get(key)
    if earlier is None:
        seen[key] = resource
        return True
    if isinstance(earlier, dict):
        earlier = seen[key] = {_canonical(earlier)}
    canonical = _canonical(resource)
    if canonical in earlier:
        return False
    earlier.add(canonical)
    return True


def _canonical(resource: Resource) -> str:
    return json.dumps(resource, sort_keys=True, default=str)


def _medications_by_reference(resources: Iterable[Resource]) -> dict[str, Resource]:
    result: dict[str, Resource] = {}
    for resource in resources:
        if isinstance(resource, dict) and resource.get("resourceType") == "Medication":
            result[f"Medication/{resource.get('id')}"] = resource
    return result
