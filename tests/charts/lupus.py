"""Hand-written lupus-nephritis patient charts as FHIR R4 transaction Bundles.

Why hand-written: none of the Synthea charts has lupus nephritis, and the voclosporin rules need
exact, known numbers (eGFR declines of exactly 25 % and 35 %, BP above 165/105, K above the
Observation's own reference high).

Conventions every chart follows, so test authors can rely on them:

- Each chart is a function ``(today: date) -> dict`` returning a ``transaction`` Bundle whose
  entries are all ``PUT Type/id`` with fixed ids. Loading a chart twice leaves one copy (version
  2), so any test may load the charts into the shared server. ``CHARTS`` maps the chart id (which
  is also the Patient id) to its function.
- Ids: the Patient id is the chart id (prefix ``ln-``); every other resource id is
  ``{patient id}-{kind}-{n}``. References are relative (``Patient/ln-...``); entries carry no
  ``fullUrl``.
- Dates are relative to ``today``: clinical times are ``{today - N days}T09:00:00Z`` (nothing is
  dated today, so no reading lies in the future whatever the clock), birth dates put the patient's
  last birthday 100 days ago so the age in years is unambiguous.
- A chart holds only the data its docstring names: no creatinine next to an eGFR unless stated.
- Codes come only from the knowledge sheet (``/work/shared/knowledge/voclosporin.md``): LOINC,
  ICD-10-CM M32.14 + SNOMED 68815009 for lupus nephritis, CVX for vaccines; special-population
  problems and answers use rows of ``fhir_mappings/data/conditions.csv`` (each row cited).
  Medications are identified by ``medicationCodeableConcept.text`` only, except
  cyclophosphamide, whose RxNorm ingredient code 3002 is verified [V-3P]. No voclosporin
  RxNorm/NDC code is used: the service must recognise LUPKYNIS by name, as the knowledge sheet
  decides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

Resource = dict[str, Any]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CVX = "http://hl7.org/fhir/sid/cvx"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
OBS_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"

EGFR_UNIT = "mL/min/{1.73_m2}"
EGFR_CKD_EPI_2021 = ("98979-8", "GFR/1.73 sq M, SerPlBld, creatinine-based (CKD-EPI 2021)")
EGFR_CKD_EPI_2009 = ("62238-1", "GFR/1.73 sq M, creatinine-based (CKD-EPI 2009)")


@dataclass(frozen=True)
class Drug:
    """A medication as a prescriber orders it; ``rxnorm`` only where the sheet marks it verified."""

    text: str
    dosage_text: str
    dose_mg: float
    frequency: int
    period: int = 1
    period_unit: str = "d"
    rxnorm: tuple[str, str] | None = None  # (code, display)


VOCLOSPORIN_TEXT = "LUPKYNIS (voclosporin) 7.9 mg oral capsule"
# PI 2.2: starting dose 23.7 mg (three 7.9 mg capsules) twice daily.
VOCLOSPORIN = Drug(VOCLOSPORIN_TEXT, "23.7 mg (3 capsules) by mouth twice daily", 23.7, 2)
MMF = Drug(
    "mycophenolate mofetil 500 MG Oral Tablet", "1000 mg (2 tablets) by mouth twice daily", 1000, 2
)
PREDNISONE = Drug("prednisone 5 MG Oral Tablet", "10 mg (2 tablets) by mouth once daily", 10, 1)
KETOCONAZOLE = Drug("ketoconazole 200 MG Oral Tablet", "200 mg by mouth once daily", 200, 1)
CYCLOPHOSPHAMIDE = Drug(
    "cyclophosphamide 500 MG Injection",
    "500 mg IV every 2 weeks (Euro-Lupus)",
    500,
    1,
    period=2,
    period_unit="wk",
    rxnorm=("3002", "cyclophosphamide"),
)


def clinical_time(today: date, days_ago: int) -> str:
    """Return the FHIR dateTime ``days_ago`` days before ``today`` at 09:00 UTC."""
    return f"{(today - timedelta(days=days_ago)).isoformat()}T09:00:00Z"


def birth_date(today: date, age_years: int) -> str:
    """Return a birth date giving ``age_years`` today, the last birthday 100 days ago."""
    anchor = today - timedelta(days=100)
    try:
        born = anchor.replace(year=anchor.year - age_years)
    except ValueError:  # 29 February in a non-leap year
        born = anchor.replace(year=anchor.year - age_years, day=28)
    return born.isoformat()


def _quantity(value: float, unit: str) -> Resource:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _loinc(code: str, display: str) -> Resource:
    return {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}


def _category(code: str) -> list[Resource]:
    return [{"coding": [{"system": OBS_CATEGORY, "code": code}]}]


class ChartBuilder:
    """Collect one patient's resources and emit them as an idempotent transaction Bundle."""

    def __init__(self, patient_id: str, today: date) -> None:
        self.patient_id = patient_id
        self.today = today
        self.resources: list[Resource] = []
        self._counts: dict[str, int] = {}

    @property
    def subject(self) -> Resource:
        """Return the reference every resource of the chart uses."""
        return {"reference": f"Patient/{self.patient_id}"}

    def _id(self, kind: str) -> str:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        return f"{self.patient_id}-{kind}-{self._counts[kind]}"

    def add(self, resource: Resource) -> Resource:
        """Append a resource (it must already carry its id)."""
        self.resources.append(resource)
        return resource

    def bundle(self) -> Resource:
        """Return the chart as a transaction Bundle of PUT entries."""
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
                for r in self.resources
            ],
        }

    # ---------------- resources ----------------

    def patient(self, gender: str, age_years: int) -> Resource:
        """Add the Patient (id = chart id)."""
        return self.add(
            {
                "resourceType": "Patient",
                "id": self.patient_id,
                "active": True,
                "name": [{"use": "official", "family": "Testchart", "given": [self.patient_id]}],
                "gender": gender,
                "birthDate": birth_date(self.today, age_years),
            }
        )

    def lupus_nephritis(self, onset_days_ago: int = 365) -> Resource:
        """Add an active, confirmed lupus nephritis problem (ICD-10-CM M32.14 + SNOMED 68815009)."""
        onset = clinical_time(self.today, onset_days_ago)
        return self.add(
            {
                "resourceType": "Condition",
                "id": self._id("condition"),
                "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": "active"}]},
                "verificationStatus": {
                    "coding": [{"system": CONDITION_VERIFICATION, "code": "confirmed"}]
                },
                "category": [
                    {"coding": [{"system": CONDITION_CATEGORY, "code": "problem-list-item"}]}
                ],
                "code": {
                    "coding": [
                        {
                            "system": ICD10CM,
                            "code": "M32.14",
                            "display": "Glomerular disease in systemic lupus erythematosus",
                        },
                        {
                            "system": SNOMED,
                            "code": "68815009",
                            "display": "SLE glomerulonephritis syndrome",
                        },
                    ],
                    "text": "Lupus nephritis",
                },
                "subject": self.subject,
                "onsetDateTime": onset,
                "recordedDate": onset,
            }
        )

    def medication(self, drug: Drug, authored_days_ago: int, status: str = "active") -> Resource:
        """Add a MedicationRequest for ``drug`` with a structured dose and timing."""
        concept: Resource = {"text": drug.text}
        if drug.rxnorm:
            concept["coding"] = [
                {"system": RXNORM, "code": drug.rxnorm[0], "display": drug.rxnorm[1]}
            ]
        return self.add(
            {
                "resourceType": "MedicationRequest",
                "id": self._id("medreq"),
                "status": status,
                "intent": "order",
                "medicationCodeableConcept": concept,
                "subject": self.subject,
                "authoredOn": clinical_time(self.today, authored_days_ago),
                "dosageInstruction": [dosage(drug)],
            }
        )

    def observation(
        self,
        kind: str,
        code: tuple[str, str],
        days_ago: int,
        category: str = "laboratory",
        value: Resource | None = None,
        **extra: Any,
    ) -> Resource:
        """Add a final Observation; ``extra`` holds further elements (referenceRange, component)."""
        obs: Resource = {
            "resourceType": "Observation",
            "id": self._id(kind),
            "status": "final",
            "category": _category(category),
            "code": _loinc(*code),
            "subject": self.subject,
            "effectiveDateTime": clinical_time(self.today, days_ago),
        }
        if value is not None:
            obs["valueQuantity"] = value
        obs.update(extra)
        return self.add(obs)

    def egfr(
        self, value: float, days_ago: int, code: tuple[str, str] = EGFR_CKD_EPI_2021
    ) -> Resource:
        """Add a measured (lab-reported) eGFR in mL/min/1.73 m2."""
        return self.observation("egfr", code, days_ago, value=_quantity(value, EGFR_UNIT))

    def creatinine_mg_dl(self, value: float, days_ago: int) -> Resource:
        """Add serum creatinine in mg/dL (LOINC 2160-0)."""
        code = ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma")
        return self.observation("creatinine", code, days_ago, value=_quantity(value, "mg/dL"))

    def creatinine_umol_l(self, value: float, days_ago: int) -> Resource:
        """Add serum creatinine in umol/L (LOINC 14682-9)."""
        code = ("14682-9", "Creatinine [Moles/volume] in Serum or Plasma")
        return self.observation("creatinine", code, days_ago, value=_quantity(value, "umol/L"))

    def potassium(self, value: float, days_ago: int, high: float = 5.1) -> Resource:
        """Add serum potassium with its own reference range (3.5-``high`` mmol/L) and H flag."""
        extra: Resource = {
            "referenceRange": [{"low": _quantity(3.5, "mmol/L"), "high": _quantity(high, "mmol/L")}]
        }
        if value > high:
            extra["interpretation"] = [
                {"coding": [{"system": OBS_INTERPRETATION, "code": "H", "display": "High"}]}
            ]
        code = ("2823-3", "Potassium [Moles/volume] in Serum or Plasma")
        return self.observation(
            "potassium", code, days_ago, value=_quantity(value, "mmol/L"), **extra
        )

    def blood_pressure(self, systolic: float, diastolic: float, days_ago: int) -> Resource:
        """Add a BP panel (85354-9) with systolic 8480-6 and diastolic 8462-4 components."""
        return self.observation(
            "bp",
            ("85354-9", "Blood pressure panel with all children optional"),
            days_ago,
            category="vital-signs",
            component=[
                {
                    "code": _loinc("8480-6", "Systolic blood pressure"),
                    "valueQuantity": _quantity(systolic, "mm[Hg]"),
                },
                {
                    "code": _loinc("8462-4", "Diastolic blood pressure"),
                    "valueQuantity": _quantity(diastolic, "mm[Hg]"),
                },
            ],
        )

    def upcr(self, value: float, days_ago: int) -> Resource:
        """Add a urine protein/creatinine ratio (2890-2) in mg/mg (numerically g/g)."""
        code = ("2890-2", "Protein/Creatinine [Mass Ratio] in Urine")
        return self.observation("upcr", code, days_ago, value=_quantity(value, "mg/mg"))

    def immunization(self, cvx: str, display: str, days_ago: int) -> Resource:
        """Add a completed Immunization coded in CVX."""
        return self.add(
            {
                "resourceType": "Immunization",
                "id": self._id("immunization"),
                "status": "completed",
                "vaccineCode": {
                    "coding": [{"system": CVX, "code": cvx, "display": display}],
                    "text": display,
                },
                "patient": self.subject,
                "occurrenceDateTime": clinical_time(self.today, days_ago),
                "primarySource": True,
            }
        )

    def allergy(
        self,
        substance_text: str,
        manifestation_text: str,
        days_ago: int,
        kind: str = "allergy",
        criticality: str = "high",
        severity: str = "severe",
    ) -> Resource:
        """Add an active, confirmed medication allergy (default: high criticality, severe)."""
        when = clinical_time(self.today, days_ago)
        return self.add(
            {
                "resourceType": "AllergyIntolerance",
                "id": self._id("allergy"),
                "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]},
                "verificationStatus": {
                    "coding": [{"system": ALLERGY_VERIFICATION, "code": "confirmed"}]
                },
                "type": kind,
                "category": ["medication"],
                "criticality": criticality,
                "code": {"text": substance_text},
                "patient": self.subject,
                "recordedDate": when,
                "reaction": [
                    {
                        "manifestation": [{"text": manifestation_text}],
                        "onset": when,
                        "severity": severity,
                    }
                ],
            }
        )

    def condition(
        self,
        codes: Sequence[tuple[str, str, str]],
        text: str,
        onset_days_ago: int = 365,
        stage_text: str | None = None,
    ) -> Resource:
        """Add an active, confirmed problem coded with (system, code, display) rows of
        ``fhir_mappings/data/conditions.csv``; ``stage_text`` goes in ``stage.summary.text``."""
        onset = clinical_time(self.today, onset_days_ago)
        resource: Resource = {
            "resourceType": "Condition",
            "id": self._id("condition"),
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": "active"}]},
            "verificationStatus": {
                "coding": [{"system": CONDITION_VERIFICATION, "code": "confirmed"}]
            },
            "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": "problem-list-item"}]}],
            "code": {
                "coding": [{"system": sy, "code": co, "display": di} for sy, co, di in codes],
                "text": text,
            },
            "subject": self.subject,
            "onsetDateTime": onset,
            "recordedDate": onset,
        }
        if stage_text is not None:
            resource["stage"] = [{"summary": {"text": stage_text}}]
        return self.add(resource)

    def pregnancy_status(self, answer: tuple[str, str, str], days_ago: int) -> Resource:
        """Add a pregnancy-status Observation (LOINC 82810-3) with a coded answer."""
        system, code, display = answer
        return self.observation(
            "pregnancy-status",
            ("82810-3", "Pregnancy status"),
            days_ago,
            category="social-history",
            valueCodeableConcept={
                "coding": [{"system": system, "code": code, "display": display}],
                "text": display,
            },
        )

    def normal_labs(self) -> None:
        """Add unremarkable recent labs: eGFR 95 (8 d), BP 122/78 (4 d), K 4.3 (8 d), UPCR 1.5."""
        self.egfr(95, days_ago=8)
        self.blood_pressure(122, 78, days_ago=4)
        self.potassium(4.3, days_ago=8)
        self.upcr(1.5, days_ago=8)


