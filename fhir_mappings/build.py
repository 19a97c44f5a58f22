"""The chart (resources per category) and the draft orders -> PatientFacts: only what rules read.

The hook path is hot: parsing every resource into fhir.resources models costs ~0.3 ms each, so
resources are first picked from the raw JSON by code (only the ones a rule reads), then only those
are validated with the R4B models (``validate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from fhir_mappings import clinical
from fhir_mappings.categories import MEDICATION_CATEGORIES, prefetch_key
from fhir_mappings.codes import Terminology
from fhir_mappings.facts import PatientFacts, treatment_courses
from fhir_mappings.mapper import Mapper
from fhir_mappings.medications import (
    DRAFT_TYPES,
    medication,
    names_a_medication,
    recorded_medication,
)
from fhir_mappings.observations import ResultReader, egfr_series, observation_series
from fhir_mappings.readers import Resource, parse_date
from fhir_mappings.references import medications_by_reference, reference_of
from fhir_mappings.selection import NO_RESULTS, by_time, latest, pick, unique, unique_by_type
from fhir_mappings.supply import RECORD_TYPES
from fhir_mappings.vocabulary import DataCategory


def build_facts(
    *,
    terminology: Terminology,
    now: datetime,
    order_entry_complete: bool = True,
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
    course), live vaccines, voclosporin allergies, conditions of a known kind and the latest
    pregnancy and breastfeeding status answers. No eGFR is computed for a patient on dialysis.
    Validation reports, it never hides: a resource a rule reads that fails it is still read
    (defensively) and named on the data-unavailable card, because dropping it could turn a
    warning into silence.
    """
    mapper = Mapper(terminology)
    recorded = [r for category in MEDICATION_CATEGORIES for r in chart.get(category, ())]
    medications_by_ref = medications_by_reference([*recorded, *draft_orders])
    birth_date, sex = None, None
    if patient is not None:
        mapper.check(patient)
        birth_date = parse_date(patient.get("birthDate"))
        gender = patient.get("gender")
        sex = gender if gender in ("female", "male") else None

    drafts = []
    for index, r in enumerate(draft_orders):
        if not isinstance(r.get("resourceType"), str) or r["resourceType"] not in DRAFT_TYPES:
            continue
        if not names_a_medication(r):  # a draft before a drug is picked: no order to check
            continue
        mapper.check(r)
        selected = selections is None or reference_of(r) in selections
        drafts.append(
            medication(mapper, r, medications_by_ref, draft_index=index, selected=selected)
        )
    records = unique_by_type(recorded, RECORD_TYPES)
    medications = [
        mapper.checked(r, m)
        for record_type in RECORD_TYPES
        for r in records[record_type]
        if (m := recorded_medication(mapper, r, medications_by_ref)) is not None
    ]
    course_rules = terminology.knowledge.course
    courses = treatment_courses(medications, now, course_rules)
    # The eGFR at each course start (its baseline) and, through the latest course and since, every
    # day's: a re-initiation check needs the decline that stopped it, not only the latest result.
    anchors: tuple[datetime | None, ...] = (None, *(c.start for c in courses))
    series = observation_series(mapper, chart, now)
    conditions = [
        mapper.checked(r, c)
        for r in unique(chart.get(DataCategory.CONDITIONS, ()), "Condition")
        if (c := clinical.condition(mapper, r)) and c.kinds
    ] + clinical.latest_status_answers(
        mapper, series.get(DataCategory.PREGNANCY_LACTATION, NO_RESULTS).results()
    )
    latest_only: tuple[datetime | None, ...] = (None,)
    read = ResultReader(mapper)
    egfrs = series.get(DataCategory.EGFR, NO_RESULTS)
    creatinines = series.get(DataCategory.CREATININE, NO_RESULTS)
    if courses and courses[-1].stopped:
        since = courses[-1].start.date()
        # One anchor per draw time (an eGFR and its creatinine share one).
        anchors += tuple(dict.fromkeys([*egfrs.since(since), *creatinines.since(since)]))
    # No eGFR from a dialysis patient's creatinine (knowledge: ESRD, dialysis).
    egfr_results = egfr_series(
        mapper,
        egfrs,
        creatinines,
        anchors,
        birth_date,
        sex,
        compute=not clinical.on_dialysis(conditions),
    )
    bps = series.get(DataCategory.BLOOD_PRESSURE, NO_RESULTS)
    blood_pressures = pick(bps, latest_only, read.systolic) + pick(bps, latest_only, read.diastolic)
    potassium = series.get(DataCategory.POTASSIUM, NO_RESULTS)
    upcr = series.get(DataCategory.UPCR, NO_RESULTS)

    facts = PatientFacts(
        now=now,
        patient_id=patient_id,
        order_entry_complete=order_entry_complete,
        birth_date=birth_date,
        sex=sex,
        draft_orders=tuple(drafts),
        medications=tuple(medications),
        egfr=latest(mapper, egfr_results, anchors),
        creatinine=latest(mapper, pick(creatinines, anchors, read.measurement), anchors),
        blood_pressures=tuple(
            # dict, not set: readings at one instant keep one order (a set's follows hashes,
            # and hash(None) differs between processes before Python 3.12)
            sorted(dict.fromkeys(mapper.checked(r, bp) for bp, r in blood_pressures), key=by_time)
        ),
        potassium=latest(mapper, pick(potassium, latest_only, read.measurement)),
        upcr=latest(mapper, pick(upcr, latest_only, read.measurement)),
        conditions=tuple(conditions),
        immunizations=tuple(
            mapper.checked(r, i)
            for r in unique(chart.get(DataCategory.IMMUNIZATIONS, ()), "Immunization")
            if (i := clinical.immunization(mapper, r)) and i.live
        ),
        allergies=tuple(
            mapper.checked(r, a)
            for r in unique(chart.get(DataCategory.ALLERGIES, ()), "AllergyIntolerance")
            if (a := clinical.allergy(mapper, r)) and a.to_voclosporin
        ),
        unavailable=frozenset(unavailable),
        unavailable_reasons=tuple(
            sorted(unavailable.items(), key=lambda item: prefetch_key(item[0]))
        ),
        unreadable=tuple(mapper.unreadable),
        course_rules=course_rules,
    )
    # The courses read above are what PatientFacts.courses computes (the same records, time and
    # rules): kept for the rules, not computed a second time (issue 14).
    vars(facts)["courses"] = courses
    return facts
