"""The real sekmet-fhir server loads every chart we test with and answers the service's searches."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from tests.charts.lupus import CHARTS
from tests.support.fhir_server import (
    FhirServer,
    FhirServerError,
    created_ids,
    fhir_server,  # noqa: F401  (the session fixture)
)
from tests.support.paths import SYNTHEA_DIR

pytestmark = pytest.mark.fhir_server


SYNTHEA_FILES = sorted(SYNTHEA_DIR.glob("*.json"))
LOINC = "http://loinc.org"
EGFR_CODES = ("33914-3", "98979-8", "62238-1")
EGFR_QUERY = ",".join(f"{LOINC}|{code}" for code in EGFR_CODES)

Resource = dict[str, Any]


@dataclass(frozen=True)
class LoadedChart:
    """A chart as written (the Bundle) and where the server put its Patient."""

    bundle: Resource
    patient_id: str
    load_seconds: float


def resources_of(
    bundle: Resource, rtype: str, keep: Callable[[Resource], bool] = lambda r: True
) -> list[Resource]:
    """Return the chart's own resources of one type that satisfy ``keep`` (the expected answer)."""
    return [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == rtype and keep(e["resource"])
    ]


def has_code(*codes: str) -> Callable[[Resource], bool]:
    """Match a resource whose ``code`` carries one of these LOINC codes."""
    return lambda r: any(
        c.get("system") == LOINC and c.get("code") in codes for c in r["code"].get("coding", [])
    )


def is_active_condition(r: Resource) -> bool:
    """Match a Condition whose clinicalStatus is active."""
    return any(c.get("code") == "active" for c in r.get("clinicalStatus", {}).get("coding", []))


def expected_counts(bundle: Resource) -> dict[str, int]:
    """Return, per search the service makes, how many resources the chart should answer with."""
    return {
        f"Observation?code={EGFR_QUERY}&_sort=-date&_count=50": len(
            resources_of(bundle, "Observation", has_code(*EGFR_CODES))
        ),
        "MedicationRequest?status=active": len(
            resources_of(bundle, "MedicationRequest", lambda r: r["status"] == "active")
        ),
        "Condition?clinical-status=active": len(
            resources_of(bundle, "Condition", is_active_condition)
        ),
        "Immunization?": len(resources_of(bundle, "Immunization")),
        "AllergyIntolerance?": len(resources_of(bundle, "AllergyIntolerance")),
        f"Observation?code={LOINC}|85354-9,{LOINC}|55284-4": len(
            resources_of(bundle, "Observation", has_code("85354-9", "55284-4"))
        ),
    }


def assert_searchable(server: FhirServer, chart: LoadedChart) -> None:
    """Check the Patient reads back and every service search returns the chart's own count."""
    patient = server.get(f"Patient/{chart.patient_id}")
    assert patient["birthDate"] == chart.bundle["entry"][0]["resource"]["birthDate"]
    for query, count in expected_counts(chart.bundle).items():
        rtype, _, params = query.partition("?")
        url = f"{rtype}?patient={chart.patient_id}" + (f"&{params}" if params else "")
        found = server.search_all(url)
        assert len(found) == count, url
        assert {r["resourceType"] for r in found} <= {rtype}, url
    every_obs = server.search_all(f"Observation?patient=Patient/{chart.patient_id}&_count=1000")
    assert len(every_obs) == len(resources_of(chart.bundle, "Observation"))


@pytest.fixture(scope="module")
def synthea_charts(fhir_server: FhirServer) -> dict[str, LoadedChart]:  # noqa: F811
    """Load the seven Synthea charts once (POST entries: reloading would duplicate them)."""
    loaded = {}
    for path in SYNTHEA_FILES:
        bundle = json.loads(path.read_text())
        started = time.monotonic()
        response = fhir_server.load_bundle(bundle)
        (patient_id,) = created_ids(response)["Patient"]
        loaded[path.stem.rsplit("_", 1)[0]] = LoadedChart(
            bundle, patient_id, time.monotonic() - started
        )
    return loaded


@pytest.fixture(scope="module")
def ln_charts(fhir_server: FhirServer) -> dict[str, LoadedChart]:  # noqa: F811
    """Load every lupus-nephritis chart once, dated relative to today."""
    loaded = {}
    for chart_id, build in CHARTS.items():
        bundle = build(date.today())
        started = time.monotonic()
        fhir_server.load_bundle(bundle)
        loaded[chart_id] = LoadedChart(bundle, chart_id, time.monotonic() - started)
    return loaded


def test_seven_synthea_charts_are_present() -> None:
    """The shared Synthea data set is where the README says, all seven charts."""
    assert len(SYNTHEA_FILES) == 7


@pytest.mark.parametrize("name", [p.stem.rsplit("_", 1)[0] for p in SYNTHEA_FILES])
def test_synthea_chart_is_searchable(
    fhir_server: FhirServer,  # noqa: F811
    synthea_charts: dict[str, LoadedChart],
    name: str,
) -> None:
    """Each Synthea chart loads (urn:uuid references rewritten) and answers our searches."""
    assert_searchable(fhir_server, synthea_charts[name])


