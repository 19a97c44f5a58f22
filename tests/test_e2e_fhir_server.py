"""End to end against a real FHIR R4 server (sekmet-fhir): fetching and EHR prefetch agree.

Every chart (the seven Synthea charts and ``tests.charts.lupus.CHARTS``) is loaded into one
server. For every chart, order set and hook the service is called twice: once with no prefetch
and ``fhirServer`` + ``fhirAuthorization`` (the service fetches), once with the prefetch an EHR
builds by running the service's own discovery templates against the same server. The cards must
be the same, and they must be the ones the chart calls for. This pins the templates, the paging,
the fetch code and the mapping together.

The clock is the real time (captured once, so both calls of a pair see the same instant): the
lupus charts are dated relative to today, and the Synthea charts end in 2020-2021, so for them
every "in the last 30 days" window is empty, a fact the cards must state, not a false alarm.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import close_app
from cds_service.spec_check import check_request, check_response
from tests.charts.lupus import CHARTS, KETOCONAZOLE, Drug, voclosporin_draft_order
from tests.conftest import make_app
from tests.support.ehr import (
    EhrPrefetch,
    card_key,
    draft_medication_order,
    draft_vaccine_order,
    ehr_prefetch,
    fill_tokens,
    run_query,
)
from tests.support.fhir_server import FhirServer, created_ids
from tests.support.hooks import hook_request
from tests.support.paths import SYNTHEA_DIR

pytestmark = pytest.mark.fhir_server

Resource = dict[str, Any]

SYNTHEA = {p.stem.rsplit("_", 1)[0]: p for p in sorted(SYNTHEA_DIR.glob("*.json"))}
HOOKS = ("order-select", "order-sign", "medication-prescribe")
USER = "Practitioner/example"
# The spec lets the service fetch only with a token; sekmet ignores it.
DUMMY_TOKEN = "e2e-dummy-token"
# Generous: these tests compare answers, not latency (a late fetch would turn into "unavailable"
# and make the two paths differ for a reason that is not a bug). Timings are reported separately.
DEADLINE_MS = 20_000

LISINOPRIL = Drug("lisinopril 10 MG Oral Tablet", "10 mg by mouth once daily", 10, 1)

OrderSet = Callable[[str, date], list[Resource]]


def _voclosporin(patient_id: str, today: date) -> list[Resource]:
    return [voclosporin_draft_order(patient_id, today)]


def _mmr(patient_id: str, today: date) -> list[Resource]:
    return [draft_vaccine_order(patient_id, today, "03", "MMR", "draft-mmr-1")]


ORDER_SETS: dict[str, OrderSet] = {
    "voclosporin": _voclosporin,
    "voclosporin+mmr": lambda pid, today: _voclosporin(pid, today) + _mmr(pid, today),
    "mmr": _mmr,
    "ketoconazole": lambda pid, today: [
        draft_medication_order(pid, today, KETOCONAZOLE, "draft-ketoconazole-1")
    ],
    "lisinopril": lambda pid, today: [
        draft_medication_order(pid, today, LISINOPRIL, "draft-lisinopril-1")
    ],
}

# ---------------- what each chart calls for ----------------
# "rule-id:indicator", in the order the service sends them (critical, warning, info).

PA = "prior-authorization:info"
MONITORING = "monitoring-gaps:info"  # a result the chart lacks: an info note, not a warning
LIVE = "live-vaccine:warning"
STRONG = "strong-cyp3a4-inhibitor:critical"

# Synthea adults ordering voclosporin. Their last labs and vitals are from 2020-2021 (checked by
# test_synthea_labs_are_years_old), so for every one of them, as truths and not false alarms:
# - egfr-baseline-missing: no eGFR (LOINC 33914-3) or creatinine in the last 30 days;
# - blood-pressure-missing: no BP panel (55284-4) in the last 30 days (so an old 172/110 is not
#   "blood-pressure-high": the rule looks at the pre-initiation window only);
# - monitoring-gaps (info): no potassium (6298-4) in the last 30 days, a result the chart lacks,
#   not data that could not be obtained (that would be the data-unavailable warning);
# - background-therapy-missing: nobody has mycophenolate;
# - prior-authorization: initiation always shows the payer criteria (no lupus nephritis here).
# No interaction or critical card: their active drugs (hydrochlorothiazide, metformin, insulin,
# hydrocortisone cream, diphenhydramine, B12, naproxen, "Simvistatin") are not CYP3A4
# inhibitors/inducers, calcineurin inhibitors, P-gp substrates or cyclophosphamide, and their live
# zoster vaccines (CVX 121) were given years ago, outside the 28-day window.
SYNTHEA_ADULT = (
    "egfr-baseline-missing:warning",
    "blood-pressure-missing:warning",
    "background-therapy-missing:info",
    PA,
    MONITORING,
)
VOCLOSPORIN_ALONE: dict[str, tuple[str, ...]] = {
    # Dirk Kuhlman has active carbamazepine (Tegretol) since 1989, a strong CYP3A4 inducer:
    # "avoid" (PI 7) is a real finding from his chart. Otherwise as every Synthea adult.
    "Dirk_Kuhlman": ("cyp3a4-inducer:warning", *SYNTHEA_ADULT),
    # Junita Labadie is a child born 2019: pediatric warning on top (PI 8.4). Her MMR, varicella
    # and rotavirus doses are from 2019-2020, outside the 28-day window.
    "Junita_Labadie": (*SYNTHEA_ADULT[:2], "pediatric:warning", *SYNTHEA_ADULT[2:]),
    "Morris_Lockman": SYNTHEA_ADULT,
    "Neva_Hyatt": SYNTHEA_ADULT,
    # Renea Quigley has active naproxen (2014): nephrotoxic with voclosporin (PI 5.3, NINJA list).
    "Renea_Quigley": (*SYNTHEA_ADULT[:2], "nephrotoxic-comedication:warning", *SYNTHEA_ADULT[2:]),
    "Thanh_Considine": SYNTHEA_ADULT,
    "Tom_Goodwin": SYNTHEA_ADULT,
    # Clean initiation: only the payer criteria.
    "ln-initiation-clean": (PA,),
    # BP 170/95 (> 165: critical), eGFR 42 (<= 45), K 5.6 above its reference high 5.1.
    "ln-initiation-low-egfr-high-bp": (
        "blood-pressure-high:critical",
        "egfr-baseline-low:warning",
        "hyperkalemia:warning",
        PA,
    ),
    # eGFR, BP and K only from 120 days ago: nothing in the 30-day windows, said out loud
    # (eGFR and BP as the label's pre-initiation warnings, potassium as a monitoring note).
    "ln-initiation-missing-labs": (
        "egfr-baseline-missing:warning",
        "blood-pressure-missing:warning",
        PA,
        MONITORING,
    ),
    # eGFR computed from creatinine (65 by CKD-EPI 2021): a baseline, so nothing is missing.
    "ln-creatinine-only": (PA,),
    "ln-creatinine-only-umol": (PA,),
    # Renewal: 72 -> 54 is a 25 % decline (reduce), 80 -> 52 is 35 % (discontinue). The PA card
    # shows the payer's renewal criteria (seed 002).
    "ln-renewal-egfr-25pct": ("egfr-decline:warning", PA),
    "ln-renewal-egfr-35pct": ("egfr-decline:critical", PA),
    # Active ketoconazole (contraindicated). The only eGFR is from 8 days ago, after the course
    # started 60 days ago: no pre-treatment baseline, but eGFR >= 60 now is never a decline
    # finding, so no monitoring note asks for one.
    "ln-on-voclosporin-interactions": (STRONG, PA),
    # MMR 14 days ago: inside the 28-day window before starting.
    "ln-live-vaccine-recent": (LIVE, PA),
    "ln-adolescent": ("pediatric:warning", PA),
    # Cyclophosphamide instead of MMF: not recommended, and no mycophenolate.
    "ln-cyclophosphamide": ("cyclophosphamide:warning", "background-therapy-missing:info", PA),
    "ln-voclosporin-allergy": ("hypersensitivity:critical", PA),
    # Renewal with BP 178/112: above the gate on treatment (critical, discontinue).
    "ln-renewal-bp-high": ("blood-pressure-high-on-treatment:critical", PA),
    # On voclosporin for 60 days, the only eGFR is after the start and >= 60: no decline is
    # possible, so no note asks for a baseline; a renewal shows the payer's renewal criteria.
    "ln-on-voclosporin-stable": (PA,),
    "ln-on-voclosporin-potassium-4-9": (PA,),
    # A low-criticality, mild intolerance: a warning naming the reaction, not contraindicated.
    "ln-voclosporin-mild-intolerance": ("hypersensitivity:warning", PA),
    # Cirrhosis staged Child-Pugh B, LUPKYNIS at 23.7 mg BID: the label dose is 15.8 mg BID
    # (knowledge 1.18), so dose-check warns and the hepatic note gives the dose.
    "ln-cirrhosis-child-pugh-b": ("dose-check:warning", "hepatic-impairment:info", PA),
    # Child-Pugh C: not recommended (a warning, the label's "not recommended").
    "ln-cirrhosis-child-pugh-c": ("hepatic-impairment:warning", PA),
    # ESRD on dialysis, creatinine only: no eGFR is computed on dialysis (the ESRD card says so,
    # no baseline-missing card); use in ESRD/dialysis is not studied (knowledge 1.17).
    "ln-dialysis-creatinine-only": ("end-stage-renal-disease:warning", PA),
    # Pregnancy status "Pregnant" (LOINC 82810-3, LA15173-0): warning (knowledge 4).
    "ln-pregnant": ("pregnancy-lactation:warning", PA),
}
ON_VOCLOSPORIN = frozenset(
    {
        "ln-renewal-egfr-25pct",
        "ln-renewal-egfr-35pct",
        "ln-on-voclosporin-interactions",
        "ln-renewal-bp-high",
        "ln-on-voclosporin-stable",
        "ln-on-voclosporin-potassium-4-9",
    }
)
CHART_NAMES = (*SYNTHEA, *CHARTS)


# Warnings the service lists before the live-vaccine one (same severity, earlier rule).
_BEFORE_LIVE = frozenset(
    {"hypersensitivity:warning", "moderate-cyp3a4-inhibitor:warning", "cyp3a4-inducer:warning"}
)
# On-treatment cards a chart raises whatever is ordered for the patient on voclosporin.
ON_TREATMENT_CARDS: dict[str, tuple[str, ...]] = {
    # BP 178/112 on treatment: discontinue and treat BP (K 1.21, PI 5.4), on every new order.
    "ln-renewal-bp-high": ("blood-pressure-high-on-treatment:critical",),
}


def _with_on_treatment(chart: str, cards: tuple[str, ...]) -> tuple[str, ...]:
    """Add the chart's on-treatment critical cards after the other critical ones."""
    critical = tuple(c for c in cards if c.endswith(":critical"))
    rest = tuple(c for c in cards if not c.endswith(":critical"))
    return (*critical, *ON_TREATMENT_CARDS.get(chart, ()), *rest)


