"""Baseline and on-treatment eGFR (PI 2.2, Table 1; knowledge 1.9-1.14)."""

from __future__ import annotations

from collections.abc import Iterator

from cds_service.rules.doses import Regimen, regimen_of, rewrite
from cds_service.rules.model import (
    Finding,
    MonitoringGap,
    NotChecked,
    RuleResult,
    Suggestion,
    card_text,
    decline_bounds,
    describe,
    latest,
    names,
    recent,
    remove_suggestions,
    when_text,
)
from cds_service.rules.populations import esrd_or_dialysis
from fhir_mappings.facts import Measurement, Medication, PatientFacts
from fhir_mappings.knowledge import Knowledge


def baseline_egfr(facts: PatientFacts, knowledge: Knowledge) -> Measurement | None:
    """The latest eGFR (measured or computed) within the baseline window."""
    return latest(recent(facts.egfr, facts.now, knowledge.renal.baseline_max_age_days))


def egfr_baseline_missing(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Initiation needs an accurate baseline eGFR; none within the window is a warning.

    Only runs when eGFR and creatinine data were obtained: a fetch failure is not "missing".
    A finding of its own (warning), not a monitoring gap: PI 2.2 asks for an accurate baseline
    before initiating, so its absence is what the card is about. Not with ESRD or dialysis on
    record: no eGFR is estimated then, and the end-stage-renal-disease card says so (asking for
    one would contradict it).
    """
    if not facts.is_initiation or baseline_egfr(facts, knowledge) is not None:
        return
    if esrd_or_dialysis(facts):
        return
    text = card_text(knowledge, "egfr-baseline-missing")
    older = latest(facts.egfr)
    most_recent = text("most_recent", measurement=describe(older)) if older is not None else ""
    not_computable = (
        text("not_computable")
        if facts.creatinine and (facts.sex is None or facts.birth_date is None)
        else ""
    )
    yield Finding(
        "warning",
        text("summary"),
        text("detail", most_recent=most_recent, not_computable=not_computable),
    )


def egfr_baseline_low(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Baseline eGFR <= 45: not recommended unless benefit exceeds risk (PI 2.2)."""
    if not facts.is_initiation:
        return
    baseline = baseline_egfr(facts, knowledge)
    renal = knowledge.renal
    if baseline is None:
        return
    # A bound (">60") proves what it proves; one that cannot tell ("<50") warns all the same:
    # the gate asks for a baseline shown to be above the limit.
    above = baseline.above(renal.baseline_low_max)
    if above:
        return
    text = card_text(knowledge, "egfr-baseline-low")
    # ESRD / dialysis: not studied (its own card), so no severe-renal starting dose is advised.
    severe_start = baseline.below(renal.severe_impairment_below) and not esrd_or_dialysis(facts)
    severe = text("severe") if severe_start else ""
    yield Finding(
        "warning",
        text("summary" if above is False else "summary_bound", egfr=baseline.shown),
        text("detail", measurement=describe(baseline), severe=severe),
    )


def decline_percent(baseline: float, current: float) -> float:
    """Decline from baseline in percent, rounded so that 72 -> 57.6 is exactly 20.0."""
    if baseline <= 0:
        raise ValueError("a baseline eGFR must be positive")
    return round((baseline - current) / baseline * 100, 6)


def egfr_decline(facts: PatientFacts, knowledge: Knowledge) -> Iterator[RuleResult]:
    """Renewal: eGFR < 60 and > 20% below baseline -> reduce; >= 30% -> discontinue (PI 2.2).

    Renewal: the draft continues a course that is current or ended at most the course gap ago,
    whatever its orders' status (``facts.course``). Baseline: the latest eGFR on or before that
    course's start, so a restart after a longer gap is a new start with a new baseline, never
    judged against one from years before. What is unknown, decided case by case (knowledge: "a
    card that found nothing vs a check that could not run"):

    - course start unknown (the voclosporin orders on record carry no usable ``authoredOn``, or
      the renewal names a prior order the medication list does not hold): could not check, on
      the data-unavailable warning: the record that was read does not say what it should;
    - no eGFR on or before the course start, none since it started, or the latest one older
      than the monitoring interval: the chart simply lacks the result, a monitoring gap (info
      note; PI 2.2 asks for eGFR every two weeks, then every four). An old on-treatment value
      is still judged: a decline it shows is real.

    eGFR or creatinine that could not be obtained never reaches this rule (``needs``).
    """
    if not facts.is_renewal:
        return
    text = card_text(knowledge, "egfr-decline")
    start = facts.course_start
    if start is None:
        yield NotChecked(text("no_course_start"))
        return
    # By calendar day: an eGFR drawn on the day the course starts is its baseline.
    before = [m for m in facts.egfr if m.when is not None and m.when.date() <= start.date()]
    after = [m for m in facts.egfr if m.when is not None and m.when.date() > start.date()]
    baseline, current = latest(before), latest(after)
    renal = knowledge.renal
    current_is_recent = current is not None and bool(
        recent([current], facts.now, renal.monitoring_max_age_days)
    )
    if baseline is None or baseline.value <= 0:
        # eGFR >= 60 is never a decline finding (decisions, first round): a recent one makes the
        # missing baseline moot for this check, so no note asks for it.
        if (
            current_is_recent
            and current is not None
            and current.below(renal.decline_applies_below) is False
        ):
            return
        yield MonitoringGap(text("gap_result"), text("no_baseline", start=when_text(start)))
        return
    if current is None:
        yield MonitoringGap(text("gap_result"), text("no_current", start=when_text(start)))
        return
    if not current_is_recent:
        # Judged below on the old value all the same: a decline it shows is still real.
        yield MonitoringGap(text("gap_result"), text("not_current", when=when_text(current.when)))
    # A result reported as a bound (">60") gives no decline percentage, only limits on it
    # (knowledge: "lab values as labs send them"): a finding only where the limits decide.
    below_limit = current.below(renal.decline_applies_below)
    if below_limit is False:
        return
    exact = baseline.comparator is None and current.comparator is None
    least: float | None
    most: float | None
    if exact:
        least = most = decline_percent(baseline.value, current.value)
    else:
        least, most = decline_bounds(baseline, current)
    if most is not None and most <= renal.decline_reduce_above_percent:
        return
    discontinue = least is not None and least >= renal.decline_discontinue_from_percent
    reduce = (
        least is not None
        and least > renal.decline_reduce_above_percent
        and most is not None
        and most < renal.decline_discontinue_from_percent
    )
    if least is None or not below_limit or not (discontinue or reduce):
        at_least = text("at_least", decline=least) if least is not None and least > 0 else ""
        yield MonitoringGap(
            text("gap_result"),
            text("bound", latest=current.shown, baseline=baseline.shown, decline=at_least),
        )
        return
    readings = text(
        "readings" if exact else "readings_bound",
        start=when_text(start),
        baseline=describe(baseline),
        latest=describe(current),
        decline=least,
    )
    now = current.shown
    if discontinue:
        yield Finding(
            "critical",
            text(
                "summary_discontinue" if exact else "summary_discontinue_bound",
                decline=least,
                egfr=now,
            ),
            text("detail_discontinue", readings=readings),
            remove_suggestions(facts.draft_voclosporin, text("discontinue")),
        )
        return
    yield Finding(
        "warning",
        text("summary_reduce" if exact else "summary_reduce_bound", decline=least, egfr=now),
        text("detail_reduce", readings=readings),
        # Every voclosporin draft of the session: an unselected AM draft is part of the regimen.
        _reduction_suggestions(facts.draft_orders, knowledge),
    )


def _reduction_suggestions(
    orders: tuple[Medication, ...], knowledge: Knowledge
) -> tuple[Suggestion, ...]:
    """The drafted regimen minus one capsule per administration, as one suggestion.

    The drafts are one regimen (an AM and a PM draft are reduced together, in one suggestion);
    none when a dose would not remain or the result would be above the label maximum.
    """
    regimen = regimen_of(orders, knowledge)
    if regimen is None or not regimen.doses:
        return ()
    text = card_text(knowledge, "egfr-decline")
    step = knowledge.dose.reduction_step_mg
    reduced = tuple((round(d.mg - step, 2), d.when) for d in regimen.doses)
    amounts = {mg for mg, _ in reduced}
    if len(reduced) == knowledge.dose.doses_per_day and len(amounts) == 1:
        described = text("reduced_regimen_even", mg=reduced[0][0])
    else:
        described = text("reduced_regimen", doses=" + ".join(f"{mg:g} mg" for mg, _ in reduced))
    actions = rewrite(regimen, reduced, described, knowledge)
    if not actions:
        return ()
    return (
        Suggestion(
            text("suggestion", order=names(regimen.orders), regimen=described),
            actions,
            is_recommended=True,
        ),
    )


def reinitiation_after_discontinuation(
    facts: PatientFacts, knowledge: Knowledge
) -> Iterator[RuleResult]:
    """A voclosporin order after a course stopped with an eGFR decline: PI 2.2 Table 1 (K 1.14).

    Applies when the latest course on record ended by a stop (``Course.stopped``) and an eGFR
    after its start is < 60 and >= 30% below that course's baseline (the discontinue row of
    ``egfr_decline``). Then the label allows re-initiating at 7.9 mg twice daily only once eGFR
    has returned to >= 80% of that baseline: the latest eGFR below it is a warning (remove the
    draft), a draft dose above 7.9 mg is a warning (change it). Whatever the gap since the stop:
    the label gives the recovery condition no time limit. Unknown, decided: no baseline for the
    stopped course, or no eGFR after its start, means no decline on record, so nothing to say
    (the course's own checks report the missing results); a draft without a structured dose is
    judged on eGFR only (``dose-check`` reports the missing dose).
    """
    if not facts.ordering_voclosporin or not facts.courses:
        return
    course = facts.courses[-1]
    if not course.stopped:
        return
    start = course.start.date()
    # The baseline and the decline on record need exact results (a bound gives no percentage);
    # the latest eGFR may be a bound (">80"): it decides when it lies wholly on one side.
    exact = [m for m in facts.egfr if m.when is not None and m.comparator is None]
    baseline = latest(m for m in exact if m.when is not None and m.when.date() <= start)
    after = [m for m in exact if m.when is not None and m.when.date() > start]
    if baseline is None or baseline.value <= 0 or not after:
        return
    renal, rules = knowledge.renal, knowledge.reinitiation
    declines = sorted(
        (
            m
            for m in after
            if m.value < renal.decline_applies_below
            and decline_percent(baseline.value, m.value) >= renal.decline_discontinue_from_percent
        ),
        key=lambda m: m.when or course.start,
    )
    if not declines:
        return
    text = card_text(knowledge, "reinitiation-after-discontinuation")
    current = latest(m for m in facts.egfr if m.when is not None and m.when.date() > start)
    assert current is not None  # ``after`` is not empty
    recovered = round(current.value / baseline.value * 100, 6)
    readings = text(
        "readings",
        start=when_text(course.start),
        baseline=describe(baseline),
        decline=describe(declines[-1]),
        latest=describe(current),
        recovered=recovered,
    )
    not_recovered = current.below(baseline.value * rules.recovered_from_percent / 100)
    if not_recovered is None:  # a bound on both sides of the line: ask for an exact result
        yield MonitoringGap(text("gap_result"), text("bound_undecided", egfr=current.shown))
        return
    if not_recovered:
        yield Finding(
            "warning",
            text("summary_not_recovered", recovered=recovered, egfr=current.shown),
            text("detail_not_recovered", readings=readings),
            remove_suggestions(facts.draft_voclosporin, text("cancel")),
        )
        return
    regimen = regimen_of(facts.draft_orders, knowledge)
    tolerance = knowledge.dose.mg_tolerance
    if regimen is None or not any(d.mg > rules.dose_mg + tolerance for d in regimen.doses):
        return
    yield Finding(
        "warning",
        text("summary_dose", orders=names(regimen.orders)),
        text("detail_dose", readings=readings),
        _reinitiation_suggestions(regimen, knowledge),
        subject=";".join(o.reference for o in regimen.orders),
    )


def _reinitiation_suggestions(regimen: Regimen, knowledge: Knowledge) -> tuple[Suggestion, ...]:
    """The session's regimen changed to the label's re-initiation dose, twice daily, as one
    suggestion (an AM and a PM draft are rewritten together)."""
    text = card_text(knowledge, "reinitiation-after-discontinuation")
    mg = knowledge.reinitiation.dose_mg
    target = tuple((mg, None) for _ in range(knowledge.dose.doses_per_day))
    described = text("regimen")
    actions = rewrite(regimen, target, described, knowledge)
    if not actions:
        return ()
    return (
        Suggestion(
            text("suggestion", order=names(regimen.orders), regimen=described),
            actions,
            is_recommended=True,
        ),
    )