def dosage(drug: Drug) -> Resource:
    """Return a Dosage with text, timing (frequency per period) and doseQuantity in mg."""
    return {
        "text": drug.dosage_text,
        "timing": {
            "repeat": {
                "frequency": drug.frequency,
                "period": drug.period,
                "periodUnit": drug.period_unit,
            }
        },
        "doseAndRate": [{"doseQuantity": _quantity(drug.dose_mg, "mg")}],
    }


def voclosporin_draft_order(
    patient_id: str, today: date, order_id: str = "draft-voclosporin-1"
) -> Resource:
    """Return the draft LUPKYNIS MedicationRequest an order-sign hook request would carry."""
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"text": VOCLOSPORIN_TEXT},
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": today.isoformat(),
        "dosageInstruction": [dosage(VOCLOSPORIN)],
    }


# ---------------- the charts ----------------


def ln_initiation_clean(today: date) -> Resource:
    """Woman, 34, active lupus nephritis on MMF + prednisone, about to start voclosporin.

    eGFR 88 (10 d ago), BP 128/82 (5 d ago), K 4.2 mmol/L (ref high 5.1), UPCR 2.1 mg/mg; no
    interacting drug, no live vaccine. Ordering LUPKYNIS should give only the prior-authorization /
    information cards.
    """
    c = ChartBuilder("ln-initiation-clean", today)
    c.patient("female", 34)
    c.lupus_nephritis()
    c.medication(MMF, authored_days_ago=90)
    c.medication(PREDNISONE, authored_days_ago=90)
    c.egfr(88, days_ago=10)
    c.blood_pressure(128, 82, days_ago=5)
    c.potassium(4.2, days_ago=10)
    c.upcr(2.1, days_ago=10)
    return c.bundle()