def _with_live_vaccine(cards: tuple[str, ...]) -> tuple[str, ...]:
    """Voclosporin drafted with MMR: add the live-vaccine warning where the service lists it."""
    if LIVE in cards:
        return cards
    first = [c for c in cards if c.endswith(":critical") or c in _BEFORE_LIVE]
    return (*first, LIVE, *(c for c in cards if c not in first))


def expected_cards(chart: str, order_set: str) -> tuple[str, ...]:
    """The cards ``order_set`` must raise for ``chart`` (the docstrings of the charts say why)."""
    if order_set == "voclosporin":
        return VOCLOSPORIN_ALONE[chart]
    if order_set == "voclosporin+mmr":
        return _with_live_vaccine(VOCLOSPORIN_ALONE[chart])
    if chart not in ON_VOCLOSPORIN:
        return ()  # no voclosporin drafted or taken: the service has nothing to say
    if order_set == "mmr":
        # reverse direction: live vaccine for a patient on voclosporin
        return _with_on_treatment(chart, (LIVE,))
    if order_set == "ketoconazole":
        # reverse direction: strong CYP3A4 inhibitor added to voclosporin
        return _with_on_treatment(chart, (STRONG,))
    # lisinopril: standard LN care, flagged only at or above the potassium limit (none here)
    return _with_on_treatment(chart, ())


