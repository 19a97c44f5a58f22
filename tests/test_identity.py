"""Drug identity and route as EHRs write them (issue 10): names, brands, OID systems, NDC forms,
route and dose form, the match memo's bounds and the CLI's unknown-drug warning."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from cds_service.cli.commands import main as cli_main
from cds_service.cli.commands import unknown_drug_warning
from cds_service.rules.engine import evaluate
from fhir_mappings import codes
from fhir_mappings.codes import (
    CVX,
    LOINC,
    NDC,
    RXNORM,
    SNOMED,
    Coding,
    Terminology,
    normalize_ndc,
    normalize_text,
    within_one_edit,
)
from fhir_mappings.knowledge import DATA_DIR, KnowledgeError, load_knowledge
from fhir_mappings.vocabulary import DataCategory, Role
from tests.support.clinical import facts, med, voclosporin
from tests.test_mappings import PATIENT, draft, facts_from

OID_RXNORM = "urn:oid:2.16.840.1.113883.6.88"
OID_NDC = "urn:oid:2.16.840.1.113883.6.69"
OID_CVX = "urn:oid:2.16.840.1.113883.12.292"
OID_LOINC = "urn:oid:2.16.840.1.113883.6.1"
OID_SNOMED = "urn:oid:2.16.840.1.113883.6.96"
OID_ICD10CM = "urn:oid:2.16.840.1.113883.6.90"


def roles(terminology: Terminology, *texts: str) -> frozenset[Role]:
    return terminology.match_medication([], list(texts)).roles


# -- names: Unicode normalisation and glued strengths -------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("St. John\u2019s Wort", "st. john's wort"),
        ("St John\u02bcs wort", "st john's wort"),
        ("\u201cLUPKYNIS\u201d", '"lupkynis"'),
        ("nirmatrelvir\u2013ritonavir", "nirmatrelvir-ritonavir"),
        ("nirmatrelvir\u2014ritonavir", "nirmatrelvir-ritonavir"),
        ("keto\u00adconazole", "ketoconazole"),
        ("\uff2c\uff35\uff30\uff2b\uff39\uff2e\uff29\uff33", "lupkynis"),
        ("LUPKYNIS7.9MG", "lupkynis7.9mg"),
        ("  VOCLOSPORIN \t 7.9\n MG ", "voclosporin 7.9 mg"),
        ("Stra\u00dfe", "strasse"),
    ],
    ids=[
        "curly-apostrophe",
        "modifier-apostrophe",
        "curly-quotes",
        "en-dash",
        "em-dash",
        "soft-hyphen",
        "fullwidth-nfkc",
        "glued-strength-kept-for-the-patterns",
        "spaces-and-case",
        "casefold-non-ascii",
    ],
)
def test_normalize_text(raw, normalized):
    """Names are compared after NFKC, plain quotes/dashes, case folding and split strengths."""
    assert normalize_text(raw) == normalized


@pytest.mark.parametrize(
    ("text", "role"),
    [
        ("St. John\u2019s Wort 300 mg capsule", Role.MODERATE_CYP3A4_INDUCER),
        ("ST JOHN\u2019S WORT", Role.MODERATE_CYP3A4_INDUCER),
        ("LUPKYNIS7.9MG CAP", Role.VOCLOSPORIN),
        ("ketoconazole200mg tablet", Role.STRONG_CYP3A4_INHIBITOR),
        ("Clarithromycin\u2009500\u00a0mg", Role.STRONG_CYP3A4_INHIBITOR),
    ],
    ids=[
        "typographic-st-johns-wort",
        "upper-st-johns-wort",
        "lupkynis-glued",
        "keto-glued",
        "thin-spaces",
    ],
)
def test_names_as_ehrs_write_them_match(terminology, text, role):
    """Typographic characters and glued strengths still name the drug."""
    assert role in roles(terminology, text)


def test_live_vaccine_term_with_digits_still_matches(terminology):
    """A term ending in digits ('acam2000') matches whole, never as the start of a number."""
    assert Role.LIVE_VACCINE in roles(terminology, "ACAM2000 smallpox vaccine")
    assert Role.LIVE_VACCINE not in roles(terminology, "ACAM20001")


# -- one wrong letter in voclosporin's own names -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "read_as_voclosporin"),
    [
        ("LUPKINIS 7.9 mg capsule", True),
        ("Lupkyns 7.9 mg", True),
        ("LUPKYNISS", True),
        ("voclosporine 7.9 mg", True),
        ("voclosprin", True),
        ("LUPKINYS 7.9 mg", False),
        ("voclospurine", False),
        ("lupk", False),
        ("ketokonazole 200 mg", False),
        ("tacrolimas 1 mg", False),
        ("cyclosporine 100 mg", False),
    ],
    ids=[
        "brand-one-substituted",
        "brand-one-missing",
        "brand-one-extra",
        "ingredient-one-extra",
        "ingredient-one-missing",
        "brand-two-letters",
        "ingredient-two-letters",
        "short-word",
        "other-drug-one-letter",
        "tacrolimus-one-letter",
        "cyclosporine-is-another-drug",
    ],
)
def test_near_match_boundary(terminology, text, read_as_voclosporin):
    """One wrong letter in LUPKYNIS/voclosporin still reads as voclosporin; two, or any other
    drug's name, never does."""
    match = terminology.match_medication([], [text])
    assert (Role.VOCLOSPORIN in match.roles) is read_as_voclosporin
    assert (match.near_match_text == text) is read_as_voclosporin