def ln_initiation_low_egfr_high_bp(today: date) -> Resource:
    """Woman, 29, active LN on MMF + prednisone, with three initiation gates failing.

    eGFR 42 (7 d ago; <= 45, PI 2.2 "not recommended"), BP 170/95 (2 d ago; systolic > 165, PI 2.2
    "do not initiate"), K 5.6 mmol/L (7 d ago) above its own reference high 5.1. UPCR 3.0.
    """
    c = ChartBuilder("ln-initiation-low-egfr-high-bp", today)
    c.patient("female", 29)
    c.lupus_nephritis()
    c.medication(MMF, authored_days_ago=60)
    c.medication(PREDNISONE, authored_days_ago=60)
    c.egfr(42, days_ago=7)
    c.blood_pressure(170, 95, days_ago=2)
    c.potassium(5.6, days_ago=7)
    c.upcr(3.0, days_ago=7)
    return c.bundle()


def ln_initiation_missing_labs(today: date) -> Resource:
    """Woman, 31, active LN on MMF + prednisone, with no recent baseline.

    The only eGFR is 85 by CKD-EPI 2009 (LOINC 62238-1) 120 days ago, BP 118/76 and K 4.0 also
    120 days ago; no creatinine at all. Nothing within the 30-day baseline window: eGFR and BP count
    as missing, so the service must say it could not check, never "normal".
    """
    c = ChartBuilder("ln-initiation-missing-labs", today)
    c.patient("female", 31)
    c.lupus_nephritis()
    c.medication(MMF, authored_days_ago=150)
    c.medication(PREDNISONE, authored_days_ago=150)
    c.egfr(85, days_ago=120, code=EGFR_CKD_EPI_2009)
    c.blood_pressure(118, 76, days_ago=120)
    c.potassium(4.0, days_ago=120)
    return c.bundle()