# ---------------- fixtures ----------------


@dataclass
class Stack:
    """The loaded server, the app and the EHR's view of both, shared by the whole module."""

    server: FhirServer
    client: FlaskClient
    now: datetime
    patient_ids: dict[str, str]
    charts: dict[str, Resource]
    services: dict[str, Resource]  # hook -> discovery entry
    prefetches: dict[tuple[str, str], EhrPrefetch]
    timings: dict[str, list[float]]

    @property
    def today(self) -> date:
        return self.now.date()

    def prefetch(self, chart: str, hook: str) -> EhrPrefetch:
        """The EHR's prefetch for this chart and service (the data does not change: cached)."""
        key = (chart, hook)
        if key not in self.prefetches:
            started = time.monotonic()
            context = {"patientId": self.patient_ids[chart], "userId": USER}
            self.prefetches[key] = ehr_prefetch(
                self.server, self.services[hook]["prefetch"], context
            )
            self.timings["ehr-prefetch"].append(time.monotonic() - started)
        return self.prefetches[key]

    def call(self, hook: str, body: Resource, timing: str) -> Resource:
        """POST a hook request; return the JSON answer after checking status and spec."""
        assert not [v for v in check_request(body) if v.severity == "error"]
        started = time.monotonic()
        response = self.client.post(f"/cds-services/{self.services[hook]['id']}", json=body)
        self.timings[timing].append(time.monotonic() - started)
        assert response.status_code == 200, response.get_json()
        answer: Resource = response.get_json()
        assert not [str(v) for v in check_response(answer) if v.severity == "error"]
        return answer


