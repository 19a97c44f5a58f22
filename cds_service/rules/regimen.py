"""The voclosporin regimen itself: age, background therapy, dose, duration (PI 1, 2, 8.4)."""

from __future__ import annotations

from collections.abc import Iterator

from cds_service.rules.doses import Regimen, regimen_of, rewrite
from cds_service.rules.model import (
    Finding,
    NotChecked,
    RuleResult,
    Suggestion,
    card_text,
    days_between,
    names,
    order_line,
    when_text,
)
from cds_service.rules.populations import esrd_or_dialysis, hepatic_dose_class
from cds_service.rules.renal import baseline_egfr
from fhir_mappings.facts import PatientFacts
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.vocabulary import Role

_DAYS_PER_WEEK = 7


def pediatric(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Under 18: safety and effectiveness not established (PI 8.4).

    A Patient without a birth date is could-not-check (data-unavailable warning), not a
    monitoring gap: no result is due, the record that was read lacks what the check needs.
    """
    if not facts.ordering_voclosporin:
        return
    text = card_text(knowledge, "pediatric")
    age = facts.age_years
    if age is None:
        yield NotChecked(text("no_birth_date"))
        return
    if age >= knowledge.adult_from_years:
        return
    yield Finding(
        "warning",
        text("summary", age=age),
        text("detail", birth_date=facts.birth_date, age=age),
    )


def background_therapy_missing(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """No active or drafted mycophenolate: LUPKYNIS is studied with MMF + steroids (PI 1, 2.2)."""
    if not facts.ordering_voclosporin:
        return
    pool = (*facts.draft_orders, *facts.current_medications)
    if any(m.has_role(Role.MYCOPHENOLATE) for m in pool):
        return
    text = card_text(knowledge, "background-therapy-missing")
    yield Finding("info", text("summary"), text("detail"))


def dose_check(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """The session's voclosporin regimen: whole 7.9 mg capsules, twice daily, <= 23.7 mg a dose.

    All voclosporin drafts of the session are one regimen (an AM and a PM draft are checked
    together, not one at a time; ``doses.regimen_of``). A draft without structured dosing is
    only reported once order entry is complete (``facts.order_entry_complete``: order-select
    may come before the dose is entered). One pass over the drafts.

    Lower for some patients: severe renal impairment at initiation (start at 15.8 mg BID) and
    Child-Pugh A/B hepatic impairment (15.8 mg BID, ``populations.hepatic_dose_class``).
    """
    if not facts.ordering_voclosporin:
        return
    regimen = regimen_of(facts.draft_orders, knowledge)
    if regimen is None:
        return
    problems = _dose_problems(regimen, facts, knowledge)
    if not problems:
        return
    text = card_text(knowledge, "dose-check")
    as_ordered = _as_ordered(regimen)
    yield Finding(
        "warning",
        text("summary", problem=problems[0]),
        text(
            "detail",
            order="\n".join(order_line(o) for o in regimen.orders),
            as_ordered=as_ordered,
            problems="\n".join(f"- {p}" for p in problems),
            capsules_per_dose=knowledge.dose.starting_dose_mg / knowledge.dose.capsule_mg,
        ),
        _starting_dose_suggestions(regimen, facts, knowledge),
        subject=as_ordered,  # a different wrong dose is a different finding
    )


def _starting_dose_suggestions(
    regimen: Regimen, facts: PatientFacts, knowledge: Knowledge
) -> tuple[Suggestion, ...]:
    """At initiation: rewrite the session's regimen to the expected starting dose twice daily.

    None on renewal (the right dose then depends on the course's eGFR history, PI 2.2) and none
    with a moderate CYP3A4 inhibitor (that card suggests the PI 7 regimen instead).
    """
    if not facts.is_initiation or facts.partners(Role.MODERATE_CYP3A4_INHIBITOR):
        return ()
    start = expected_starting_dose(facts, knowledge)
    mg = start[0] if start is not None else knowledge.dose.starting_dose_mg
    per_day = knowledge.dose.doses_per_day
    text = card_text(knowledge, "dose-check")
    described = text("starting_regimen", mg=mg)
    actions = rewrite(regimen, ((mg, None),) * per_day, described, knowledge)
    if not actions:
        return ()
    label = text("suggestion", orders=names(regimen.orders), regimen=described)
    return (Suggestion(label, actions, is_recommended=True),)


def _as_ordered(regimen: Regimen) -> str:
    """The combined regimen as a clinician reads it, with the text of each draft."""
    doses = ", ".join(f"{d.mg:g} mg" + (f" ({d.when})" if d.when else "") for d in regimen.doses)
    per_day = regimen.doses_per_day
    shown = f"{doses or 'no dose quantity'}; " + (
        f"{per_day:g}/day" if per_day is not None else "?/day"
    )
    texts = [o.dosage.text for o in regimen.orders if o.dosage is not None and o.dosage.text]
    return shown + "".join(f"; '{t}'" for t in texts)


def expected_starting_dose(facts: PatientFacts, knowledge: Knowledge) -> tuple[float, str] | None:
    """A starting dose below the usual one the label asks for here, and why; None: the usual.

    Severe renal impairment at baseline (eGFR < 30; not with ESRD or dialysis, which is not
    studied): 15.8 mg BID (PI 2.4, K 1.17); Child-Pugh A/B hepatic impairment: 15.8 mg BID
    (K 1.18). The lowest applies.
    """
    if not facts.is_initiation:
        return None
    text = card_text(knowledge, "dose-check")
    reasons: list[tuple[float, str]] = []
    baseline = baseline_egfr(facts, knowledge)
    # A bound that cannot tell ("<40") does not ask for the lower start; "<25" does.
    if (
        baseline is not None
        and baseline.below(knowledge.renal.severe_impairment_below)
        and not esrd_or_dialysis(facts)
    ):
        reasons.append(
            (
                knowledge.dose.severe_renal_starting_dose_mg,
                text("severe_renal_start", egfr=baseline.shown),
            )
        )
    hepatic = hepatic_dose_class(facts)
    if hepatic is not None:
        reasons.append(
            (knowledge.dose.hepatic_impairment_dose_mg, text("hepatic_dose", child_pugh=hepatic))
        )
    return min(reasons, key=lambda reason: reason[0]) if reasons else None


def _dose_problems(regimen: Regimen, facts: PatientFacts, knowledge: Knowledge) -> list[str]:
    text = card_text(knowledge, "dose-check")
    rules = knowledge.dose
    problems = []
    if regimen.without_dose and facts.order_entry_complete:
        problems.append(text("no_structured_dose"))
    if not regimen.doses:
        return problems
    if regimen.doses_per_day is None:
        problems.append(text("no_structured_frequency"))
    elif abs(regimen.doses_per_day - rules.doses_per_day) > 1e-9:
        problems.append(text("frequency", doses_per_day=regimen.doses_per_day))
    for amount in dict.fromkeys(d.mg for d in regimen.doses):
        capsules = amount / rules.capsule_mg
        if (
            abs(capsules - round(capsules)) * rules.capsule_mg > rules.mg_tolerance
            or capsules < 0.5
        ):
            problems.append(text("partial_capsule", mg=amount))
        if amount > rules.max_dose_mg + rules.mg_tolerance:
            problems.append(text("above_maximum", mg=amount))
    start = expected_starting_dose(facts, knowledge)
    if start is not None and any(d.mg > start[0] + rules.mg_tolerance for d in regimen.doses):
        problems.append(start[1])
    hepatic = hepatic_dose_class(facts)  # knowledge 1.18: Child-Pugh A/B, 15.8 mg BID
    if (
        not facts.is_initiation  # at initiation the expected starting dose above says it
        and hepatic is not None
        and any(d.mg > rules.hepatic_impairment_dose_mg + rules.mg_tolerance for d in regimen.doses)
    ):
        problems.append(text("hepatic_dose", child_pugh=hepatic))
    return problems


def treatment_duration(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Renewal past 24 weeks: reassess benefit; past one year: safety not established.

    Course start unknown (no usable ``authoredOn`` on the voclosporin orders read) is
    could-not-check (data-unavailable warning): the record read does not say what it should.
    """
    if not facts.is_renewal:
        return
    text = card_text(knowledge, "treatment-duration")
    start = facts.course_start
    if start is None:
        yield NotChecked(text("no_course_start"))
        return
    days = days_between(start, facts.now)
    rules = knowledge.duration
    weeks, reassess_weeks = days / _DAYS_PER_WEEK, rules.reassess_after_days / _DAYS_PER_WEEK
    if days > rules.not_established_after_days:
        summary = text("summary_beyond_one_year", weeks=weeks)
        advice = text("advice_beyond_one_year")
    elif days > rules.reassess_after_days:
        summary = text("summary_reassess", weeks=weeks, reassess_weeks=reassess_weeks)
        advice = text("advice_reassess", reassess_weeks=reassess_weeks)
    else:
        return
    yield Finding("info", summary, text("detail", start=when_text(start), days=days, advice=advice))
