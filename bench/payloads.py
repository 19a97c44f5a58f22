"""Realistic hook request bodies for the benchmark: an order-sign for LUPKYNIS with a large chart.

The chart is a lupus-nephritis patient (``tests.charts.lupus.ChartBuilder``) with N Observations
of the codes the service reads (eGFR, creatinine, BP panel, potassium; plausible values, spread
over three years, newest first unremarkable) and 100 active MedicationRequests. The prefetch is
what an EHR would send for the service's own discovery templates (``tests.support.hooks``).
"""

from __future__ import annotations

import json
import random
import re
from datetime import date
from typing import Any

from fhir_mappings.categories import prefetch_templates
from fhir_mappings.knowledge import load_knowledge
from tests.charts.lupus import (
    CHARTS,
    MMF,
    PREDNISONE,
    ChartBuilder,
    Drug,
    voclosporin_draft_order,
)
from tests.support.hooks import chart_resources, hook_request, prefetch_for

Resource = dict[str, Any]

PATIENT_ID = "bench-ln-1"
SERVICE_ID = "voclosporin-order-sign"
MEDICATION_COUNT = 100
HISTORY_DAYS = 3 * 365

# Everyday co-medications of a lupus-nephritis patient that are no CYP3A4 inhibitor, so the
# answer is the usual "clean initiation" set of cards whatever the chart size.
_OTHER_DRUGS = (
    Drug("hydroxychloroquine 200 MG Oral Tablet", "200 mg by mouth twice daily", 200, 2),
    Drug("lisinopril 10 MG Oral Tablet", "10 mg by mouth once daily", 10, 1),
    Drug("losartan potassium 50 MG Oral Tablet", "50 mg by mouth once daily", 50, 1),
    Drug("atorvastatin 20 MG Oral Tablet", "20 mg by mouth at bedtime", 20, 1),
    Drug("calcium carbonate 500 MG Oral Tablet", "500 mg by mouth twice daily", 500, 2),
    Drug("cholecalciferol 25 MCG Oral Capsule", "1 capsule by mouth once daily", 0.025, 1),
    Drug("pantoprazole 40 MG Delayed Release Oral Tablet", "40 mg by mouth once daily", 40, 1),
    Drug("furosemide 20 MG Oral Tablet", "20 mg by mouth once daily", 20, 1),
    Drug("metformin hydrochloride 500 MG Oral Tablet", "500 mg by mouth twice daily", 500, 2),
    Drug("sertraline 50 MG Oral Tablet", "50 mg by mouth once daily", 50, 1),
    Drug("acetaminophen 500 MG Oral Tablet", "1000 mg by mouth as needed", 1000, 1),
    Drug("folic acid 1 MG Oral Tablet", "1 mg by mouth once daily", 1, 1),
)


def chart_bundle(observations: int, today: date, seed: int = 5) -> Resource:
    """The chart as a PUT transaction: Patient, lupus nephritis, 100 meds, N labs."""
    rng = random.Random(seed)
    c = ChartBuilder(PATIENT_ID, today)
    c.patient("female", 34)
    c.lupus_nephritis(onset_days_ago=HISTORY_DAYS)
    c.medication(MMF, authored_days_ago=90)
    c.medication(PREDNISONE, authored_days_ago=90)
    for n in range(MEDICATION_COUNT - 2):
        c.medication(_OTHER_DRUGS[n % len(_OTHER_DRUGS)], authored_days_ago=30 + 7 * n)
    for n in range(observations):
        # Newest first: reading n is taken 1 + n * (three years / N) days ago.
        days_ago = 1 + (n * HISTORY_DAYS) // max(observations, 1)
        kind = n % 4
        if kind == 0:
            c.egfr(round(rng.uniform(70, 105), 0), days_ago=days_ago)
        elif kind == 1:
            c.creatinine_mg_dl(round(rng.uniform(0.6, 1.1), 2), days_ago=days_ago)
        elif kind == 2:
            c.blood_pressure(rng.randint(108, 138), rng.randint(66, 88), days_ago=days_ago)
        else:
            c.potassium(round(rng.uniform(3.6, 4.9), 1), days_ago=days_ago)
    return c.bundle()


def build_chart(observations: int, today: date) -> list[Resource]:
    """The chart's resources (see ``chart_bundle``)."""
    return chart_resources(chart_bundle(observations, today))


def order_sign_request(
    patient_id: str,
    today: date,
    chart: list[Resource] | None = None,
    *,
    fhir_server: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """An order-sign call for the LUPKYNIS draft; prefetch of ``chart`` unless it is None."""
    prefetch = None
    if chart is not None:
        templates = prefetch_templates(load_knowledge())
        prefetch = prefetch_for(chart, patient_id, templates)
    return hook_request(
        "order-sign",
        patient_id,
        [voclosporin_draft_order(patient_id, today)],
        prefetch,
        fhir_server=fhir_server,
        token=token,
    )


def prefetch_request(observations: int, today: date) -> dict[str, Any]:
    """The benchmark's standard call: order-sign with N Observations and 100 meds prefetched."""
    return order_sign_request(PATIENT_ID, today, build_chart(observations, today))


def encode(body: dict[str, Any]) -> bytes:
    """Serialise a body once, as an EHR would send it (compact UTF-8 JSON)."""
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def count_prefetched(body: dict[str, Any]) -> dict[str, int]:
    """Resources per resource type in a request's prefetch (to label the table honestly)."""
    counts: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    for value in (body.get("prefetch") or {}).values():
        if not isinstance(value, dict):
            continue
        entries = (
            value.get("entry", [])
            if value.get("resourceType") == "Bundle"
            else [{"resource": value}]
        )
        for entry in entries:
            resource = entry["resource"]
            key = (resource["resourceType"], resource.get("id", ""))
            if key not in seen:
                seen.add(key)
                counts[key[0]] = counts.get(key[0], 0) + 1
    return counts


SMALL_CHART = "ln-renewal-bp-high"  # 10 resources, about 8 KB: the small order-sign
VARY_TOKEN = b"QQQQQQQQ"  # 8 characters, replaced per request by 8 hex digits (a request number)
_ID = re.compile(rb'"(id|patientId)":"([^"]+)"')
_REFERENCE = re.compile(rb'"reference":"((?:[A-Za-z]+/|#))([^"]+)"')
_HOOK_INSTANCE = re.compile(rb'"hookInstance":"[^"]+"')


def small_request(today: date) -> dict[str, Any]:
    """The small order-sign: a lupus-nephritis renewal chart of 10 resources (about 8 KB)."""
    chart = chart_resources(CHARTS[SMALL_CHART](today))
    return order_sign_request(SMALL_CHART, today, chart)


def vary_template(body: bytes) -> bytes:
    """``body`` with every resource id, reference, the patient id and the hookInstance carrying
    ``VARY_TOKEN``: the load generator puts a new number there for every request, so no cache
    keyed by content or id can stand in for the work (every resource is new to the service)."""
    token = VARY_TOKEN.decode()
    body = _ID.sub(lambda m: b'"%s":"%s-%s"' % (m[1], m[2], VARY_TOKEN), body)
    body = _REFERENCE.sub(lambda m: b'"reference":"%s%s-%s"' % (m[1], m[2], VARY_TOKEN), body)
    return _HOOK_INSTANCE.sub(
        f'"hookInstance":"00000000-0000-4000-8000-0000{token}"'.encode(), body
    )


def varied(template: bytes, number: int) -> bytes:
    """Request ``number``'s body from a ``vary_template`` template."""
    return template.replace(VARY_TOKEN, b"%08x" % (number & 0xFFFFFFFF))
