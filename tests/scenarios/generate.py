"""Regenerate the scenario files from the lupus-nephritis charts (run by hand, then review).

    .venv/bin/python -m tests.scenarios.generate [name ...]   (no name: all of them)

Each file is a whole hook request as an EHR would send it (prefetch filled from the service's own
discovery templates) plus what a clinician expects: the rule ids and indicators of the cards.
The expectations below are written by hand from the label, never copied from the service output.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cds_service import close_app, create_app
from tests.charts.lupus import CHARTS, voclosporin_draft_order
from tests.support.hooks import chart_resources, hook_request, prefetch_for

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
HERE = Path(__file__).parent


def _order(patient_id: str, order_id: str, text: str, cvx: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": text}
    if cvx:
        concept["coding"] = [{"system": "http://hl7.org/fhir/sid/cvx", "code": cvx}]
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": NOW.date().isoformat(),
        "medicationCodeableConcept": concept,
    }


# (file name, chart, hook, story, drafts builder, expected [(rule id, indicator)])
SCENARIOS: list[tuple[str, str, str, str, Any, list[tuple[str, str]]]] = [
    (
        "initiation-ready",
        "ln-initiation-clean",
        "order-sign",
        "34-year-old woman with active lupus nephritis on MMF and prednisone, recent eGFR 88, BP "
        "128/82, K 4.2. Starting LUPKYNIS 23.7 mg twice daily: nothing to stop her; the payer "
        "criteria are shown for the prior authorization.",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [("prior-authorization", "info")],
    ),
    (
        "initiation-three-gates-fail",
        "ln-initiation-low-egfr-high-bp",
        "order-sign",
        "29-year-old woman: eGFR 42 (<= 45), BP 170/95 (> 165 systolic), K 5.6 above the lab's "
        "5.1. Do not start with this BP; eGFR and potassium need attention.",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [
            ("blood-pressure-high", "critical"),
            ("egfr-baseline-low", "warning"),
            ("hyperkalemia", "warning"),
            ("prior-authorization", "info"),
        ],
    ),
    (
        "initiation-no-recent-labs",
        "ln-initiation-missing-labs",
        "order-select",
        "31-year-old woman whose last eGFR is 4 months old and who has no BP or potassium this "
        "month. The baseline eGFR and BP must be measured first; the missing potassium is a "
        "monitoring note (info), not a data-access warning.",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [
            ("egfr-baseline-missing", "warning"),
            ("blood-pressure-missing", "warning"),
            ("prior-authorization", "info"),
            ("monitoring-gaps", "info"),
        ],
    ),
    (
        "initiation-creatinine-only",
        "ln-creatinine-only-umol",
        "order-sign",
        "40-year-old woman with no eGFR result but a creatinine of 97 umol/L five days ago: the "
        "service computes eGFR (CKD-EPI 2021), which is normal, so only the payer card shows.",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [("prior-authorization", "info")],
    ),
    (
        "renewal-egfr-down-25-percent",
        "ln-renewal-egfr-25pct",
        "order-sign",
        "37-year-old woman on LUPKYNIS for 120 days; eGFR 72 before starting, 54 now (-25%). "
        "Reduce by 7.9 mg twice daily and recheck in two weeks. The payer's renewal criteria are "
        "shown (info): the decline means no documented benefit by eGFR.",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [("egfr-decline", "warning"), ("prior-authorization", "info")],
    ),
    (
        "renewal-egfr-down-35-percent",
        "ln-renewal-egfr-35pct",
        "order-sign",
        "37-year-old woman on LUPKYNIS for 120 days; eGFR 80 before starting, 52 now (-35%). "
        "Discontinue. The payer's renewal criteria are shown (info).",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [("egfr-decline", "critical"), ("prior-authorization", "info")],
    ),
    (
        "ketoconazole-for-patient-not-on-voclosporin",
        "ln-initiation-clean",
        "order-sign",
        "A patient not on voclosporin is prescribed ketoconazole: nothing to say (no voclosporin).",
        lambda p: [_order(p, "keto", "ketoconazole 200 MG Oral Tablet")],
        [],
    ),
    (
        "renewal-with-ketoconazole-active",
        "ln-on-voclosporin-interactions",
        "order-sign",
        "Woman on LUPKYNIS and, since recently, ketoconazole. Renewing LUPKYNIS: contraindicated. "
        "No pre-treatment eGFR is on file, but the current eGFR (95, 8 days ago) is >= 60, which "
        "is never a decline finding, so no monitoring note asks for the baseline. The payer's "
        "renewal criteria are shown (info).",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [
            ("strong-cyp3a4-inhibitor", "critical"),
            ("prior-authorization", "info"),
        ],
    ),
    (
        "clarithromycin-ordered-while-on-voclosporin",
        "ln-on-voclosporin-interactions",
        "order-select",
        "Woman on LUPKYNIS; the clinician selects clarithromycin for a chest infection. "
        "Contraindicated (and she is already on ketoconazole, which is not what is being ordered "
        "now, so only the new order is flagged).",
        lambda p: [_order(p, "clari", "clarithromycin 500 MG Oral Tablet")],
        [("strong-cyp3a4-inhibitor", "critical")],
    ),
    (
        "mmr-ordered-while-on-voclosporin",
        "ln-on-voclosporin-interactions",
        "medication-prescribe",
        "Woman on LUPKYNIS; an MMR vaccine (live) is being prescribed: avoid live vaccines.",
        lambda p: [_order(p, "mmr", "MMR vaccine", cvx="03")],
        [("live-vaccine", "warning")],
    ),
    (
        "initiation-after-recent-mmr",
        "ln-live-vaccine-recent",
        "order-sign",
        "27-year-old woman who had MMR 14 days ago: live vaccines should be given at least 4 weeks "
        "before immunosuppression.",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [("live-vaccine", "warning"), ("prior-authorization", "info")],
    ),
    (
        "adolescent",
        "ln-adolescent",
        "order-sign",
        "16-year-old girl with lupus nephritis: not established under 18; the payer requires 18+.",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [("pediatric", "warning"), ("prior-authorization", "info")],
    ),
    (
        "with-cyclophosphamide",
        "ln-cyclophosphamide",
        "order-sign",
        "33-year-old woman induced with IV cyclophosphamide and no MMF: not recommended together; "
        "MMF background therapy is missing.",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [
            ("cyclophosphamide", "warning"),
            ("background-therapy-missing", "info"),
            ("prior-authorization", "info"),
        ],
    ),
    (
        "allergy-to-voclosporin",
        "ln-voclosporin-allergy",
        "order-sign",
        "38-year-old woman with a severe hypersensitivity reaction to voclosporin on record.",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [("hypersensitivity", "critical"), ("prior-authorization", "info")],
    ),
    (
        "renewal-bp-178-112",
        "ln-renewal-bp-high",
        "order-sign",
        "35-year-old woman on LUPKYNIS for 120 days, eGFR stable (86 -> 84), BP 178/112 two days "
        "ago. Renewing: BP above 165/105 on treatment means discontinue LUPKYNIS and start "
        "antihypertensive therapy.",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [("blood-pressure-high-on-treatment", "critical"), ("prior-authorization", "info")],
    ),
    (
        "ibuprofen-ordered-while-on-voclosporin",
        "ln-on-voclosporin-stable",
        "order-select",
        "41-year-old woman on LUPKYNIS, labs unremarkable; the clinician selects ibuprofen for "
        "joint pain. An NSAID is nephrotoxic: warn and monitor eGFR.",
        lambda p: [_order(p, "ibuprofen", "ibuprofen 400 MG Oral Tablet")],
        [("nephrotoxic-comedication", "warning")],
    ),
    (
        "trimethoprim-with-potassium-near-the-limit",
        "ln-on-voclosporin-potassium-4-9",
        "order-sign",
        "39-year-old woman on LUPKYNIS with potassium 4.9 mmol/L (lab upper limit 5.1) is "
        "prescribed co-trimoxazole for a urinary infection. Trimethoprim raises potassium and she "
        "is within 0.2 mmol/L of the limit: warning.",
        lambda p: [
            _order(p, "cotrimoxazole", "sulfamethoxazole 800 MG / trimethoprim 160 MG Oral Tablet")
        ],
        [("hyperkalemia-comedication", "warning")],
    ),
    (
        "lisinopril-with-normal-potassium",
        "ln-on-voclosporin-stable",
        "order-sign",
        "41-year-old woman on LUPKYNIS with potassium 4.3 mmol/L (limit 5.1) is started on "
        "lisinopril for proteinuria: standard lupus nephritis care, nothing to say at normal "
        "potassium.",
        lambda p: [_order(p, "lisinopril", "lisinopril 10 MG Oral Tablet")],
        [],
    ),
    (
        "mild-intolerance-to-voclosporin",
        "ln-voclosporin-mild-intolerance",
        "order-sign",
        "30-year-old woman whose chart records a low-criticality intolerance to voclosporin "
        "(nausea, mild). Not the serious hypersensitivity that contraindicates it: a warning that "
        "names the reaction, and the payer criteria.",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [("hypersensitivity", "warning"), ("prior-authorization", "info")],
    ),
]

# Where a scenario's expectation comes from (newer scenarios; written into the file).
SOURCES: dict[str, str] = {
    "renewal-bp-178-112": (
        "Knowledge 1.21 (lupkynispro.com citing the PI: for BP >165/105 mmHg discontinue LUPKYNIS "
        "and start antihypertensive therapy); PI 5.4; decision 'on-treatment checks'"
    ),
    "ibuprofen-ordered-while-on-voclosporin": (
        "PI 5.3 (nephrotoxicity: risk rises with concomitant nephrotoxic drugs); NINJA nephrotoxic "
        "medication list (Goswami 2019) names ibuprofen; decision 'nephrotoxic co-medication'"
    ),
    "trimethoprim-with-potassium-near-the-limit": (
        "PI 5.6 (risk may be increased with other agents associated with hyperkalemia); Ben Salem, "
        "Drug Saf 2014 (trimethoprim); decision 'hyperkalemia co-medication' (warning within 0.2 "
        "mmol/L of the lab's upper limit, local policy)"
    ),
    "lisinopril-with-normal-potassium": (
        "Decision 'hyperkalemia co-medication': ACE inhibitors and ARBs are standard lupus "
        "nephritis care, flagged only when potassium is at or above the limit"
    ),
    "mild-intolerance-to-voclosporin": (
        "PI 4 (contraindicated after a serious or severe hypersensitivity reaction), PI 5.8; "
        "decision 'allergy severity' (a low-criticality intolerance or mild reaction: warning); "
        "payer criteria shown at initiation"
    ),
}

# Newer scenarios also name where the expectation comes from (the file's ``source`` field).
SOURCED_SCENARIOS: list[tuple[str, str, str, str, Any, list[tuple[str, str]], str]] = [
    (
        "initiation-cirrhosis-child-pugh-b",
        "ln-cirrhosis-child-pugh-b",
        "order-sign",
        "45-year-old woman with lupus nephritis and liver cirrhosis staged Child-Pugh class B, "
        "labs and BP fine. LUPKYNIS is drafted at the usual 23.7 mg twice daily, but in mild or "
        "moderate hepatic impairment the label dose is 15.8 mg twice daily: the dose is flagged "
        "and a note gives the hepatic dose.",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [
            ("dose-check", "warning"),
            ("hepatic-impairment", "info"),
            ("prior-authorization", "info"),
        ],
        "Knowledge 1.18 (PI: Child-Pugh A/B 15.8 mg BID); decisions, second round: hepatic "
        "impairment",
    ),
    (
        "initiation-cirrhosis-child-pugh-c",
        "ln-cirrhosis-child-pugh-c",
        "order-sign",
        "50-year-old woman with lupus nephritis and alcoholic cirrhosis, Child-Pugh C. Severe "
        "hepatic impairment: LUPKYNIS is not recommended (a warning with the option to cancel).",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [("hepatic-impairment", "warning"), ("prior-authorization", "info")],
        "Knowledge 1.18 (PI: Child-Pugh C not recommended); decisions, second round: hepatic "
        "impairment",
    ),
    (
        "initiation-dialysis-creatinine-only",
        "ln-dialysis-creatinine-only",
        "order-sign",
        "40-year-old woman with lupus nephritis, end-stage renal disease on hemodialysis, "
        "creatinine 6.2 mg/dL and no eGFR result. No eGFR is computed from a dialysis patient's "
        "creatinine (the ESRD card says so, rather than a second card asking for a baseline "
        "eGFR), and LUPKYNIS is not studied in ESRD or on dialysis (warning); no 'start at 15.8 "
        "mg' advice from a computed value.",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [
            ("end-stage-renal-disease", "warning"),
            ("prior-authorization", "info"),
        ],
        "Knowledge 1.17 (ESRD with or without hemodialysis: PK unknown); decisions, second "
        "round: severe renal impairment, ESRD, dialysis (never compute eGFR on dialysis)",
    ),
    (
        "initiation-pregnant",
        "ln-pregnant",
        "order-sign",
        "30-year-old woman with lupus nephritis whose pregnancy status three days ago is "
        "'Pregnant'. LUPKYNIS capsules contain alcohol and it is given with mycophenolate, "
        "which causes embryofetal toxicity: a warning.",
        lambda p: [voclosporin_draft_order(p, NOW.date())],
        [("pregnancy-lactation", "warning"), ("prior-authorization", "info")],
        "Knowledge 4 [V-3P] (Davis: alcohol content, mycophenolate fetal harm); decisions, "
        "second round: pregnancy and lactation",
    ),
]


def build(names: Sequence[str] = ()) -> None:
    """Write the scenario files (only ``names`` when given)."""
    app = create_app({"TESTING": True, "CDS_DATABASE_URL": "sqlite://", "CDS_CLOCK": lambda: NOW})
    try:
        services = app.extensions["cds_service"].services
        every = [(*entry, SOURCES.get(entry[0])) for entry in SCENARIOS] + list(SOURCED_SCENARIOS)
        for name, chart, hook, story, drafts, expected, source in every:
            if names and name not in names:
                continue
            resources = chart_resources(CHARTS[chart](NOW.date()))
            patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
            prefetch = prefetch_for(resources, patient_id, services[f"voclosporin-{hook}"].prefetch)
            request = hook_request(hook, patient_id, drafts(patient_id), prefetch)
            request["hookInstance"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"scenario:{name}"))
            scenario = {
                "title": name.replace("-", " "),
                "story": story,
                **({"source": SOURCES[name]} if name in SOURCES else {}),
                "now": NOW.isoformat().replace("+00:00", "Z"),
                "service": f"voclosporin-{hook}",
                "expect": [{"rule": rule, "indicator": indicator} for rule, indicator in expected],
                **({"source": source} if source else {}),
                "request": request,
            }
            (HERE / f"{name}.json").write_text(json.dumps(scenario, indent=1) + "\n")
    finally:
        close_app(app)


if __name__ == "__main__":
    build(sys.argv[1:])
