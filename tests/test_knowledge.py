"""The knowledge data and its loader: vocabulary, card templates, payer criteria, prose in code."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

from cds_service.rules import coverage
from fhir_mappings.knowledge import DATA_DIR, Knowledge, KnowledgeError, load_knowledge
from fhir_mappings.vocabulary import (
    DRUG_LIST_ROLES,
    INITIATION_CRITERIA,
    INTERACTING_ROLES,
    RENEWAL_CRITERIA,
    ConditionKind,
    Criterion,
    ObservationKind,
    Role,
)
from tests.support.paths import SHARED_DIR

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "cds_service" / "rules"
SEED_POLICY = SHARED_DIR / "knowledge" / "seeds" / "002_3242f4c45293345b.txt"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A private copy of the data directory a test may break."""
    target = tmp_path / "data"
    shutil.copytree(DATA_DIR, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


# -- vocabulary ---------------------------------------------------------------------------------


def test_vocabulary_values_are_the_data_strings():
    """The enum values are exactly the strings the data and other modules use."""
    assert {str(r) for r in Role} == {
        "voclosporin",
        "strong-cyp3a4-inhibitor",
        "moderate-cyp3a4-inhibitor",
        "strong-cyp3a4-inducer",
        "moderate-cyp3a4-inducer",
        "cyclophosphamide",
        "calcineurin-inhibitor",
        "p-gp-substrate",
        "mycophenolate",
        "corticosteroid",
        "live-vaccine",
        "nephrotoxic",
        "hyperkalemia-risk",
        "ace-inhibitor-or-arb",
    }
    assert {str(k) for k in ObservationKind} == {
        "egfr",
        "creatinine",
        "potassium",
        "bp-panel",
        "systolic",
        "diastolic",
        "upcr",
        "pregnancy-status",
        "breastfeeding-status",
    }
    assert {str(k) for k in ConditionKind} == {
        "lupus-nephritis",
        "hepatic-impairment",
        "end-stage-renal-disease",
        "dialysis",
        "pregnancy",
        "lactation",
        "not-pregnant",
        "pregnancy-unknown",
    }
    assert Role.MYCOPHENOLATE == "mycophenolate"


def test_interacting_roles_are_every_partner_role():
    """Every role but voclosporin and background therapy interacts with voclosporin."""
    assert frozenset(Role) - INTERACTING_ROLES == {
        Role.VOCLOSPORIN,
        Role.MYCOPHENOLATE,
        Role.CORTICOSTEROID,
    }


def test_loaded_data_uses_the_vocabulary(knowledge: Knowledge):
    """Every role and kind in the data is an enum member; every drug-list role has a drug."""
    assert {entry.role for entry in knowledge.drugs} == DRUG_LIST_ROLES
    assert all(isinstance(entry.role, Role) for entry in knowledge.drugs)
    assert set(knowledge.observation_kinds.values()) == set(ObservationKind)
    assert all(isinstance(k, ObservationKind) for k in knowledge.observation_kinds.values())
    assert all(isinstance(k, ConditionKind) for k in knowledge.condition_kinds.values())
    assert set(knowledge.condition_kinds.values()) == set(ConditionKind)


@pytest.mark.parametrize("role", ["strong-cyp3a4-inhibitr", "live-vaccine"], ids=["typo", "live"])
def test_unknown_drug_role_stops_loading(data: Path, role: str):
    """A drugs.csv role outside the vocabulary (or the terminology-only live-vaccine) is refused."""
    edit(data / "drugs.csv", "\nstrong-cyp3a4-inhibitor,", f"\n{role},")
    with pytest.raises(KnowledgeError, match=rf"drugs\.csv line \d+: unknown role '{role}'"):
        load_knowledge(data)


def test_ndc_of_an_unlisted_ingredient_stops_loading(data: Path):
    """An NDC row must name a drugs.csv ingredient: its roles come from that row."""
    edit(data / "ndc.csv", ",voclosporin,", ",voclosporine,")
    with pytest.raises(KnowledgeError, match=r"ndc\.csv line 2: ingredient 'voclosporine'"):
        load_knowledge(data)


@pytest.mark.parametrize(
    ("file", "kind"), [("observations.csv", "egfr"), ("conditions.csv", "lupus-nephritis")]
)
def test_unknown_kind_stops_loading(data: Path, file: str, kind: str):
    """An observation or condition kind outside the vocabulary names file and line."""
    edit(data / file, f",{kind},", ",eGFR,")
    with pytest.raises(KnowledgeError, match=rf"{re.escape(file)} line \d+: unknown kind 'eGFR'"):
        load_knowledge(data)


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        ("dose_units.csv", "{pill},capsule,", "{pill},tablet,", r"dose_units\.csv line \d+"),
        (
            "dose_units.csv",
            "caps,capsule,",
            "cap,capsule,",
            r"dose_units\.csv line \d+: unit 'cap'",
        ),
        ("timing_codes.csv", "BID,2,1,d,", "BID,0,1,d,", r"timing_codes\.csv line 2"),
        ("timing_codes.csv", "BID,2,1,d,", "BID,2,1,day,", r"timing_codes\.csv line 2"),
        ("timing_codes.csv", "AM,1,1,d,MORN,", "AM,1,1,d,MORNING,", r"timing_codes\.csv line \d+"),
        ("timing_codes.csv", "BID,2,1,d,", "BID,two,1,d,", r"timing_codes\.csv line 2"),
        ("event_timing.csv", "EVE,evening,", "EVE,dusk,", r"event_timing\.csv line \d+: 'EVE'"),
    ],
    ids=[
        "unit-counts-unknown",
        "unit-repeated",
        "timing-zero-frequency",
        "timing-bad-period-unit",
        "timing-when-not-event-timing",
        "timing-frequency-not-a-number",
        "event-part-unknown",
    ],
)
def test_bad_dose_vocabulary_stops_loading(data: Path, file: str, old: str, new: str, message):
    """A unit, timing code or day part outside its vocabulary names file and line."""
    edit(data / file, old, new)
    with pytest.raises(KnowledgeError, match=message):
        load_knowledge(data)