def _creatinine_only(
    chart_id: str, today: date, add_creatinine: Callable[[ChartBuilder], Any]
) -> Resource:
    c = ChartBuilder(chart_id, today)
    c.patient("female", 40)
    c.lupus_nephritis()
    c.medication(MMF, authored_days_ago=60)
    c.medication(PREDNISONE, authored_days_ago=60)
    add_creatinine(c)
    c.blood_pressure(118, 76, days_ago=5)
    c.potassium(4.1, days_ago=5)
    return c.bundle()


def ln_creatinine_only(today: date) -> Resource:
    """Woman, 40, active LN on MMF + prednisone, with no eGFR Observation at all.

    Serum creatinine 1.1 mg/dL (LOINC 2160-0) 5 days ago: CKD-EPI 2021 (female, 40) gives 65.1
    mL/min/1.73 m2, so the service must compute eGFR and label it "computed". BP 118/76, K 4.1.
    """
    return _creatinine_only(
        "ln-creatinine-only", today, lambda c: c.creatinine_mg_dl(1.1, days_ago=5)
    )


def ln_creatinine_only_umol(today: date) -> Resource:
    """Same woman as ``ln-creatinine-only`` but creatinine 97 umol/L (LOINC 14682-9), 5 days ago.

    97 / 88.4 = 1.097 mg/dL; CKD-EPI 2021 (female, 40) gives 65.3 mL/min/1.73 m2.
    """
    return _creatinine_only(
        "ln-creatinine-only-umol", today, lambda c: c.creatinine_umol_l(97, days_ago=5)
    )