@pytest.fixture(scope="module")
def stack(fhir_server: FhirServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Load every chart into the session server and start the app that may query it."""
    now = datetime.now(UTC)
    patient_ids: dict[str, str] = {}
    charts: dict[str, Resource] = {}
    started = time.monotonic()
    for name, path in SYNTHEA.items():
        charts[name] = json.loads(path.read_text())
        # POST entries get new server ids: the Patient id is the one the server assigned.
        (patient_ids[name],) = created_ids(fhir_server.load_bundle(charts[name]))["Patient"]
    for chart_id, build in CHARTS.items():
        charts[chart_id] = build(now.date())
        fhir_server.load_bundle(charts[chart_id])  # PUT entries: ids kept, reload is harmless
        patient_ids[chart_id] = chart_id
    load_seconds = time.monotonic() - started
    app: Flask = make_app(
        tmp_path_factory.mktemp("e2e"),
        CDS_FHIR_ALLOWED_SERVERS=fhir_server.base_url,
        CDS_CLOCK=lambda: now,
        CDS_REQUEST_DEADLINE_MS=DEADLINE_MS,
    )
    try:
        client = app.test_client()
        discovery = client.get("/cds-services").get_json()
        services = {s["hook"]: s for s in discovery["services"]}
        timings: dict[str, list[float]] = {
            "load": [load_seconds],
            "ehr-prefetch": [],
            "fetch-path": [],
            "prefetch-path": [],
        }
        yield Stack(fhir_server, client, now, patient_ids, charts, services, {}, timings)
        print("\n" + timing_summary(timings))  # shown with -s: the figures behind the report
    finally:
        close_app(app)


def timing_summary(timings: dict[str, list[float]]) -> str:
    """One line per step: count, median, 95th percentile and maximum in milliseconds."""
    lines = []
    for step, values in timings.items():
        if not values:
            continue
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        lines.append(
            f"{step:14} n={len(ordered):4} median={statistics.median(ordered) * 1000:7.1f} ms "
            f"p95={p95 * 1000:7.1f} ms max={ordered[-1] * 1000:7.1f} ms"
        )
    return "\n".join(lines)


# ---------------- the EHR side: templates and paging ----------------


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_every_template_runs_cleanly_on_the_server(stack: Stack, chart: str) -> None:
    """Each discovery template reads the Patient and searches with parameters the server knows."""
    for hook in HOOKS:
        prefetch = stack.prefetch(chart, hook)
        assert prefetch.outcomes == {}, "the server ignored a template parameter"
        patient = prefetch.prefetch["patient"]
        assert patient is not None
        assert patient["resourceType"] == "Patient"
        assert patient["id"] == stack.patient_ids[chart]
        for key, value in prefetch.prefetch.items():
            if key != "patient":
                assert value is not None
                assert value["resourceType"] == "Bundle", key
                assert value["type"] == "searchset", key


def test_ehr_prefetch_follows_paging(stack: Stack) -> None:
    """A search larger than a page (Junita's 23 immunizations, 10 a page) arrives whole."""
    template = stack.services["order-sign"]["prefetch"]["immunizations"]
    query = fill_tokens(template, {"patientId": stack.patient_ids["Junita_Labadie"]})
    immunizations, pages, _ = run_query(stack.server, query.replace("_count=100", "_count=10"))
    in_chart = [
        e
        for e in stack.charts["Junita_Labadie"]["entry"]
        if e["resource"]["resourceType"] == "Immunization"
    ]
    assert pages == 3
    assert immunizations is not None
    assert immunizations["total"] == len(immunizations["entry"]) == len(in_chart) == 23


def test_unfillable_token_is_refused() -> None:
    """The EHR helper refuses a token it cannot fill instead of sending a wrong query."""
    with pytest.raises(ValueError, match="draftOrders"):
        fill_tokens("MedicationRequest?_id={{context.draftOrders}}", {"draftOrders": {}})
    assert fill_tokens("Patient/{{context.patientId}}", {"patientId": "p1"}) == "Patient/p1"


@pytest.mark.parametrize("chart", list(SYNTHEA))
def test_synthea_labs_are_years_old(stack: Stack, chart: str) -> None:
    """Every Synthea lab and vital is older than 30 days, so "none recent" cards are truths."""
    times = [
        e["resource"]["effectiveDateTime"]
        for e in stack.charts[chart]["entry"]
        if e["resource"]["resourceType"] == "Observation" and "effectiveDateTime" in e["resource"]
    ]
    newest = max(datetime.fromisoformat(t) for t in times)
    assert newest < stack.now - timedelta(days=30)


# ---------------- the two paths ----------------


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("order_set", list(ORDER_SETS))
@pytest.mark.parametrize("chart", CHART_NAMES)
def test_fetching_and_prefetch_give_the_same_expected_cards(
    stack: Stack, chart: str, order_set: str, hook: str
) -> None:
    """Service fetching and EHR prefetch give identical cards, exactly those the chart calls for."""
    patient_id = stack.patient_ids[chart]
    drafts = ORDER_SETS[order_set](patient_id, stack.today)
    fetched = stack.call(
        hook,
        hook_request(
            hook, patient_id, drafts, fhir_server=stack.server.base_url, token=DUMMY_TOKEN
        ),
        "fetch-path",
    )
    prefetched = stack.call(
        hook,
        hook_request(hook, patient_id, drafts, stack.prefetch(chart, hook).prefetch),
        "prefetch-path",
    )
    assert [card_key(c) for c in fetched["cards"]] == [card_key(c) for c in prefetched["cards"]]
    found = tuple(f"{c['source']['topic']['code']}:{c['indicator']}" for c in fetched["cards"])
    assert found == expected_cards(chart, order_set)


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_first_page_prefetch_is_completed_by_the_service(stack: Stack, chart: str) -> None:
    """An EHR that prefetches only the first page of each search gets the same cards.

    The spec lets clients paginate prefetch; with fhirServer and a token the service follows
    the ``next`` links itself.
    """
    hook = "order-sign"
    patient_id = stack.patient_ids[chart]
    whole = stack.prefetch(chart, hook).prefetch
    first_pages: dict[str, Resource | None] = {}
    for key, template in stack.services[hook]["prefetch"].items():
        query = fill_tokens(template, {"patientId": patient_id})
        # Small pages, so the service has several next links to follow in most categories.
        small = query.replace("_count=100", "_count=3")
        first_pages[key] = stack.server.get(small) if "?" in query else whole[key]
    drafts = _voclosporin(patient_id, stack.today)
    paged = stack.call(
        hook,
        hook_request(
            hook,
            patient_id,
            drafts,
            first_pages,
            fhir_server=stack.server.base_url,
            token=DUMMY_TOKEN,
        ),
        "fetch-path",
    )
    full = stack.call(hook, hook_request(hook, patient_id, drafts, whole), "prefetch-path")
    assert [card_key(c) for c in paged["cards"]] == [card_key(c) for c in full["cards"]]


def test_unknown_patient_gives_the_same_cards_on_both_paths(stack: Stack) -> None:
    """A Patient read that answers 404 (prefetch ``null``) is treated alike on both paths."""
    patient_id = "no-such-patient"
    hook = "order-sign"
    templates = stack.services[hook]["prefetch"]
    prefetch = ehr_prefetch(stack.server, templates, {"patientId": patient_id, "userId": USER})
    assert prefetch.prefetch["patient"] is None
    assert run_query(stack.server, f"Patient/{patient_id}") == (None, 1, [])
    drafts = _voclosporin(patient_id, stack.today)
    fetched = stack.call(
        hook,
        hook_request(
            hook, patient_id, drafts, fhir_server=stack.server.base_url, token=DUMMY_TOKEN
        ),
        "fetch-path",
    )
    prefetched = stack.call(
        hook, hook_request(hook, patient_id, drafts, prefetch.prefetch), "prefetch-path"
    )
    assert [card_key(c) for c in fetched["cards"]] == [card_key(c) for c in prefetched["cards"]]