@pytest.mark.parametrize("text", ["ketokonazole 200 mg", "tacrolimas 1 mg", "clarithromicin"])
def test_other_drugs_get_no_one_letter_tolerance(terminology, text):
    """Only voclosporin's own names are read with a wrong letter: no other drug is guessed."""
    assert terminology.match_medication([], [text]).roles == frozenset()


def test_exact_name_is_no_near_match(terminology):
    """An exact LUPKYNIS is not reported as read from a near match."""
    assert terminology.match_medication([], ["LUPKYNIS 7.9 mg"]).near_match_text is None


def test_short_voclosporin_names_never_near_match(knowledge):
    """Words (and names) shorter than NEAR_MATCH_MIN_LENGTH letters are never read fuzzily."""
    drugs = tuple(
        replace(d, terms=(*d.terms, "vocl")) if d.role is Role.VOCLOSPORIN else d
        for d in knowledge.drugs
    )
    terminology = Terminology(replace(knowledge, drugs=drugs))
    assert Role.VOCLOSPORIN in roles(terminology, "vocl")
    assert roles(terminology, "vocx") == frozenset()


@pytest.mark.parametrize(
    ("word", "target", "expected"),
    [
        ("abcdef", "abcdef", True),
        ("abcxef", "abcdef", True),
        ("abcef", "abcdef", True),
        ("abcdeff", "abcdef", True),
        ("abxxef", "abcdef", False),
        ("abcd", "abcdef", False),
        ("bacdef", "abcdef", False),
    ],
    ids=["same", "substituted", "missing", "extra", "two-substituted", "two-missing", "swapped"],
)
def test_within_one_edit(word, target, expected):
    """At most one substituted, missing or extra letter (a swap is two)."""
    assert within_one_edit(word, target) is expected


def test_card_says_which_text_was_read_as_voclosporin(knowledge):
    """Every card of a near-matched voclosporin order names the text read as voclosporin."""
    order = replace(voclosporin(), name="LUPKINIS 7.9 mg", matched_text="LUPKINIS 7.9 mg")
    evaluation = evaluate(facts(draft_orders=(order,)), knowledge)
    assert evaluation.findings
    for finding in evaluation.findings:
        assert '**Read as voclosporin:** the text "LUPKINIS 7.9 mg"' in finding.detail
    exact = evaluate(facts(), knowledge)
    assert all("Read as voclosporin" not in f.detail for f in exact.findings)


def test_near_match_reaches_the_medication(terminology):
    """The mapped order carries the near-matched text as matched_text."""
    f = facts_from(
        terminology,
        [PATIENT],
        drafts=[draft(medicationCodeableConcept={"text": "Lupkinis 7.9 mg"})],
    )
    assert f.draft_orders[0].is_voclosporin
    assert f.draft_orders[0].matched_text == "Lupkinis 7.9 mg"