def _renewal(chart_id: str, today: date, egfr_series: Sequence[tuple[float, int]]) -> Resource:
    c = ChartBuilder(chart_id, today)
    c.patient("female", 37)
    c.lupus_nephritis(onset_days_ago=400)
    c.medication(MMF, authored_days_ago=200)
    c.medication(PREDNISONE, authored_days_ago=200)
    c.medication(VOCLOSPORIN, authored_days_ago=120)
    for value, days_ago in egfr_series:
        c.egfr(value, days_ago=days_ago)
    c.blood_pressure(124, 80, days_ago=6)
    c.potassium(4.4, days_ago=6)
    c.upcr(0.9, days_ago=6)
    return c.bundle()


def ln_renewal_egfr_25pct(today: date) -> Resource:
    """Woman, 37, on LUPKYNIS 23.7 mg BID for 120 days (with MMF + prednisone): eGFR down 25 %.

    eGFR (CKD-EPI 2021): 95 at 200 d, 72 at 125 d (the baseline: the latest on or before the
    voclosporin start 120 d ago), then 71 (100 d), 66 (70 d), 60 (40 d), latest 54 (6 d ago).
    Decline from baseline = (72 - 54) / 72 = 25 % exactly, latest < 60: PI 2.2 "reduce the dose
    by 7.9 mg BID". Taking the older 95 as baseline would wrongly give 43 % (discontinue).
    BP 124/80, K 4.4.
    """
    series = [(95, 200), (72, 125), (71, 100), (66, 70), (60, 40), (54, 6)]
    return _renewal("ln-renewal-egfr-25pct", today, series)