def test_dose_vocabulary_rows_have_sources(knowledge: Knowledge):
    """Every unit synonym and timing code is loaded, each timing code with its source."""
    vocabulary = knowledge.dose_vocabulary
    assert vocabulary.units["{pill}"] == "capsule"
    assert vocabulary.units["mg"] == "mg"
    assert all(code.source.strip() for code in vocabulary.timing_codes.values())
    assert vocabulary.timing_codes["AM"].when == "MORN"


def test_race_based_codes_are_the_four_flagged_rows(knowledge: Knowledge):
    """observations.csv flags the MDRD and CKD-EPI race-based eGFR codes, each citing NKF-ASN."""
    assert knowledge.race_based_egfr_codes == {"48642-3", "48643-1", "88293-6", "88294-4"}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('recommended)",true', 'recommended)",yes', "race_based must be true or false"),
        (
            '"Creatinine [Mass/volume] in Serum or Plasma","knowledge 5b"',
            '"Creatinine [Mass/volume] in Serum or Plasma","knowledge 5b",true',
            "race_based is for egfr rows",
        ),
    ],
    ids=["not-a-boolean", "not-egfr"],
)
def test_bad_race_based_flag_stops_loading(data: Path, old: str, new: str, message: str):
    """A race_based value other than true/false, or on a non-eGFR row, stops start-up."""
    edit(data / "observations.csv", old, new)
    with pytest.raises(KnowledgeError, match=rf"observations\.csv line \d+: {message}"):
        load_knowledge(data)


# -- card templates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("{renal.baseline_low_max:g}:", "{renal.baseline_low_mx:g}:", "renal has no value"),
        ("{renal.baseline_low_max:g}:", "{renl.baseline_low_max:g}:", "unknown name 'renl'"),
        ("Baseline eGFR {egfr} is", "Baseline eGFR {egrf} is", "unknown name 'egrf'"),
        ("Baseline eGFR {egfr} is", "Baseline eGFR {} is", "unknown name ''"),
        ("Baseline eGFR {egfr} is", "Baseline eGFR {egfr!r} is", "only plain names"),
        ("{renal.baseline_low_max:g}:", "{renal.baseline_low_max:d}:", "format spec 'd'"),
        ("Baseline eGFR {egfr} is", "Baseline eGFR {egfr is", "not a format string"),
        ('facts = ["egfr", ', 'facts = ["egfr", "unused", ', "used by no template"),
    ],
    ids=["attribute", "section", "fact", "positional", "conversion", "spec", "brace", "unused"],
)
def test_bad_card_template_stops_loading(data: Path, old: str, new: str, message: str):
    """A placeholder that is no knowledge value and no declared fact stops start-up."""
    edit(data / "cards.toml", old, new)
    with pytest.raises(KnowledgeError, match=rf"cards\.toml \[egfr-baseline-low\].*{message}"):
        load_knowledge(data)


