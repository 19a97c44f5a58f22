"""The payer's prior-authorization card: initiation or renewal set, each criterion with its facts.

Seed 002 (FEP 5.99.021), knowledge section 7: the renewal asks for documented clinical benefit
(eGFR stable or rising, no renal worsening), the prescriber's benefit/risk judgement, background
therapy without cyclophosphamide, no live vaccines, and the same limits as the initial approval.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from cds_service.rules.engine import evaluate
from fhir_mappings.facts import Measurement
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.vocabulary import DataCategory
from tests.support.clinical import (
    NOW,
    egfr,
    facts,
    live_vaccine_given,
    lupus_nephritis,
    med,
    mmf,
    voclosporin,
)


def pa_card(f, knowledge: Knowledge):
    return next(x for x in evaluate(f, knowledge).findings if x.rule_id == "prior-authorization")


def status_of(f, knowledge: Knowledge, criterion: str) -> str:
    """The status the card gives ``criterion`` (its name as shown)."""
    detail = pa_card(f, knowledge).detail
    match = re.search(rf"\| {re.escape(criterion)} \| \*\*([a-z ]+)\*\* \| ([^|]*) \|", detail)
    assert match, detail
    return match.group(1)


BENEFIT = "Documented clinical benefit (eGFR stable or rising, no renal worsening)"


def renewal(*egfrs: Measurement, **overrides):
    """On voclosporin for 100 days (course start 100 days ago), renewing it now."""
    values = {
        "medications": (mmf(), voclosporin(draft=False, authored_days_ago=100)),
        "draft_orders": (voclosporin(),),
        "egfr": egfrs,
        **overrides,
    }
    return facts(**values)


def test_initiation_shows_the_initial_set(knowledge):
    """An initiation names the initial approval set; it has no clinical-benefit row."""
    card = pa_card(facts(), knowledge)
    assert card.summary.startswith("Prior authorization (initial approval):")
    assert "Active lupus nephritis" in card.detail
    assert BENEFIT not in card.detail


def test_renewal_shows_the_renewal_set(knowledge):
    """A renewal names the renewal set: benefit, benefit/risk, no 'active disease' row."""
    card = pa_card(renewal(egfr(80, 105), egfr(78, 3)), knowledge)
    assert card.summary.startswith("Prior authorization (renewal):")
    assert "renewal criteria" in card.detail
    assert BENEFIT in card.detail
    assert "Prescriber has determined the benefits outweigh the risks" in card.detail
    assert "| Active lupus nephritis |" not in card.detail


def test_no_card_when_voclosporin_is_not_being_ordered(knowledge):
    """Another drug for a patient on voclosporin: no payer card (no voclosporin order)."""
    f = facts(
        medications=(mmf(), voclosporin(draft=False, authored_days_ago=100)),
        draft_orders=(med("ibuprofen 400 MG", draft=True),),
    )
    assert all(x.rule_id != "prior-authorization" for x in evaluate(f, knowledge).findings)


@pytest.mark.parametrize(
    ("baseline", "current", "expected"),
    [
        (egfr(70, 105), egfr(74, 3), "met"),  # rising
        (egfr(70, 105), egfr(56, 3), "met"),  # exactly 20% down: the label's no-change band
        (egfr(70, 105), egfr(55.9, 3), "not met"),  # 20.1% down, below 60: renal worsening
        (egfr(100, 105), egfr(75, 3), "unknown"),  # 25% down but >= 60: prescriber decides
        (replace(egfr(60, 105), comparator=">"), replace(egfr(60, 3), comparator=">"), "unknown"),
        (replace(egfr(60, 105), comparator=">"), egfr(42, 3), "not met"),  # > 30% down
    ],
    ids=["rising", "20.0%-down", "20.1%-down", "25%-down-above-60", ">60-to->60", ">60-to-42"],
)
def test_clinical_benefit_from_the_egfr_trend(knowledge, baseline, current, expected):
    """Benefit is judged from the course baseline to the latest eGFR, with the label's bands."""
    assert status_of(renewal(baseline, current), knowledge, BENEFIT) == expected


def test_clinical_benefit_names_the_facts_used(knowledge):
    """The row shows the course baseline, the latest eGFR and the change."""
    detail = pa_card(renewal(egfr(70, 105), egfr(74, 3)), knowledge).detail
    row = next(line for line in detail.splitlines() if line.startswith(f"| {BENEFIT}"))
    assert "course baseline 70" in row
    assert "latest 74" in row
    assert "change +5.7%" in row


@pytest.mark.parametrize(
    ("f_overrides", "why"),
    [
        ({"egfr": (egfr(74, 3),)}, "no eGFR on or before the course start"),
        ({"egfr": (egfr(70, 105),)}, "no eGFR since the course started"),
        (
            {"medications": (mmf(), replace(voclosporin(draft=False), authored_on=None))},
            "start of the voclosporin course unknown",
        ),
        (
            {"unavailable": frozenset({DataCategory.EGFR})},
            "eGFR or creatinine could not be obtained",
        ),
    ],
    ids=["no-baseline", "no-current", "no-course-start", "egfr-unavailable"],
)
def test_clinical_benefit_unknown_says_why(knowledge, f_overrides, why):
    """Without a baseline, a current value, a course start or the lab data: unknown, and why."""
    f = renewal(egfr(70, 105), egfr(74, 3), **f_overrides)
    assert status_of(f, knowledge, BENEFIT) == "unknown"
    assert why in pa_card(f, knowledge).detail