def ln_renewal_egfr_35pct(today: date) -> Resource:
    """Woman, 37, on LUPKYNIS 23.7 mg BID for 120 days (with MMF + prednisone): eGFR down 35 %.

    eGFR (CKD-EPI 2021): 95 at 200 d, 80 at 125 d (the baseline), then 78 (100 d), 70 (70 d),
    61 (40 d), latest 52 (6 d ago). Decline = (80 - 52) / 80 = 35 % exactly, latest < 60: PI 2.2
    "discontinue LUPKYNIS". BP 124/80, K 4.4.
    """
    series = [(95, 200), (80, 125), (78, 100), (70, 70), (61, 40), (52, 6)]
    return _renewal("ln-renewal-egfr-35pct", today, series)


def ln_on_voclosporin_interactions(today: date) -> Resource:
    """Woman, 36, on LUPKYNIS (60 days) + MMF + prednisone, now also on ketoconazole tablets.

    Ketoconazole (started 3 days ago) is a strong CYP3A4 inhibitor: contraindicated with
    voclosporin (PI 4, 7). Labs unremarkable (eGFR 95, BP 122/78, K 4.3).
    """
    c = ChartBuilder("ln-on-voclosporin-interactions", today)
    c.patient("female", 36)
    c.lupus_nephritis()
    c.medication(MMF, authored_days_ago=150)
    c.medication(PREDNISONE, authored_days_ago=150)
    c.medication(VOCLOSPORIN, authored_days_ago=60)
    c.medication(KETOCONAZOLE, authored_days_ago=3)
    c.normal_labs()
    return c.bundle()


def ln_live_vaccine_recent(today: date) -> Resource:
    """Woman, 27, active LN on MMF + prednisone, who received MMR (CVX 03, live) 14 days ago.

    Starting voclosporin now falls inside the 28-day window after a live vaccine (PI 5.9; IDSA
    2013). Labs unremarkable (eGFR 95, BP 122/78, K 4.3).
    """
    c = ChartBuilder("ln-live-vaccine-recent", today)
    c.patient("female", 27)
    c.lupus_nephritis()
    c.medication(MMF, authored_days_ago=90)
    c.medication(PREDNISONE, authored_days_ago=90)
    c.immunization("03", "MMR", days_ago=14)
    c.normal_labs()
    return c.bundle()


def ln_adolescent(today: date) -> Resource:
    """Girl, 16, active LN on MMF + prednisone: voclosporin is not established under 18.

    The payer policy requires age >= 18. Labs unremarkable (eGFR 95, BP 122/78, K 4.3).
    """
    c = ChartBuilder("ln-adolescent", today)
    c.patient("female", 16)
    c.lupus_nephritis(onset_days_ago=200)
    c.medication(MMF, authored_days_ago=120)
    c.medication(PREDNISONE, authored_days_ago=120)
    c.normal_labs()
    return c.bundle()


def ln_cyclophosphamide(today: date) -> Resource:
    """Woman, 33, active LN induced with IV cyclophosphamide (RxNorm 3002) + prednisone, no MMF.

    Voclosporin with cyclophosphamide is "not recommended" (PI limitation of use; payer policy:
    background therapy must NOT be cyclophosphamide). Labs unremarkable.
    """
    c = ChartBuilder("ln-cyclophosphamide", today)
    c.patient("female", 33)
    c.lupus_nephritis()
    c.medication(CYCLOPHOSPHAMIDE, authored_days_ago=30)
    c.medication(PREDNISONE, authored_days_ago=30)
    c.normal_labs()
    return c.bundle()


def ln_voclosporin_allergy(today: date) -> Resource:
    """Woman, 38, active LN on MMF + prednisone, with a severe hypersensitivity to voclosporin.

    AllergyIntolerance code.text "voclosporin" (no code: none is verified), active, confirmed,
    criticality high, reaction anaphylaxis with severity severe, 200 days ago: voclosporin is
    contraindicated (PI 4, 5.8). Labs unremarkable.
    """
    c = ChartBuilder("ln-voclosporin-allergy", today)
    c.patient("female", 38)
    c.lupus_nephritis(onset_days_ago=500)
    c.medication(MMF, authored_days_ago=150)
    c.medication(PREDNISONE, authored_days_ago=150)
    c.allergy("voclosporin", "Anaphylaxis", days_ago=200)
    c.normal_labs()
    return c.bundle()


