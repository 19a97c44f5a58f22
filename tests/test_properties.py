"""Property tests (hypothesis): arbitrary and mutated FHIR never breaks the mapping, the rules or
the HTTP answer (issue 3, "bad input never hurts").

Three layers, each fed junk that a real EHR or a hostile client could send:

- ``build_facts``: arbitrary JSON objects and mutated valid resources never raise (it has no
  documented error: the request schema stops malformed Bundles); unusable resources are
  reported, not fatal;
- ``evaluate`` + ``build_cards``: no exception escapes, and no rule had to be caught raising;
- the whole HTTP call with a mutated prefetch: never a 5xx, never a traceback, and a 200 is
  strict JSON (no NaN) that the CDS Hooks checker accepts.

Inputs carry what ``json.loads`` can produce, including NaN, Infinity and integers beyond float
range. Example counts are bounded so the file runs in well under a minute.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service import close_app
from cds_service.cards import build_cards
from cds_service.rules.engine import evaluate
from cds_service.spec_check import check_response
from fhir_mappings.build import build_facts
from fhir_mappings.bundles import bundle_resources
from fhir_mappings.categories import CATEGORIES, category_of_key, prefetch_templates
from fhir_mappings.codes import Terminology
from fhir_mappings.facts import PatientFacts
from fhir_mappings.knowledge import Knowledge, load_knowledge
from tests.charts.lupus import CHARTS, voclosporin_draft_order
from tests.conftest import FIXED_NOW, make_app
from tests.support.hooks import chart_resources, hook_request, prefetch_for

Resource = dict[str, Any]
TODAY = FIXED_NOW.date()
PROPERTY_SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RESOURCE_TYPES = (
    "Patient",
    "MedicationRequest",
    "Medication",
    "Observation",
    "Condition",
    "Immunization",
    "AllergyIntolerance",
    "Bundle",
    "OperationOutcome",
    "Encounter",
    "patient",
    "",
    "Observation ",
)
WEIRD_DATES = (
    "",
    "2026",
    "2026-13",
    "2026-02-30",
    "2026-02-29T09:00:00Z",
    "0000",
    "0001-01-01",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59Z",
    "2026-11-01T25:61:00Z",
    "2026-11-01T09:00:00+99:00",
    "2026-11-01T09:00",
    "yesterday",
    "20261101",
    "-2026-01-01",
    "2026-11-01T09:00:00.123456789Z",
    "\x00",
    "२०२६-११-०१",
)
HUGE_NUMBERS = (10**400, -(10**400), 2**63, -(2**63) - 1, 1e308, -1e308, 5e-324)


# --------------------------------------------------------------------------- strategies


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(WEIRD_DATES),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def arbitrary_resources(draw: st.DrawFn) -> Resource:
    """A JSON object that claims (or fails to claim) to be a FHIR resource."""
    body = draw(st.dictionaries(st.text(max_size=12), json_values, max_size=6))
    if draw(st.booleans()):
        body["resourceType"] = draw(st.one_of(st.sampled_from(RESOURCE_TYPES), json_scalars))
    if draw(st.booleans()):
        body["id"] = draw(st.one_of(st.text(max_size=8), json_scalars))
    return body


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON value (dict keys and list indexes), the root excluded."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


def _wrong_type(value: Any) -> Any:
    if isinstance(value, str):
        return 7
    if isinstance(value, bool | int | float):
        return str(value)
    if isinstance(value, list):
        return {"0": value[0]} if value else {}
    if isinstance(value, dict):
        return list(value.values())
    return "null"


MUTATIONS: tuple[str, ...] = (
    "delete",
    "null",
    "junk",
    "wrong-type",
    "huge-number",
    "weird-date",
    "empty",
    "resource-type",
)


@st.composite
def mutated(draw: st.DrawFn, resource: Resource) -> Resource:
    """Apply one to three mutations at random places of a deep copy of ``resource``."""
    result: Resource = json.loads(json.dumps(resource))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(result))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = result
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        kind = draw(st.sampled_from(MUTATIONS))
        if kind == "delete":
            if isinstance(parent, dict):
                del parent[last]
            else:
                parent.pop(last)
        elif kind == "null":
            parent[last] = None
        elif kind == "junk":
            parent[last] = draw(json_values)
        elif kind == "wrong-type":
            parent[last] = _wrong_type(parent[last])
        elif kind == "huge-number":
            parent[last] = draw(st.sampled_from(HUGE_NUMBERS))
        elif kind == "weird-date":
            parent[last] = draw(st.sampled_from(WEIRD_DATES))
        elif kind == "empty":
            parent[last] = draw(st.sampled_from(["", [], {}]))
        else:
            result["resourceType"] = draw(st.sampled_from(RESOURCE_TYPES))
    return result


# --------------------------------------------------------------------------- chart material


def _categorised(chart_id: str, knowledge: Knowledge) -> tuple[Resource | None, dict[str, Any]]:
    """The chart as the service sees it after prefetch: patient plus resources per category."""
    resources = chart_resources(CHARTS[chart_id](TODAY))
    prefetch = prefetch_for(resources, chart_id, prefetch_templates(knowledge))
    chart: dict[str, Any] = {}
    for key, value in prefetch.items():
        if value is None:
            chart[key] = []
        elif value.get("resourceType") == "Bundle":
            chart[key] = bundle_resources(value)
        else:
            chart[key] = [value]
    return prefetch.get("patient"), chart


KNOWLEDGE = load_knowledge()
TERMINOLOGY = Terminology(KNOWLEDGE)
CHART_MATERIAL = {chart_id: _categorised(chart_id, KNOWLEDGE) for chart_id in CHARTS}


def _facts(
    patient: Resource | None,
    chart: dict[str, list[Resource]],
    draft_orders: list[Resource],
    *,
    patient_id: str = "p-1",
    selections: frozenset[str] | None = None,
) -> PatientFacts:
    return build_facts(
        terminology=TERMINOLOGY,
        now=FIXED_NOW,
        patient_id=patient_id,
        patient=patient,
        chart={category_of_key(key): value for key, value in chart.items()},
        draft_orders=draft_orders,
        selections=selections,
        unavailable={},
    )


def _assert_rules_and_cards_survive(facts: PatientFacts, drafts: list[Resource]) -> None:
    """Evaluate and build cards; no exception escapes and no rule needed catching."""
    evaluation = evaluate(facts, KNOWLEDGE)
    crashed = [g for g in evaluation.not_checked if "internal error" in g.reason]
    assert not crashed, f"rules raised on this input: {[g.rule_id for g in crashed]}"
    cards = build_cards(evaluation.findings, KNOWLEDGE, drafts)
    json.dumps({"cards": [card.body for card in cards]}, allow_nan=False)  # strict JSON out


# --------------------------------------------------------------------------- the mapping


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(
    patient=st.one_of(st.none(), arbitrary_resources()),
    chart=st.dictionaries(
        st.sampled_from([spec.prefetch_key for spec in CATEGORIES.values()]),
        st.lists(arbitrary_resources(), max_size=4),
        max_size=4,
    ),
    drafts=st.lists(arbitrary_resources(), max_size=3),
    selections=st.one_of(st.none(), st.frozensets(st.text(max_size=12), max_size=3)),
)
def test_arbitrary_json_never_breaks_the_mapping(
    patient: Resource | None,
    chart: dict[str, list[Resource]],
    drafts: list[Resource],
    selections: frozenset[str] | None,
) -> None:
    """Arbitrary JSON objects anywhere in the chart or the drafts map to facts without raising."""
    _assert_rules_and_cards_survive(_facts(patient, chart, drafts, selections=selections), drafts)


@settings(PROPERTY_SETTINGS, max_examples=400)
@given(data=st.data(), chart_id=st.sampled_from(sorted(CHARTS)))
def test_mutated_chart_never_breaks_the_mapping_or_the_rules(
    data: st.DataObject, chart_id: str
) -> None:
    """One to three resources of a real chart, mutated, still give facts, findings and cards."""
    patient, chart = CHART_MATERIAL[chart_id]
    chart = {key: list(value) for key, value in chart.items()}
    drafts = [voclosporin_draft_order(chart_id, TODAY)]
    for _ in range(data.draw(st.integers(1, 3), label="resources to mutate")):
        target = data.draw(st.sampled_from(["patient", "draft", *sorted(chart)]), label="where")
        if target == "patient" and patient is not None:
            patient = data.draw(mutated(patient), label="patient")
        elif target == "draft":
            drafts = [data.draw(mutated(drafts[0]), label="draft")]
        elif chart.get(target):
            index = data.draw(st.integers(0, len(chart[target]) - 1))
            chart[target][index] = data.draw(mutated(chart[target][index]), label=target)
    _assert_rules_and_cards_survive(_facts(patient, chart, drafts, patient_id=chart_id), drafts)


def test_mutation_strategy_reaches_the_rules() -> None:
    """Guard the properties: unmutated chart material does produce voclosporin findings."""
    patient, chart = CHART_MATERIAL["ln-initiation-low-egfr-high-bp"]
    facts = _facts(patient, chart, [voclosporin_draft_order("x", TODAY)])
    rule_ids = {f.rule_id for f in evaluate(facts, KNOWLEDGE).findings}
    assert {"egfr-baseline-low", "blood-pressure-high", "hyperkalemia"} <= rule_ids


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def http_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One app for all examples (no FHIR server: missing data is a 412, which is fine)."""
    application = make_app(Path(tmp_path_factory.mktemp("properties")))
    yield application
    close_app(application)