def test_urn_uuid_ids_are_replaced_by_server_ids(
    fhir_server: FhirServer,  # noqa: F811
    synthea_charts: dict[str, LoadedChart],
) -> None:
    """POSTed Synthea resources get new ids: searching by the original urn:uuid id finds nothing."""
    chart = synthea_charts["Dirk_Kuhlman"]
    original_id = chart.bundle["entry"][0]["resource"]["id"]
    assert chart.patient_id != original_id
    assert server_total(fhir_server, f"Observation?patient={original_id}") == 0
    assert server_total(fhir_server, f"Observation?patient={chart.patient_id}") == 266


def server_total(server: FhirServer, query: str) -> int:
    """Return Bundle.total of a search."""
    return int(server.get(query)["total"])


def test_paging_next_links_are_absolute_and_return_everything(
    fhir_server: FhirServer,  # noqa: F811
    synthea_charts: dict[str, LoadedChart],
) -> None:
    """Default pages hold 20; absolute `next` links on our base URL walk all 266 observations."""
    chart = synthea_charts["Dirk_Kuhlman"]
    first = fhir_server.get(f"Observation?patient={chart.patient_id}&_sort=-date")
    assert first["total"] == 266
    assert len(first["entry"]) == 20
    next_url = next(li["url"] for li in first["link"] if li["relation"] == "next")
    assert next_url.startswith(f"{fhir_server.base_url}/Observation?")
    assert "_offset=20" in next_url
    assert "_sort=-date" in next_url

    found = fhir_server.search_all(f"Observation?patient={chart.patient_id}&_sort=-date")
    assert len({r["id"] for r in found}) == len(found) == 266
    dates = [r["effectiveDateTime"] for r in found]
    assert dates == sorted(dates, reverse=True)


@pytest.mark.parametrize("chart_id", list(CHARTS))
def test_ln_chart_is_valid_fhir_r4(chart_id: str) -> None:
    """Every lupus chart validates against the fhir.resources R4B models, ids prefixed ln-."""
    bundle = CHARTS[chart_id](date.today())
    Bundle.model_validate(bundle)
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert ids[0] == chart_id
    assert all(i.startswith(f"{chart_id}-") for i in ids[1:])
    assert len(set(ids)) == len(ids)
    assert {e["request"]["method"] for e in bundle["entry"]} == {"PUT"}


@pytest.mark.parametrize("chart_id", list(CHARTS))
def test_ln_chart_is_searchable(
    fhir_server: FhirServer,  # noqa: F811
    ln_charts: dict[str, LoadedChart],
    chart_id: str,
) -> None:
    """Each lupus chart loads and answers the service's searches with exactly its own data."""
    assert_searchable(fhir_server, ln_charts[chart_id])


def test_ln_chart_reload_is_idempotent(
    fhir_server: FhirServer,  # noqa: F811
    ln_charts: dict[str, LoadedChart],
) -> None:
    """Loading a chart again bumps versions instead of duplicating resources."""
    chart = ln_charts["ln-initiation-clean"]
    before = server_total(fhir_server, "Observation?patient=ln-initiation-clean")
    version = int(fhir_server.get("Patient/ln-initiation-clean")["meta"]["versionId"])
    fhir_server.load_bundle(chart.bundle)
    assert server_total(fhir_server, "Observation?patient=ln-initiation-clean") == before
    assert int(fhir_server.get("Patient/ln-initiation-clean")["meta"]["versionId"]) == version + 1


def test_ln_egfr_date_window_and_sort(
    fhir_server: FhirServer,  # noqa: F811
    ln_charts: dict[str, LoadedChart],
) -> None:
    """date=ge limits eGFRs to the 30-day window and _sort=-date puts the latest first."""
    since = (date.today() - timedelta(days=30)).isoformat()
    base = f"Observation?patient=ln-renewal-egfr-25pct&code={EGFR_QUERY}"
    recent = fhir_server.search_all(f"{base}&date=ge{since}")
    assert [o["valueQuantity"]["value"] for o in recent] == [54]
    history = fhir_server.search_all(f"{base}&_sort=-date")
    assert [o["valueQuantity"]["value"] for o in history] == [54, 60, 66, 71, 72, 95]
    missing = "Observation?patient=ln-initiation-missing-labs"
    assert fhir_server.search_all(f"{missing}&code={EGFR_QUERY}&date=ge{since}") == []


def test_load_times_are_small(
    synthea_charts: dict[str, LoadedChart], ln_charts: dict[str, LoadedChart]
) -> None:
    """Loading stays fast enough for a per-session fixture (each chart well under 10 s)."""
    for chart in [*synthea_charts.values(), *ln_charts.values()]:
        assert chart.load_seconds < 10


def test_server_that_cannot_start_fails_loudly_with_its_log() -> None:
    """A broken configuration raises FhirServerError carrying the server log, and cleans up."""
    server = FhirServer(extra_settings={"validation": {"inbound": "not-a-mode"}})
    with pytest.raises(FhirServerError, match="server log") as raised:
        server.start()
    assert "not-a-mode" in str(raised.value)
    assert server.workdir is None
