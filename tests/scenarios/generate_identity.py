"""Regenerate the scenarios of orders written the way EHRs write them (issue 10: drug identity,
route and dose form). Run by hand, then review:

    .venv/bin/python -m tests.scenarios.generate_identity

Kept apart from ``generate.py`` so the two sets can change independently. Each order is shaped as
an EHR sends it (contained Medication with RxNorm and display, NDC-only coding, OID code systems,
topical and ophthalmic products, brand names, typographic characters); ``expect`` is written by
hand from the label and the knowledge decisions (``source`` says which), never copied from the
service output.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from cds_service import close_app, create_app
from tests.charts.lupus import CHARTS, VOCLOSPORIN, dosage
from tests.scenarios.generate import HERE, NOW
from tests.support.hooks import chart_resources, hook_request, prefetch_for

SNOMED = "http://snomed.info/sct"
ON_VOCLOSPORIN = "ln-on-voclosporin-interactions"  # takes LUPKYNIS (and ketoconazole tablets)
STARTING = "ln-initiation-clean"  # about to start LUPKYNIS, nothing interacting
ROUTE_DECISION = 'knowledge "Decisions, second round": route and dose form'
NAMES_DECISION = 'knowledge "Decisions, second round": names as EHRs write them'
CODES_DECISION = 'knowledge "Decisions, second round": code systems'


def _order(patient_id: str, order_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": NOW.date().isoformat(),
        **fields,
    }


def _route(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display}


def _text(text: str) -> dict[str, Any]:
    return {"medicationCodeableConcept": {"text": text}}


# (file name, chart, hook, story, drafts builder, expected [(rule, indicator)], source)
SCENARIOS: list[tuple[str, str, str, str, Any, list[tuple[str, str]], str]] = [
    (
        "ketoconazole-cream-while-on-voclosporin",
        ON_VOCLOSPORIN,
        "order-select",
        "Woman on LUPKYNIS; ketoconazole 2% cream is selected for tinea, with the topical route "
        "coded (SNOMED 6064005). A cream is not systemic exposure: no interaction card.",
        lambda p: [
            _order(
                p,
                "keto-cream",
                **_text("ketoconazole 20 MG/ML Topical Cream"),
                dosageInstruction=[
                    {
                        "text": "apply to affected area once daily",
                        "route": _route("6064005", "Topical route"),
                    }
                ],
            )
        ],
        [],
        f"{ROUTE_DECISION}; ketoconazole 2% cream label: no systemic absorption detected",
    ),
    (
        "ketoconazole-shampoo-while-on-voclosporin",
        ON_VOCLOSPORIN,
        "order-select",
        "Woman on LUPKYNIS; ketoconazole 2% shampoo is selected (no route coded: the dose form "
        "in the name says it). No contraindication card for a shampoo.",
        lambda p: [_order(p, "keto-shampoo", **_text("Ketoconazole 2 % Shampoo"))],
        [],
        f"{ROUTE_DECISION}; ketoconazole (topical) monograph: shampoo for external use only",
    ),
    (
        "erythromycin-eye-ointment-while-on-voclosporin",
        ON_VOCLOSPORIN,
        "order-select",
        "Woman on LUPKYNIS; erythromycin ophthalmic ointment is selected for conjunctivitis, "
        "ophthalmic route coded (SNOMED 54485002). No moderate-inhibitor dose change.",
        lambda p: [
            _order(
                p,
                "ery-eye",
                **_text("erythromycin 5 MG/GM Ophthalmic Ointment"),
                dosageInstruction=[
                    {
                        "text": "1 cm ribbon in the left eye 4 times daily",
                        "route": _route("54485002", "Ophthalmic route"),
                    }
                ],
            )
        ],
        [],
        f"{ROUTE_DECISION}; erythromycin ophthalmic ointment USP 0.5% (DailyMed)",
    ),
    (
        "restasis-eye-drops-while-on-voclosporin",
        ON_VOCLOSPORIN,
        "order-select",
        "Woman on LUPKYNIS; RESTASIS (cyclosporine ophthalmic emulsion) is selected for dry eye. "
        "Not a second systemic calcineurin inhibitor: at most an information note.",
        lambda p: [
            _order(
                p,
                "restasis",
                medicationReference={"reference": "#med-restasis"},
                contained=[
                    {
                        "resourceType": "Medication",
                        "id": "med-restasis",
                        "code": {"text": "RESTASIS 0.05 % Ophthalmic Emulsion"},
                        "form": {"text": "eye drops"},
                    }
                ],
            )
        ],
        [("calcineurin-inhibitor-duplicate", "info")],
        f"{ROUTE_DECISION} (topical or ophthalmic calcineurin inhibitors: at most an info note); "
        "RESTASIS label: not absorbed systemically after topical ocular use",
    ),
    (
        "paxlovid-by-brand-while-on-voclosporin",
        ON_VOCLOSPORIN,
        "order-select",
        "Woman on LUPKYNIS; PAXLOVID is selected for COVID-19, written by brand only. It is "
        "co-packaged nirmatrelvir and ritonavir, and ritonavir is a strong CYP3A4 inhibitor.",
        lambda p: [_order(p, "paxlovid", **_text("PAXLOVID 300 MG / 100 MG Dose Pack"))],
        [("strong-cyp3a4-inhibitor", "critical")],
        f"{NAMES_DECISION} (brand table, e.g. PAXLOVID -> nirmatrelvir + ritonavir); LUPKYNIS PI 4 "
        "and 7 (strong CYP3A4 inhibitors contraindicated); knowledge 3b (ritonavir strong)",
    ),
    (
        "st-johns-wort-typographic-apostrophe",
        ON_VOCLOSPORIN,
        "order-select",
        "Woman on LUPKYNIS; \u201cSt. John\u2019s Wort\u201d is entered with a typographic "
        "apostrophe, as word processors write it. St John's wort is a CYP3A4 inducer.",
        lambda p: [_order(p, "sjw", **_text("St. John\u2019s Wort 300 mg capsule"))],
        [("cyp3a4-inducer", "warning")],
        f"{NAMES_DECISION} (Unicode normalisation); PI 7; knowledge 3b (moderate inducer; team "
        "decision: warn on moderate inducers)",
    ),
    (
        "lupkynis-strength-glued-to-name",
        STARTING,
        "order-sign",
        "34-year-old woman starting voclosporin; the EHR writes the order text as "
        "'LUPKYNIS7.9MG CAP'. It is LUPKYNIS: the same cards as any clean initiation.",
        lambda p: [
            _order(
                p,
                "draft-voclosporin-1",
                **_text("LUPKYNIS7.9MG CAP"),
                dosageInstruction=[dosage(VOCLOSPORIN)],
            )
        ],
        [("prior-authorization", "info")],
        f"{NAMES_DECISION} (strengths glued to words); expectation as initiation-ready",
    ),
    (
        "lupkynis-ndc-only",
        STARTING,
        "order-sign",
        "34-year-old woman starting voclosporin; the order carries only the LUPKYNIS NDC "
        "(75626-0001-01, 11-digit 5-4-2 form) and no text. It is LUPKYNIS.",
        lambda p: [
            _order(
                p,
                "draft-voclosporin-1",
                medicationCodeableConcept={
                    "coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "75626-0001-01"}]
                },
                dosageInstruction=[dosage(VOCLOSPORIN)],
            )
        ],
        [("prior-authorization", "info")],
        f"{CODES_DECISION} (NDC 10/11-digit forms); knowledge 5a (NDC 75626-001); expectation "
        "as initiation-ready",
    ),
    (
        "atazanavir-contained-rxnorm-oid",
        ON_VOCLOSPORIN,
        "order-select",
        "Woman on LUPKYNIS; atazanavir is selected as a contained Medication coded with the "
        "RxNorm OID (urn:oid:2.16.840.1.113883.6.88) and a display. A strong CYP3A4 inhibitor.",
        lambda p: [
            _order(
                p,
                "atazanavir",
                medicationReference={"reference": "#med-atv", "display": "atazanavir"},
                contained=[
                    {
                        "resourceType": "Medication",
                        "id": "med-atv",
                        "code": {
                            "coding": [
                                {
                                    "system": "urn:oid:2.16.840.1.113883.6.88",
                                    "code": "343047",
                                    "display": "atazanavir",
                                }
                            ]
                        },
                        "form": {"text": "Oral Capsule"},
                    }
                ],
            )
        ],
        [("strong-cyp3a4-inhibitor", "critical")],
        f"{CODES_DECISION} (OID forms); knowledge 5a (atazanavir RxCUI 343047) and 3b (strong)",
    ),
    (
        "mmr-cvx-oid-system",
        ON_VOCLOSPORIN,
        "order-select",
        "Woman on LUPKYNIS; an MMR vaccine is selected, coded only as CVX 03 with the CVX OID "
        "(urn:oid:2.16.840.1.113883.12.292) and no text. A live vaccine: avoid.",
        lambda p: [
            _order(
                p,
                "mmr-oid",
                medicationCodeableConcept={
                    "coding": [{"system": "urn:oid:2.16.840.1.113883.12.292", "code": "03"}]
                },
            )
        ],
        [("live-vaccine", "warning")],
        f"{CODES_DECISION}; PI 5.9 (avoid live vaccines); knowledge 5c (CVX 03 MMR, live)",
    ),
    (
        "flumist-by-name-while-on-voclosporin",
        ON_VOCLOSPORIN,
        "order-select",
        "Woman on LUPKYNIS; FluMist is selected by name only (no CVX). FluMist is influenza "
        "vaccine live, intranasal: avoid live vaccines.",
        lambda p: [_order(p, "flumist", **_text("FluMist Quadrivalent nasal spray"))],
        [("live-vaccine", "warning")],
        f"{NAMES_DECISION}; PI 5.9; FluMist Quadrivalent PI (Influenza Vaccine Live, Intranasal)",
    ),
]


def build() -> None:
    app = create_app({"TESTING": True, "CDS_DATABASE_URL": "sqlite://", "CDS_CLOCK": lambda: NOW})
    try:
        services = app.extensions["cds_service"].services
        for name, chart, hook, story, drafts, expected, source in SCENARIOS:
            resources = chart_resources(CHARTS[chart](NOW.date()))
            patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
            prefetch = prefetch_for(resources, patient_id, services[f"voclosporin-{hook}"].prefetch)
            request = hook_request(hook, patient_id, drafts(patient_id), prefetch)
            request["hookInstance"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"scenario:{name}"))
            scenario = {
                "title": name.replace("-", " "),
                "story": story,
                "source": source,
                "now": NOW.isoformat().replace("+00:00", "Z"),
                "service": f"voclosporin-{hook}",
                "expect": [{"rule": rule, "indicator": indicator} for rule, indicator in expected],
                "request": request,
            }
            (HERE / f"{name}.json").write_text(
                json.dumps(scenario, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
            )
    finally:
        close_app(app)


if __name__ == "__main__":
    build()