def ln_renewal_bp_high(today: date) -> Resource:
    """Woman, 35, on LUPKYNIS 23.7 mg BID for 120 days (MMF + prednisone), BP now 178/112.

    eGFR stable: 86 at 125 d (the baseline), 84 at 6 d (-2 %). BP 178/112 two days ago, above the
    165/105 gate on treatment: discontinue LUPKYNIS and treat BP (K 1.21, PI 5.4). K 4.4 (ref
    high 5.1), UPCR 0.8.
    """
    c = ChartBuilder("ln-renewal-bp-high", today)
    c.patient("female", 35)
    c.lupus_nephritis(onset_days_ago=400)
    c.medication(MMF, authored_days_ago=200)
    c.medication(PREDNISONE, authored_days_ago=200)
    c.medication(VOCLOSPORIN, authored_days_ago=120)
    c.egfr(86, days_ago=125)
    c.egfr(84, days_ago=6)
    c.blood_pressure(178, 112, days_ago=2)
    c.potassium(4.4, days_ago=6)
    c.upcr(0.8, days_ago=6)
    return c.bundle()


def ln_on_voclosporin_stable(today: date) -> Resource:
    """Woman, 41, on LUPKYNIS (60 days) + MMF + prednisone, nothing else; labs unremarkable.

    eGFR 95, BP 122/78, K 4.3 (ref high 5.1), UPCR 1.5: a new order for her meets voclosporin
    (ibuprofen: nephrotoxic, PI 5.3; lisinopril at normal K: nothing to say).
    """
    c = ChartBuilder("ln-on-voclosporin-stable", today)
    c.patient("female", 41)
    c.lupus_nephritis()
    c.medication(MMF, authored_days_ago=150)
    c.medication(PREDNISONE, authored_days_ago=150)
    c.medication(VOCLOSPORIN, authored_days_ago=60)
    c.normal_labs()
    return c.bundle()


def ln_on_voclosporin_potassium_4_9(today: date) -> Resource:
    """Woman, 39, on LUPKYNIS (60 days) + MMF + prednisone, potassium 4.9 (ref high 5.1).

    4.9 is 0.2 mmol/L below the lab's upper limit: a drug that raises potassium (trimethoprim) is a
    warning (decision "hyperkalemia co-medication", local policy). eGFR 92, BP 124/80, UPCR 1.2.
    """
    c = ChartBuilder("ln-on-voclosporin-potassium-4-9", today)
    c.patient("female", 39)
    c.lupus_nephritis()
    c.medication(MMF, authored_days_ago=150)
    c.medication(PREDNISONE, authored_days_ago=150)
    c.medication(VOCLOSPORIN, authored_days_ago=60)
    c.egfr(92, days_ago=7)
    c.blood_pressure(124, 80, days_ago=4)
    c.potassium(4.9, days_ago=7)
    c.upcr(1.2, days_ago=7)
    return c.bundle()


def ln_voclosporin_mild_intolerance(today: date) -> Resource:
    """Woman, 30, active LN on MMF + prednisone, with a mild intolerance to voclosporin on record.

    AllergyIntolerance type intolerance, criticality low, reaction nausea (severity mild), 300
    days ago: not the serious hypersensitivity PI 4 contraindicates, so a warning naming the
    reaction, not the critical card (decision "allergy severity"). Labs unremarkable.
    """
    c = ChartBuilder("ln-voclosporin-mild-intolerance", today)
    c.patient("female", 30)
    c.lupus_nephritis(onset_days_ago=500)
    c.medication(MMF, authored_days_ago=150)
    c.medication(PREDNISONE, authored_days_ago=150)
    c.allergy(
        "voclosporin",
        "Nausea",
        days_ago=300,
        kind="intolerance",
        criticality="low",
        severity="mild",
    )
    c.normal_labs()
    return c.bundle()


def _initiation_with(chart_id: str, today: date, age: int) -> ChartBuilder:
    """A clean initiation (as ``ln-initiation-clean``) that a special-population chart extends."""
    c = ChartBuilder(chart_id, today)
    c.patient("female", age)
    c.lupus_nephritis()
    c.medication(MMF, authored_days_ago=90)
    c.medication(PREDNISONE, authored_days_ago=90)
    c.egfr(88, days_ago=10)
    c.blood_pressure(128, 82, days_ago=5)
    c.potassium(4.2, days_ago=10)
    c.upcr(2.1, days_ago=10)
    return c