def test_card_table_for_an_unknown_rule_stops_loading(data: Path):
    """cards.toml tables are rule ids of rules.toml."""
    edit(data / "cards.toml", "[pediatric]", "[paediatric]")
    with pytest.raises(KnowledgeError, match=r"\[paediatric\]: not a rule"):
        load_knowledge(data)


def test_bad_card_title_stops_loading(data: Path):
    """A rules.toml title placeholder is checked like a card template."""
    edit(data / "rules.toml", "{adult_from_years}", "{adult_years}")
    with pytest.raises(KnowledgeError, match=r"\[rules\.pediatric\] title: .*'adult_years'"):
        load_knowledge(data)


def test_card_text_follows_the_data(knowledge: Knowledge):
    """The card prints the threshold the rule uses: change the value and the text follows."""
    from dataclasses import replace

    changed = replace(knowledge, renal=replace(knowledge.renal, baseline_low_max=40.0))
    summary = changed.card_text("egfr-baseline-low", "summary", egfr="39")
    assert summary.startswith("Baseline eGFR 39 is <= 40:")
    with pytest.raises(KnowledgeError, match="not declared"):
        knowledge.card_text("egfr-baseline-low", "summary", egfr="39", typo="x")


class _Fact:
    """A fact value that shows its name and the format spec it was given."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __format__(self, spec: str) -> str:
        return f"<{self.name}:{spec} {{x}}>"  # braces in a fact stay as they are


def test_every_card_template_fills_as_formatted_at_once(knowledge: Knowledge):
    """Knowledge values filled ahead (``prepare``) give the text of one str.format call."""
    changed = knowledge.with_local_policy(potassium_high_default=5.25)  # a fresh cache
    for rule_id, card in changed.cards.items():
        facts = {name: _Fact(name) for name in card.facts}
        for name, template in card.templates.items():
            expected = template.format_map({**changed.template_values, **facts})
            assert changed.card_text(rule_id, name, **facts) == expected, (rule_id, name)
            assert changed.card_text(rule_id, name, **facts) == expected  # and from the cache


@pytest.mark.parametrize(
    ("template", "facts"),
    [
        pytest.param("{{literal}} {renal.baseline_low_max:g} {egfr}", {"egfr": "39"}, id="braces"),
        pytest.param("{adult_from_years:>5}|{x!r:>8}", {"x": "a"}, id="spec-and-conversion"),
        pytest.param("at {payer_policy_title}", {}, id="constant"),
        pytest.param("{dose!r}", {}, id="conversion-of-a-value"),
        pytest.param("{adult_from_years} {renal}", {"renal": "shadow"}, id="shadowing"),
    ],
)
def test_fill_matches_str_format(knowledge: Knowledge, template: str, facts: dict[str, str]):
    """``fill`` gives what str.format gives with the knowledge values and the facts."""
    expected = template.format_map({**knowledge.template_values, **facts})
    assert knowledge.fill(template, **facts) == expected
    assert knowledge.fill(template, **facts) == expected


def test_each_fills_a_table_row_by_row_as_one_call_each(knowledge: Knowledge):
    """``each`` gives the lines ``text(name, **facts)`` gives, and checks every row's facts."""
    text = knowledge.card_texts("prior-authorization")
    rows = [
        {"name": "Age {x}", "status": "met", "evidence": "age 30"},
        {"name": "Diagnosis", "status": "unknown", "evidence": "{braces} stay"},
    ]
    assert text.each("row", rows) == [text("row", **row) for row in rows]
    assert text.each("set_renewal", [{}]) == [text("set_renewal")]  # a constant template
    with pytest.raises(KnowledgeError, match="not declared"):
        text.each("row", [*rows, {"name": "x", "status": "met", "evidence": "", "typo": 1}])


def test_fill_still_refuses_a_missing_fact(knowledge: Knowledge):
    """A template naming a fact not given fails as str.format does, also once prepared."""
    for _ in range(2):
        with pytest.raises(KeyError, match="egfr"):
            knowledge.fill("{renal.baseline_low_max:g} {egfr}")