def test_benefit_outweighs_risk_is_an_attestation(knowledge):
    """The prescriber's benefit/risk judgement is not in the chart: always to confirm."""
    name = "Prescriber has determined the benefits outweigh the risks"
    assert status_of(renewal(egfr(70, 105), egfr(74, 3)), knowledge, name) == "unknown"


@pytest.mark.parametrize(
    ("medications", "expected"),
    [
        ((mmf(), voclosporin(draft=False, authored_days_ago=100)), ("met", "met")),
        ((voclosporin(draft=False, authored_days_ago=100),), ("not met", "met")),
        (
            (
                mmf(),
                med("cyclophosphamide 500 MG", "cyclophosphamide"),
                voclosporin(draft=False, authored_days_ago=100),
            ),
            ("met", "not met"),
        ),
        (
            (
                med("prednisone 5 MG Oral Tablet", "corticosteroid"),
                voclosporin(draft=False, authored_days_ago=100),
            ),
            ("unknown", "met"),
        ),
    ],
    ids=["mmf", "no-background", "with-cyclophosphamide", "steroid-only-to-confirm"],
)
def test_renewal_background_therapy_without_cyclophosphamide(knowledge, medications, expected):
    """Renewal 3: background therapy is needed, cyclophosphamide is not allowed."""
    f = renewal(egfr(70, 105), egfr(74, 3), medications=medications)
    got = (
        status_of(f, knowledge, "Background immunosuppression (e.g. MMF, corticosteroids)"),
        status_of(f, knowledge, "Not with cyclophosphamide"),
    )
    assert got == expected


VACCINES = "Not given with live vaccines (none during the course)"


@pytest.mark.parametrize(
    ("days_ago", "expected"),
    [(50, "not met"), (99, "not met"), (101, "met"), (200, "met")],
    ids=["during-course", "day-after-start", "before-course", "long-before"],
)
def test_renewal_live_vaccines_during_the_course(knowledge, days_ago, expected):
    """Renewal 6: a live vaccine recorded since the course started (100 days ago) is not met."""
    f = renewal(egfr(70, 105), egfr(74, 3), immunizations=(live_vaccine_given(days_ago),))
    assert status_of(f, knowledge, VACCINES) == expected


def test_renewal_live_vaccines_unknown_without_course_start_or_data(knowledge):
    """No course start, or immunizations that could not be read: unknown, not 'met'."""
    undated = renewal(medications=(mmf(), replace(voclosporin(draft=False), authored_on=None)))
    assert status_of(undated, knowledge, VACCINES) == "unknown"
    unread = renewal(unavailable=frozenset({DataCategory.IMMUNIZATIONS}))
    assert status_of(unread, knowledge, VACCINES) == "unknown"


def test_renewal_limits_are_the_same_as_initial(knowledge):
    """Renewal limits 'same as above': 540 capsules per 90 days and 12 months are checked."""
    card = pa_card(renewal(egfr(70, 105), egfr(74, 3)), knowledge)
    assert "| Quantity limit 540 capsules per 90 days | **met** |" in card.detail
    assert "| Approval duration 12 months |" in card.detail


def test_renewal_counts(knowledge):
    """A well-documented renewal: 7 of 11 met; three attestations and the supply to confirm."""
    f = renewal(
        egfr(70, 105),
        egfr(74, 3),
        conditions=(lupus_nephritis(),),
        birth_date=NOW.date().replace(year=1986),
    )
    card = pa_card(f, knowledge)
    assert "7 of 11 criteria met, 0 not met, 4 to confirm" in card.summary


def test_renewal_background_unknown_when_medications_unreadable(knowledge):
    """Medication list not obtained: background therapy and cyclophosphamide are unknown."""
    f = renewal(
        medications=(),
        draft_orders=(replace(voclosporin(), renews_prior=True),),
        unavailable=frozenset({DataCategory.MEDICATIONS}),
    )
    assert f.is_renewal
    got = (
        status_of(f, knowledge, "Background immunosuppression (e.g. MMF, corticosteroids)"),
        status_of(f, knowledge, "Not with cyclophosphamide"),
    )
    assert got == ("unknown", "unknown")


@pytest.mark.parametrize(
    ("drafts", "status", "capsules"),
    [
        (("a",), "met", 540),
        (("a", "b"), "not met", 1080),
    ],
    ids=["one-bid-draft-540", "two-bid-drafts-1080"],
)
def test_quantity_limit_counts_the_session_regimen(knowledge, drafts, status, capsules):
    """All voclosporin drafts are one regimen: two 23.7 mg BID drafts are 1,080 capsules per
    90 days, over the 540 limit (review finding: the largest single draft was counted)."""
    orders = tuple(replace(voclosporin(), reference=f"MedicationRequest/{d}") for d in drafts)
    f = facts(medications=(mmf(),), draft_orders=orders)
    name = "Quantity limit 540 capsules per 90 days"
    assert status_of(f, knowledge, name) == status
    assert f"{capsules} capsules per 90 days as dosed" in pa_card(f, knowledge).detail