def ln_cirrhosis_child_pugh_b(today: date) -> Resource:
    """Woman, 45, clean initiation labs, with cirrhosis (ICD-10-CM K74.60, SNOMED 19943007)
    staged "Child-Pugh class B". LUPKYNIS drafted at the usual 23.7 mg twice daily: the label dose
    in Child-Pugh A/B is 15.8 mg twice daily (knowledge 1.18)."""
    c = _initiation_with("ln-cirrhosis-child-pugh-b", today, 45)
    c.condition(
        [
            (ICD10CM, "K74.60", "Unspecified cirrhosis of liver"),
            (SNOMED, "19943007", "Cirrhosis of liver"),
        ],
        "Liver cirrhosis",
        stage_text="Child-Pugh class B",
    )
    return c.bundle()


def ln_cirrhosis_child_pugh_c(today: date) -> Resource:
    """Woman, 50, clean initiation labs, with "Alcoholic cirrhosis, Child-Pugh C" (ICD-10-CM
    K70.31): severe hepatic impairment, LUPKYNIS is not recommended (knowledge 1.18)."""
    c = _initiation_with("ln-cirrhosis-child-pugh-c", today, 50)
    c.condition(
        [(ICD10CM, "K70.31", "Alcoholic cirrhosis of liver with ascites")],
        "Alcoholic cirrhosis with ascites, Child-Pugh C",
    )
    return c.bundle()


def ln_dialysis_creatinine_only(today: date) -> Resource:
    """Woman, 40, LN with end-stage renal disease on hemodialysis (ICD-10-CM N18.6, Z99.2).

    Creatinine 6.2 mg/dL 5 days ago and no eGFR Observation: no eGFR may be computed for a patient
    on dialysis, so there is no baseline; LUPKYNIS is not studied in ESRD (knowledge 1.17).
    BP 118/76, K 4.1.
    """

    def add(c: ChartBuilder) -> None:
        c.creatinine_mg_dl(6.2, days_ago=5)
        c.condition([(ICD10CM, "N18.6", "End stage renal disease")], "ESRD")
        c.condition([(ICD10CM, "Z99.2", "Dependence on renal dialysis")], "On hemodialysis")

    return _creatinine_only("ln-dialysis-creatinine-only", today, add)


def ln_pregnant(today: date) -> Resource:
    """Woman, 30, clean initiation labs, whose pregnancy status 3 days ago is "Pregnant" (LOINC
    82810-3, answer LA15173-0): capsules contain alcohol and MMF is embryotoxic (knowledge 4)."""
    c = _initiation_with("ln-pregnant", today, 30)
    c.pregnancy_status((LOINC, "LA15173-0", "Pregnant"), days_ago=3)
    return c.bundle()


CHARTS: dict[str, Callable[[date], Resource]] = {
    "ln-initiation-clean": ln_initiation_clean,
    "ln-initiation-low-egfr-high-bp": ln_initiation_low_egfr_high_bp,
    "ln-initiation-missing-labs": ln_initiation_missing_labs,
    "ln-creatinine-only": ln_creatinine_only,
    "ln-creatinine-only-umol": ln_creatinine_only_umol,
    "ln-renewal-egfr-25pct": ln_renewal_egfr_25pct,
    "ln-renewal-egfr-35pct": ln_renewal_egfr_35pct,
    "ln-on-voclosporin-interactions": ln_on_voclosporin_interactions,
    "ln-live-vaccine-recent": ln_live_vaccine_recent,
    "ln-adolescent": ln_adolescent,
    "ln-cyclophosphamide": ln_cyclophosphamide,
    "ln-voclosporin-allergy": ln_voclosporin_allergy,
    "ln-renewal-bp-high": ln_renewal_bp_high,
    "ln-on-voclosporin-stable": ln_on_voclosporin_stable,
    "ln-on-voclosporin-potassium-4-9": ln_on_voclosporin_potassium_4_9,
    "ln-voclosporin-mild-intolerance": ln_voclosporin_mild_intolerance,
    "ln-cirrhosis-child-pugh-b": ln_cirrhosis_child_pugh_b,
    "ln-cirrhosis-child-pugh-c": ln_cirrhosis_child_pugh_c,
    "ln-dialysis-creatinine-only": ln_dialysis_creatinine_only,
    "ln-pregnant": ln_pregnant,
}
