"""eGFR from serum creatinine with the race-free CKD-EPI 2021 equation (knowledge section 6)."""

from __future__ import annotations

from fhir_mappings.knowledge import CkdEpi2021


def ckd_epi_2021(creatinine_mg_dl: float, age_years: float, female: bool, k: CkdEpi2021) -> float:
    """Return eGFR in mL/min/1.73 m2 (Inker et al., NEJM 2021;385:1737)."""
    if creatinine_mg_dl <= 0:
        raise ValueError("creatinine must be positive")
    if age_years < k.minimum_age:
        raise ValueError(f"CKD-EPI 2021 is validated from age {k.minimum_age}")
    kappa = k.kappa_female if female else k.kappa_male
    alpha = k.alpha_female if female else k.alpha_male
    ratio = creatinine_mg_dl / kappa
    egfr: float = (
        k.constant
        * min(ratio, 1.0) ** alpha
        * max(ratio, 1.0) ** k.above_kappa_exponent
        * k.age_base**age_years
    )
    return egfr * k.female_factor if female else egfr