# -- brands and combination products ------------------------------------------------------------


@pytest.mark.parametrize(
    ("brand", "ingredients"),
    [
        ("PAXLOVID", {"ritonavir"}),
        ("Genvoya tablet", {"cobicistat"}),
        ("STRIBILD", {"cobicistat"}),
        ("PREZCOBIX 800-150 MG", {"darunavir", "cobicistat"}),
        ("EVOTAZ", {"atazanavir", "cobicistat"}),
        ("Symtuza", {"darunavir", "cobicistat"}),
        ("KALETRA 200-50 MG tablet", {"lopinavir", "ritonavir"}),
        ("Restasis", {"cyclosporine"}),
        ("Protopic 0.1% ointment", {"tacrolimus"}),
        ("Nizoral A-D shampoo", {"ketoconazole"}),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_brand_names_map_to_their_ingredients(terminology, brand, ingredients):
    """A brand or co-packaged/fixed-dose product carries its drugs.csv ingredients (brands.csv)."""
    assert terminology.match_medication([], [brand]).ingredients == frozenset(ingredients)


def test_every_brand_row_has_a_source_and_known_ingredients(knowledge):
    """brands.csv rows are cited and name drugs.csv ingredients (also checked at load)."""
    ingredients = {d.ingredient for d in knowledge.drugs}
    assert knowledge.brands
    for brand in knowledge.brands:
        assert brand.source.strip(), brand.name
        assert set(brand.ingredients) <= ingredients, brand.name


@pytest.fixture
def data(tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(DATA_DIR, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        (
            "brands.csv",
            "PAXLOVID,ritonavir,",
            "PAXLOVID,ritonavirr,",
            r"brands\.csv line 2: ingredients",
        ),
        ("brands.csv", "GENVOYA,", "PAXLOVID,", r"brands\.csv line 3: 'PAXLOVID' is repeated"),
        ("brands.csv", ",,ophthalmic,", ",,ocular,", r"brands\.csv line \d+: unknown exposure"),
        (
            "routes.csv",
            "26643006,systemic",
            "26643006,oral",
            r"routes\.csv line 2: unknown exposure",
        ),
        (
            "routes.csv",
            "code,http://snomed.info/sct,26643006",
            "code,,26643006",
            r"routes\.csv line 2: a code row",
        ),
        (
            "code_systems.csv",
            "urn:oid:2.16.840.1.113883.12.292",
            "2.16.840.1.113883.12.292",
            r"code_systems\.csv line 2",
        ),
        (
            "code_systems.csv",
            "urn:oid:2.16.840.1.113883.6.88",
            "urn:oid:2.16.840.1.113883.12.292",
            r"code_systems\.csv line 3: .* repeated",
        ),
    ],
    ids=[
        "brand-unknown-ingredient",
        "brand-repeated",
        "brand-bad-exposure",
        "route-bad-exposure",
        "route-code-without-system",
        "alias-not-oid",
        "alias-repeated",
    ],
)
def test_bad_identity_data_stops_loading(data, file, old, new, message):
    """A malformed brands/routes/code-systems row stops start-up, naming file and line."""
    _edit(data / file, old, new)
    with pytest.raises(KnowledgeError, match=message):
        load_knowledge(data)


# -- code systems: OID forms and NDC shapes -------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "role"),
    [
        (Coding(OID_RXNORM, "343047"), Role.STRONG_CYP3A4_INHIBITOR),
        (Coding(RXNORM, "343047"), Role.STRONG_CYP3A4_INHIBITOR),
        (Coding(OID_NDC, "75626-0001-01"), Role.VOCLOSPORIN),
        (Coding(OID_CVX, "03"), Role.LIVE_VACCINE),
        (Coding(CVX, "3"), Role.LIVE_VACCINE),
    ],
    ids=["rxnorm-oid", "rxnorm-uri", "ndc-oid", "cvx-oid", "cvx-uri"],
)
def test_medication_codes_in_oid_form(terminology, coding, role):
    """RxNorm, NDC and CVX codes are read under their OID system names too."""
    assert role in terminology.match_medication([coding], []).roles


def test_observation_and_condition_codes_in_oid_form(terminology):
    """LOINC, SNOMED CT and ICD-10-CM codes are read under their OID system names too."""
    assert terminology.observation_kind(
        [Coding(OID_LOINC, "98979-8")]
    ) == terminology.observation_kind([Coding(LOINC, "98979-8")])
    assert terminology.observation_kind([Coding(OID_LOINC, "98979-8")]) is not None
    for system, code in ((OID_SNOMED, "68815009"), (OID_ICD10CM, "M32.14"), (SNOMED, "68815009")):
        assert terminology.condition_kinds([Coding(system, code)], []), system


@pytest.mark.parametrize(
    ("coding_list", "expected"),
    [
        ([{"system": LOINC, "code": "98979-8"}], "98979-8"),
        ([{"system": OID_LOINC, "code": "98979-8"}], "98979-8"),
        ([{"system": f" {LOINC} ", "code": "98979-8"}], "98979-8"),
        ([{"system": "http://other", "code": "98979-8"}], None),
        ([{"code": "98979-8"}], None),
        ([{"system": LOINC, "code": ["98979-8"]}, {"system": LOINC, "code": "2160-0"}], "2160-0"),
        (
            [
                "junk",
                None,
                {"system": LOINC, "code": "0000-0"},
                {"system": LOINC, "code": "2823-3"},
            ],
            "2823-3",
        ),
        ([{"system": ["x"], "code": "98979-8"}], None),
    ],
    ids=[
        "uri",
        "oid",
        "blanks",
        "other-system",
        "no-system",
        "unhashable-code",
        "junk-first",
        "list-system",
    ],
)
def test_raw_observation_code_matches_like_codings(terminology, coding_list, expected):
    """The raw pass over a chart's Observations reads a code as ``observation_match`` does: the
    first LOINC coding the knowledge knows, under its URI, its OID or with stray blanks."""
    match = terminology.observation_match_concept({"coding": coding_list})
    assert (match[1] if match else None) == expected
    readable = [c for c in coding_list if isinstance(c, dict) and isinstance(c.get("code"), str)]
    codings = [Coding(str(c.get("system") or ""), c["code"]) for c in readable]
    assert match == terminology.observation_match(codings)


def test_exposure_memo_gives_the_same_answer_and_shares_the_bound(knowledge, monkeypatch):
    """Route reading is memoized like drug matching, within the same character bound."""
    monkeypatch.setattr(codes, "MATCH_CACHE_MAX_CHARS", 10_000)
    terminology = Terminology(knowledge)
    first = terminology.exposure([], ["tacrolimus 0.1 % topical ointment"])
    assert first == terminology.exposure([], ["tacrolimus 0.1 % topical ointment"])
    assert first[0] == codes.NON_SYSTEMIC
    for n in range(100):
        terminology.exposure([], [f"{'y' * 900}{n:04d} oral tablet"])
        assert terminology.cached_chars <= 10_000
    assert terminology.exposure([], ["tacrolimus 0.1 % topical ointment"]) == first


def test_immunization_cvx_codes_in_oid_form(terminology):
    """A recorded Immunization coded with the CVX OID keeps its CVX code and is live."""
    immunization = {
        "resourceType": "Immunization",
        "id": "i1",
        "status": "completed",
        "patient": {"reference": "Patient/p1"},
        "occurrenceDateTime": "2026-10-20",
        "vaccineCode": {"coding": [{"system": OID_CVX, "code": "03"}]},
    }
    f = facts_from(terminology, [PATIENT, immunization])
    assert f.immunizations[0].cvx_codes == ("03",)
    assert f.immunizations[0].live


@pytest.mark.parametrize(
    ("ndc", "parsed"),
    [
        ("75626-001-01", (75626, 1)),
        ("1234-5678-90", (1234, 5678)),
        ("75626-0001-1", (75626, 1)),
        ("75626-0001-01", (75626, 1)),
        ("75626000101", (75626, 1)),
        ("75626-001", (75626, 1)),
        (" 75626-001-01 ", (75626, 1)),
        ("7562600101", None),
        ("75626-01-01", None),
        ("75626-0001-001", None),
        ("75626-abc-01", None),
        ("", None),
    ],
    ids=[
        "10-digit-5-3-2",
        "10-digit-4-4-2",
        "10-digit-5-4-1",
        "11-digit-hyphenated",
        "11-digit-plain",
        "product-ndc",
        "padded",
        "10-digit-plain-ambiguous",
        "bad-5-2-2",
        "bad-5-4-3",
        "letters",
        "empty",
    ],
)
def test_normalize_ndc_forms(ndc, parsed):
    """Every FDA NDC shape gives (labeler, product); ambiguous or malformed ones give None."""
    assert normalize_ndc(ndc) == parsed


@pytest.mark.parametrize("ndc", ["75626-001-01", "75626-0001-01", "75626000101", "75626-0001-1"])
def test_lupkynis_ndc_in_each_form_is_voclosporin(terminology, ndc):
    """The LUPKYNIS NDC is recognised in its 10- and 11-digit forms."""
    assert Role.VOCLOSPORIN in terminology.match_medication([Coding(NDC, ndc)], []).roles


# -- code-only orders and references identified from their display ---------------------------


def test_ndc_only_order_is_shown_with_the_product_name(terminology):
    """An NDC-only LUPKYNIS order is named from ndc.csv, not '(unidentified medication)'."""
    order = draft(medicationCodeableConcept={"coding": [{"system": NDC, "code": "75626000101"}]})
    f = facts_from(terminology, [PATIENT], drafts=[order])
    assert f.draft_orders[0].name == "LUPKYNIS (voclosporin) 7.9 mg capsule"
    assert f.draft_orders[0].is_voclosporin


def test_rxnorm_only_order_is_shown_with_the_ingredient(terminology):
    """An RxNorm-only order of a known ingredient is named by the ingredient."""
    order = draft(medicationCodeableConcept={"coding": [{"system": RXNORM, "code": "343047"}]})
    f = facts_from(terminology, [PATIENT], drafts=[order])
    assert f.draft_orders[0].name == "atazanavir"


def test_reference_identified_from_its_display_has_no_note(terminology):
    """A missing referenced Medication whose display names voclosporin is no 'unidentified' note."""
    order = draft(
        medicationReference={"reference": "Medication/gone", "display": "LUPKYNIS 7.9 mg"}
    )
    f = facts_from(terminology, [PATIENT], drafts=[order])
    assert f.draft_orders[0].is_voclosporin
    assert f.unreadable == ()


def test_reference_with_an_unknown_display_keeps_the_note(terminology):
    """A missing referenced Medication whose display names nothing known is still reported."""
    order = draft(medicationReference={"reference": "Medication/gone", "display": "see chart"})
    f = facts_from(terminology, [PATIENT], drafts=[order])
    assert "could not be identified (display: 'see chart')" in f.unreadable[0].reason


# -- route and dose form ------------------------------------------------------------------------


def _route(system: str, code: str) -> Coding:
    return Coding(system, code)


@pytest.mark.parametrize(
    ("codings_", "texts", "exposure", "site"),
    [
        ([_route(SNOMED, "6064005")], ["ketoconazole"], "non-systemic", "cutaneous"),
        ([_route(SNOMED, "54485002")], ["erythromycin"], "non-systemic", "ophthalmic"),
        ([_route(SNOMED, "10547007")], ["dexamethasone"], "non-systemic", "otic"),
        ([_route(OID_SNOMED, "54485002")], [], "non-systemic", "ophthalmic"),
        ([_route(SNOMED, "26643006")], ["ketoconazole"], "systemic", None),
        ([_route(SNOMED, "47625008")], [], "systemic", None),
        ([_route(SNOMED, "45890007")], ["gel"], "systemic", None),
        ([], ["Ketoconazole 2% Cream"], "non-systemic", "cutaneous"),
        ([], ["ketoconazole 20 MG/ML Medicated Shampoo"], "non-systemic", "cutaneous"),
        ([], ["tacrolimus 0.1 % Topical Ointment"], "non-systemic", "cutaneous"),
        ([], ["ketoconazole foam 2%"], "non-systemic", "cutaneous"),
        ([], ["ketoconazole gel"], "non-systemic", "cutaneous"),
        ([], ["ketoconazole lotion"], "non-systemic", "cutaneous"),
        ([], ["cyclosporine eye drops"], "non-systemic", "ophthalmic"),
        ([], ["cyclosporine 0.5 MG/ML Ophthalmic Emulsion"], "non-systemic", "ophthalmic"),
        ([], ["erythromycin eye ointment"], "non-systemic", "ophthalmic"),
        ([], ["erythromycin 5 MG/GM Ophthalmic Ointment"], "non-systemic", "ophthalmic"),
        ([], ["dexamethasone ear drops"], "non-systemic", "otic"),
        ([], ["ciprofloxacin-dexamethasone otic suspension"], "non-systemic", "otic"),
        ([], ["RESTASIS"], "non-systemic", "ophthalmic"),
        ([], ["EXTINA"], "non-systemic", "cutaneous"),
        ([], ["ketoconazole 200 MG Oral Tablet"], "systemic", None),
        ([], ["ketoconazole cream", "ketoconazole oral tablet"], "systemic", None),
        ([], ["hydrocortisone rectal foam"], "systemic", None),
        ([], ["NIZORAL"], "unknown", None),
        ([], ["ketoconazole"], "unknown", None),
        ([_route(SNOMED, "46713006")], ["FluMist"], "unknown", None),
    ],
    ids=[
        "code-topical",
        "code-ophthalmic",
        "code-otic",
        "code-ophthalmic-oid",
        "code-oral",
        "code-intravenous",
        "code-transdermal-beats-gel",
        "word-cream",
        "word-shampoo",
        "word-ointment",
        "word-foam",
        "word-gel",
        "word-lotion",
        "word-eye-drops",
        "word-ophthalmic-emulsion",
        "word-eye-ointment",
        "word-ophthalmic-ointment",
        "word-ear-drops",
        "word-otic",
        "brand-restasis",
        "brand-extina",
        "word-oral-tablet",
        "systemic-wins",
        "rectal-foam-fires",
        "brand-of-several-forms",
        "no-route-no-form",
        "nasal-not-listed",
    ],
)
def test_route_and_dose_form(terminology, codings_, texts, exposure, site):
    """Route codes, dose-form words and one-route brands decide; systemic and unknown fire."""
    assert terminology.exposure(codings_, texts) == (exposure, site)


def test_route_read_from_dosage_instruction_and_medication_form(terminology):
    """dosageInstruction.route and a contained Medication.form are read for the exposure."""
    by_route = draft(
        medicationCodeableConcept={"text": "ketoconazole 2 %"},
        dosageInstruction=[{"route": {"coding": [{"system": SNOMED, "code": "6064005"}]}}],
    )
    by_form = draft(
        medicationReference={"reference": "#m"},
        contained=[
            {
                "resourceType": "Medication",
                "id": "m",
                "code": {"text": "erythromycin 5 MG/GM"},
                "form": {
                    "coding": [{"system": SNOMED, "code": "x", "display": "Ophthalmic ointment"}]
                },
            }
        ],
    )
    by_route_f = facts_from(terminology, [PATIENT], drafts=[by_route])
    by_form_f = facts_from(terminology, [PATIENT], drafts=[{**by_form, "id": "d2"}])
    assert (by_route_f.draft_orders[0].exposure, by_route_f.draft_orders[0].exposure_site) == (
        "non-systemic",
        "cutaneous",
    )
    assert by_form_f.draft_orders[0].exposure == "non-systemic"
    plain = facts_from(
        terminology, [PATIENT], drafts=[draft(medicationCodeableConcept={"text": "ketoconazole"})]
    )
    assert plain.draft_orders[0].exposure == "unknown"


def test_referenced_medication_form_is_read(terminology):
    """A referenced Medication's form counts like a contained one's."""
    medication = {
        "resourceType": "Medication",
        "id": "k1",
        "code": {"text": "Ketoconazole 20 MG/ML"},
        "form": {"text": "Shampoo"},
    }
    order = {**draft(medicationReference={"reference": "Medication/k1"}), "status": "active"}
    f = facts_from(terminology, [PATIENT, medication, order])
    assert f.medications[0].exposure == "non-systemic"


@pytest.mark.parametrize(
    ("exposure", "is_partner"),
    [("non-systemic", False), ("unknown", True), ("systemic", True)],
    ids=["non-systemic-spared", "unknown-fires", "systemic-fires"],
)
def test_partners_spare_non_systemic_products_for_systemic_roles(exposure, is_partner):
    """PatientFacts.partners() leaves out non-systemic products of systemic interaction roles."""
    keto = med("ketoconazole", Role.STRONG_CYP3A4_INHIBITOR, draft=True, exposure=exposure)
    f = facts(draft_orders=(voclosporin(), keto))
    assert (keto in f.partners(Role.STRONG_CYP3A4_INHIBITOR)) is is_partner
    assert keto in f.partners(Role.STRONG_CYP3A4_INHIBITOR, include_non_systemic=True)


def test_live_vaccines_are_never_spared_by_route():
    """A live vaccine is a partner whatever its route (FluMist is intranasal)."""
    flu = med("FluMist", Role.LIVE_VACCINE, draft=True, exposure="non-systemic")
    assert flu in facts(draft_orders=(voclosporin(), flu)).partners(Role.LIVE_VACCINE)


@pytest.mark.parametrize(
    ("name", "role", "site"),
    [
        ("ketoconazole 2% cream", Role.STRONG_CYP3A4_INHIBITOR, "cutaneous"),
        ("ketoconazole shampoo", Role.STRONG_CYP3A4_INHIBITOR, "cutaneous"),
        ("erythromycin eye ointment", Role.MODERATE_CYP3A4_INHIBITOR, "ophthalmic"),
        ("dexamethasone ear drops", Role.MODERATE_CYP3A4_INDUCER, "otic"),
    ],
    ids=["keto-cream", "keto-shampoo", "erythromycin-eye", "dexamethasone-ear"],
)
def test_non_systemic_products_get_no_critical_or_warning(knowledge, name, role, site):
    """Cream, shampoo, eye ointment, ear drops: no interaction card at all."""
    product = med(name, role, draft=True, exposure="non-systemic", exposure_site=site)
    evaluation = evaluate(facts(draft_orders=(voclosporin(), product)), knowledge)
    assert [f.rule_id for f in evaluation.findings] == ["prior-authorization"]


def test_topical_calcineurin_inhibitor_is_an_info_note(knowledge):
    """RESTASIS or tacrolimus ointment with voclosporin: one info note, no warning."""
    restasis = med(
        "RESTASIS 0.05 % ophthalmic emulsion",
        Role.CALCINEURIN_INHIBITOR,
        Role.MODERATE_CYP3A4_INHIBITOR,
        draft=True,
        exposure="non-systemic",
        exposure_site="ophthalmic",
    )
    evaluation = evaluate(facts(draft_orders=(voclosporin(), restasis)), knowledge)
    cni = [f for f in evaluation.findings if f.rule_id == "calcineurin-inhibitor-duplicate"]
    assert [f.indicator for f in cni] == ["info"]
    assert "ophthalmic" in cni[0].summary
    assert {f.indicator for f in evaluation.findings} == {"info"}
    systemic = replace(restasis, exposure="unknown")
    evaluation = evaluate(facts(draft_orders=(voclosporin(), systemic)), knowledge)
    cni = [f for f in evaluation.findings if f.rule_id == "calcineurin-inhibitor-duplicate"]
    assert [f.indicator for f in cni] == ["warning"]


# -- the match memo is bounded by size -------------------------------------------------------


def test_match_memo_never_keeps_huge_concepts(knowledge):
    """Distinct 4.5 MB texts are matched but never kept (issue 13: 60 of them grew RSS by 301 MB;
    8 here keep the test short)."""
    terminology = Terminology(knowledge)
    base = "x" * (4_500_000 - 20)
    for n in range(8):
        match = terminology.match_medication([], [f"{base} ketoconazole {n}"])
        assert Role.STRONG_CYP3A4_INHIBITOR in match.roles
    assert terminology.cached_chars == 0


def test_match_memo_total_is_bounded(knowledge, monkeypatch):
    """Small concepts are kept until their total would pass MATCH_CACHE_MAX_CHARS."""
    monkeypatch.setattr(codes, "MATCH_CACHE_MAX_CHARS", 10_000)
    terminology = Terminology(knowledge)
    text = "y" * 900
    for n in range(100):
        terminology.match_medication([], [f"{text}{n:04d}"])
        assert terminology.cached_chars <= 10_000
    assert terminology.cached_chars > 0
    again = terminology.match_medication([], [f"{text}{99:04d}"])
    assert again is terminology.match_medication([], [f"{text}{99:04d}"])


# -- the CLI names an unknown drug -----------------------------------------------------------


@pytest.mark.parametrize(
    ("drug", "rxnorm", "warned"),
    [
        ("ketokonazole 200 mg", None, True),
        ("LUPKYNIS7.9MG", None, False),
        ("Lupkinis", None, False),
        ("PAXLOVID", None, False),
        (None, "343047", False),
        (None, "1", True),
        ("levothyroxine 50 mcg", None, True),
    ],
    ids=["misspelt", "glued", "near-match", "brand", "rxnorm-known", "rxnorm-unknown", "unlisted"],
)
def test_unknown_drug_warning(drug, rxnorm, warned):
    """--drug/--rxnorm that match nothing in the knowledge get a warning line."""
    line = unknown_drug_warning(drug, rxnorm)
    assert (line is not None) is warned
    if line:
        assert line.startswith("warning: ")
        assert "matched no drug the service knows" in line


def test_hook_prints_the_unknown_drug_warning_on_stderr(capsys):
    """The warning goes to stderr before anything is sent, even with --quiet."""
    code = cli_main(
        [
            "hook",
            "--service-url",
            "http://127.0.0.1:9/cds-services/voclosporin-orders",
            "--hook",
            "order-sign",
            "--fhir-server",
            "http://127.0.0.1:9/fhir",
            "--patient",
            "p1",
            "--drug",
            "ketokonazole 200 mg",
            "--quiet",
            "--timeout",
            "2",
        ]
    )
    err = capsys.readouterr().err
    assert "warning: --drug 'ketokonazole 200 mg' matched no drug the service knows" in err
    assert code != 0  # nothing listens on port 9: the usual unreachable exit, after the warning


@pytest.mark.parametrize(
    ("exposure", "gap"),
    [("non-systemic", False), ("unknown", True)],
    ids=["cream-no-gap", "unknown-route-gap"],
)
def test_unreadable_medication_list_gap_ignores_non_systemic_products(knowledge, exposure, gap):
    """With the medication list unreadable, a ketoconazole cream raises no 'cannot tell' card."""
    keto = med("ketoconazole 2% cream", Role.STRONG_CYP3A4_INHIBITOR, draft=True, exposure=exposure)
    f = facts(
        draft_orders=(keto,),
        medications=(),
        unavailable=frozenset({DataCategory.MEDICATIONS}),
    )
    rules = [finding.rule_id for finding in evaluate(f, knowledge).findings]
    assert rules == (["data-unavailable"] if gap else [])


def test_code_only_vaccine_order_is_named_by_its_cvx_description(terminology):
    """An order carrying only a CVX code (no text) shows the vaccine's description, not
    "(unidentified medication)" (clinical review: "Live vaccine (unidentified medication)")."""
    coding = Coding("urn:oid:2.16.840.1.113883.12.292", "03")
    match = terminology.match_medication([coding], [])
    assert "live-vaccine" in match.roles
    assert match.product_name is not None
    assert match.product_name.endswith("(CVX 03)")