def _text_calls() -> dict[str, set[str]]:
    """rule id -> template names the rules code asks for via ``text = card_text(k, "<id>")``."""
    wanted: dict[str, set[str]] = {}
    for path in RULES_DIR.glob("*.py"):
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.FunctionDef):
                continue
            rule_id = next(
                (
                    node.value.args[1].value
                    for node in ast.walk(function)
                    if isinstance(node, ast.Assign)
                    and isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "id", None) == "card_text"
                    and isinstance(node.value.args[1], ast.Constant)
                ),
                None,
            )
            if rule_id is None:
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "text":
                    names = wanted.setdefault(rule_id, set())
                    names |= {
                        c.value
                        for c in ast.walk(node.args[0])
                        if isinstance(c, ast.Constant) and isinstance(c.value, str)
                    }
    return wanted


def test_every_template_the_rules_ask_for_exists(knowledge: Knowledge):
    """Each text("name") in a rule names a template of that rule's cards.toml table."""
    calls = _text_calls()
    assert {"data-unavailable", "monitoring-gaps"} <= set(calls)  # the engine's cards too
    for rule_id, names in calls.items():
        assert names <= set(knowledge.cards[rule_id].templates), rule_id


def test_every_template_is_used_by_the_code(knowledge: Knowledge):
    """No dead prose: every template name in cards.toml appears in the rules code."""
    constants = {
        node.value
        # repeats.py words any rule's card shown again as a repeat (data-unavailable's table)
        for path in (*RULES_DIR.glob("*.py"), ROOT / "cds_service" / "repeats.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    for rule_id, card in knowledge.cards.items():
        assert set(card.templates) <= constants, rule_id


# Digits that may appear in rule-code string literals, each with the reason. Keep it short.
PROSE_DIGITS_ALLOWED: dict[str, str] = {
    r"(?i)cyp3a4": "the enzyme's name (in rule ids such as strong-cyp3a4-inhibitor), no number",
}


def _prose_literals(path: Path) -> list[tuple[int, str]]:
    """String literals of a module that are not docstrings or f-string format specs."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            skip.add(id(body[0].value))
        if isinstance(node, ast.FormattedValue) and node.format_spec is not None:
            skip.update(id(part) for part in ast.walk(node.format_spec))
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
    )


def _without_allowed(text: str) -> str:
    for pattern in PROSE_DIGITS_ALLOWED:
        text = re.sub(pattern, "", text)
    return text


@pytest.mark.parametrize("path", sorted(RULES_DIR.glob("*.py")), ids=lambda p: p.name)
def test_rule_code_prose_carries_no_numbers(path: Path):
    """Card prose with numbers lives in cards.toml: no digit in a rule module's string literals."""
    offending = [
        f"line {line}: {text!r}"
        for line, text in _prose_literals(path)
        if re.search(r"\d", _without_allowed(text))
    ]
    assert not offending, "\n".join(offending)


def test_the_prose_scan_sees_a_number(tmp_path: Path):
    """The scan above can fail: a threshold in an f-string is found, a format spec is not."""
    module = tmp_path / "rule.py"
    module.write_text('"""Doc 45."""\nx = 1\ns = f"eGFR <= 45: {x:.1f}"\nr = "cyp3a4-inducer"\n')
    prose = [text for _, text in _prose_literals(module)]
    assert prose == ["eGFR <= 45: ", "cyp3a4-inducer"]
    assert [text for text in prose if re.search(r"\d", _without_allowed(text))] == prose[:1]


# -- payer criteria -----------------------------------------------------------------------------


def test_every_criterion_has_one_checker_and_a_row(knowledge: Knowledge):
    """Data, vocabulary and checkers name the same criteria; the data gives the card order."""
    assert set(coverage.CHECKERS) == set(Criterion)
    assert [c.id for c in knowledge.payer_criteria] == [
        c for c in Criterion if c in INITIATION_CRITERIA
    ]
    assert {c.id for c in knowledge.payer_renewal_criteria} == RENEWAL_CRITERIA
    both = (*knowledge.payer_criteria, *knowledge.payer_renewal_criteria)
    assert all(c.source.startswith("FEP 5.99.021") and c.wording for c in both)
    assert knowledge.fill(knowledge.payer_criteria[0].name) == "Age 18 or older"


def test_renewal_criteria_quote_the_seed_policy(knowledge: Knowledge):
    """Each renewal row's wording is the seed policy's own text, in the policy's order."""
    seed = " ".join(SEED_POLICY.read_text(encoding="utf-8").split())
    for criterion in knowledge.payer_renewal_criteria:
        wording = criterion.wording.removeprefix("Prior \u2013 Approval Renewal Limits: ")
        quoted = wording.split(" (")[0] if "Same as above" in wording else wording
        assert quoted in seed, criterion.id
    ids = [c.id for c in knowledge.payer_renewal_criteria]
    assert ids.index(Criterion.CLINICAL_BENEFIT) < ids.index(Criterion.BENEFITS_OUTWEIGH_RISKS)


def test_renewal_set_without_its_own_criterion_stops_loading(data: Path):
    """A renewal set that lost 'documented clinical benefit' stops start-up."""
    edit(
        data / "prior_authorization.toml",
        'id = "documented-clinical-benefit"',
        'id = "active-lupus-nephritis"',
    )
    with pytest.raises(KnowledgeError, match=r"renewal_criterion.*missing.*clinical-benefit"):
        load_knowledge(data)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('id = "age"', 'id = "agee"', "unknown criterion id 'agee'"),
        ('id = "age"', 'id = "approval-duration"', r"repeated \['approval-duration'\]"),
        ("{prior_authorization.minimum_age_years}", "{minimum_age}", "unknown name"),
        (
            'source = "FEP 5.99.021 Prior-Approval Requirements: Age (18 years of age or older)"',
            'source = ""',
            "missing source",
        ),
    ],
    ids=["unknown", "repeated", "placeholder", "no-source"],
)
def test_bad_criterion_stops_loading(data: Path, old: str, new: str, message: str):
    """An unknown, repeated or missing criterion, or a bad name template, stops start-up."""
    edit(data / "prior_authorization.toml", old, new)
    with pytest.raises(KnowledgeError, match=rf"prior_authorization\.toml.*{message}"):
        load_knowledge(data)