@pytest.fixture(scope="module")
def http_client(http_app: Flask) -> FlaskClient:
    return http_app.test_client()


SIGN_URL = "/cds-services/voclosporin-order-sign"


def _prefetch(chart_id: str) -> dict[str, Any]:
    resources = chart_resources(CHARTS[chart_id](TODAY))
    return prefetch_for(resources, chart_id, prefetch_templates(KNOWLEDGE))


PREFETCH_MATERIAL = {chart_id: _prefetch(chart_id) for chart_id in CHARTS}


@settings(PROPERTY_SETTINGS, max_examples=250)
@given(data=st.data(), chart_id=st.sampled_from(sorted(CHARTS)))
def test_mutated_prefetch_never_gets_a_5xx(
    http_client: FlaskClient, data: st.DataObject, chart_id: str
) -> None:
    """A hook call whose prefetch has mutated resources is never a 5xx and a 200 is valid CDS."""
    prefetch = json.loads(json.dumps(PREFETCH_MATERIAL[chart_id]))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        key = data.draw(st.sampled_from(sorted(prefetch)), label="key")
        value = prefetch[key]
        entries = (
            [
                e
                for e in (value or {}).get("entry") or []
                if isinstance(e, dict) and isinstance(e.get("resource"), dict)
            ]
            if isinstance((value or {}).get("entry"), list)
            else []
        )
        if value is None:
            prefetch[key] = data.draw(st.one_of(st.none(), arbitrary_resources()), label=key)
        elif entries and data.draw(st.booleans(), label="mutate an entry"):
            entry = data.draw(st.sampled_from(entries), label="entry")
            entry["resource"] = data.draw(mutated(entry["resource"]), label=key)
        else:
            prefetch[key] = data.draw(mutated(value), label=key)
    body = hook_request(
        "order-sign", chart_id, [voclosporin_draft_order(chart_id, TODAY)], prefetch
    )
    raw = json.dumps(body)  # NaN and Infinity go out as json.dumps writes them
    response = http_client.post(SIGN_URL, data=raw, content_type="application/json")
    text = response.get_data(as_text=True)
    assert response.status_code < 500, text[:500]
    assert "Traceback" not in text
    document = json.loads(text, parse_constant=_refuse_constant)
    if response.status_code == 200:
        assert check_response(document) == []
    else:
        assert document["error"]["status"] == response.status_code


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"response holds the non-JSON constant {name}")