# -- override reasons and label links -----------------------------------------------------------

NRCS = 'system = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"\ncode = '


def test_override_reasons_are_the_hl7_codes_with_their_displays(knowledge: Knowledge):
    """The displays are HL7's own, and the lookup for display-less feedback has every reason."""
    displays = knowledge.override_reason_displays
    assert len(displays) == len(knowledge.override_reasons) == 7
    nrcs = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
    assert displays[(nrcs, "recipient-disagrees-evidence")] == (
        "Recipient disagrees with recommendation because of issues with the evidence"
    )
    assert displays[(nrcs, "action-performed-no-adverse-effect")] == (
        "Intended action was performed previously without adverse effect"
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (NRCS, 'system = ""\ncode = ', "reason 1: missing system"),
        (NRCS, 'system = "non-adherence"\ncode = ', "reason 1: system 'non-adherence' is not"),
        (
            'code = "cds-suboptimal-context"',
            'code = "cds-not-applicable"',
            r"repeated system\|code",
        ),
        ('display = "PC CDS does not apply to patient"', 'display = " "', "missing display"),
    ],
    ids=["no-system", "relative-system", "repeated", "blank-display"],
)
def test_bad_override_reason_stops_loading(data: Path, old: str, new: str, message: str):
    """A reason without system, code or display, or repeated, stops start-up."""
    edit(data / "override_reasons.toml", old, new)
    with pytest.raises(KnowledgeError, match=rf"override_reasons\.toml.*{message}"):
        load_knowledge(data)


def test_label_links_default_to_the_label_page(knowledge: Knowledge):
    """Rules that cite the label link it; local-rule, payer and data cards do not."""
    link = knowledge.rules["hyperkalemia"].link
    assert link is not None
    assert (link.label, link.url) == (
        "LUPKYNIS label (DailyMed): 5.6 Hyperkalemia",
        knowledge.label_url,
    )
    unlinked = {rule_id for rule_id, citation in knowledge.rules.items() if citation.link is None}
    assert unlinked == {
        "calcineurin-inhibitor-duplicate",
        "prior-authorization",
        "monitoring-gaps",
        "data-unavailable",
    }


@pytest.mark.parametrize(
    ("new", "message"),
    [
        ('link_label = "x"\nlink_url = "http://example.org/label"', "absolute https URL"),
        ('link_label = ""', "non-empty string"),
        ('link_url = "https://example.org/label"', "link_url without link_label"),
    ],
    ids=["plain-http", "blank-label", "url-only"],
)
def test_bad_label_link_stops_loading(data: Path, new: str, message: str):
    """A link must be labelled and https: a card never links somewhere unreviewed."""
    edit(data / "rules.toml", 'link_label = "LUPKYNIS label (DailyMed): 5.6 Hyperkalemia"', new)
    with pytest.raises(KnowledgeError, match=rf"rules\.toml \[rules\.hyperkalemia\]: .*{message}"):
        load_knowledge(data)
