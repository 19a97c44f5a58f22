"""Load and validate the reviewed knowledge data in ``fhir_mappings/data/``.

The data is read once at start-up; anything malformed raises ``KnowledgeError`` so a bad data
change stops the service from starting instead of silently weakening a check. Roles, kinds and
payer criterion ids are checked against ``vocabulary.py``; card prose (``cards.toml``), criterion
names (``prior_authorization.toml``) and rule titles are templates whose placeholders are checked
here (``prose.py``) and filled by ``Knowledge.card_text`` / ``Knowledge.fill``.
"""

from __future__ import annotations

import csv
import hashlib
import re
import tomllib
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from string import Formatter
from typing import Any, TypeVar

from fhir_mappings.prose import CardText, placeholder_problems, used_names
from fhir_mappings.vocabulary import (
    DRUG_LIST_ROLES,
    INITIATION_CRITERIA,
    RENEWAL_CRITERIA,
    ConditionKind,
    Criterion,
    ObservationKind,
    Role,
)

DATA_DIR = Path(__file__).parent / "data"


class KnowledgeError(ValueError):
    """The knowledge data is malformed; the message names the file and row."""


@dataclass(frozen=True)
class DrugEntry:
    role: Role
    ingredient: str
    terms: tuple[str, ...]
    rxnorm: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class BrandEntry:
    """A brand, co-packaged or fixed-dose product (brands.csv) and its drugs.csv ingredients."""

    name: str
    ingredients: tuple[str, ...]
    other_components: str
    exposure: str  # a ROUTE_EXPOSURES value when the product has one route only, else ""
    source: str


# Where a route or dose form puts the drug (routes.csv ``exposure``): only "systemic" meets the
# interaction rules; the others are the non-systemic sites of the route/dose-form decision.
ROUTE_EXPOSURES = frozenset({"systemic", "cutaneous", "ophthalmic", "otic"})
# routes.csv ``kind``: a coded route (system + code) or a word of a dose form or product name.
ROUTE_KINDS = frozenset({"code", "word"})


@dataclass(frozen=True)
class RouteEntry:
    """One row of routes.csv: a route code or a dose-form word and where it puts the drug."""

    kind: str
    system: str
    value: str
    exposure: str
    source: str


@dataclass(frozen=True)
class VaccineEntry:
    cvx: str
    description: str
    live: bool
    note: str
    source: str


@dataclass(frozen=True)
class LabelLink:
    """Where a clinician reads on: the label section a rule cites (a CDS Hooks absolute link)."""

    label: str
    url: str


@dataclass(frozen=True)
class RuleCitation:
    rule_id: str
    title: str
    section: str
    link: LabelLink | None = None


@dataclass(frozen=True)
class OverrideReason:
    system: str
    code: str
    display: str


@dataclass(frozen=True)
class Renal:
    baseline_low_max: float
    baseline_max_age_days: int
    decline_applies_below: float
    decline_reduce_above_percent: float
    decline_discontinue_from_percent: float
    severe_impairment_below: float
    monitoring_max_age_days: int


@dataclass(frozen=True)
class CkdEpi2021:
    constant: float
    kappa_female: float
    kappa_male: float
    alpha_female: float
    alpha_male: float
    above_kappa_exponent: float
    age_base: float
    female_factor: float
    minimum_age: int


@dataclass(frozen=True)
class BloodPressureLimits:
    systolic_max: float
    diastolic_max: float
    max_age_days: int


@dataclass(frozen=True)
class PotassiumLimits:
    default_high_mmol_l: float
    max_age_days: int
    near_limit_mmol_l: float


@dataclass(frozen=True)
class DoseRules:
    capsule_mg: float
    doses_per_day: int
    starting_dose_mg: float
    max_dose_mg: float
    reduction_step_mg: float
    severe_renal_starting_dose_mg: float
    hepatic_impairment_dose_mg: float
    moderate_inhibitor_morning_mg: float
    moderate_inhibitor_evening_mg: float
    mg_tolerance: float


# Parts of the day in day order (event_timing.csv ``part``): split AM/PM orders are put
# side by side by these.
DAY_PARTS = ("morning", "midday", "afternoon", "evening", "night")
DOSE_UNIT_COUNTS = frozenset({"mg", "capsule"})
TIMING_PERIOD_UNITS = frozenset({"s", "min", "h", "d", "wk", "mo", "a"})


@dataclass(frozen=True)
class TimingCode:
    """A Timing.code abbreviation (BID, Q12H, AM): frequency per period, and when in the day."""

    frequency: int
    period: float
    period_unit: str
    when: str | None
    source: str


@dataclass(frozen=True)
class DoseVocabulary:
    """How EHRs write doses and times (dose_units.csv, timing_codes.csv, event_timing.csv).

    Keys are upper-cased codes (timing) and lower-cased units, as they are compared.
    """

    units: dict[str, str]  # unit or UCUM code -> "mg" | "capsule"
    timing_codes: dict[str, TimingCode]
    day_parts: dict[str, str]  # EventTiming code (upper case) -> part of the day (DAY_PARTS)


@dataclass(frozen=True)
class DurationRules:
    reassess_after_days: int
    not_established_after_days: int


@dataclass(frozen=True)
class CourseRules:
    """What joins voclosporin orders into one treatment course (local policy, rules.toml)."""

    max_gap_days: int
    default_span_days: int


@dataclass(frozen=True)
class ReinitiationRules:
    """Re-starting after an eGFR-driven discontinuation (PI 2.2 Table 1, knowledge 1.14)."""

    recovered_from_percent: float
    dose_mg: float


@dataclass(frozen=True)
class PriorAuthorizationLimits:
    quantity_capsules: int
    quantity_period_days: int
    approval_months: int
    minimum_age_years: int


@dataclass(frozen=True)
class PayerCriterion:
    """One prior-authorization criterion: its id, the name the card shows (a template), source,
    and the policy's own wording it stands for."""

    id: Criterion
    name: str
    source: str
    wording: str = ""


# The name a placeholder starts with, as str.format reads it ("renal" of "{renal.x:g}").
_HEAD = re.compile(r"[^.\[]*")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A template with its knowledge values filled in ahead: what is left takes only facts.

    ``constant`` is the finished text when no placeholder is left (no formatting at all);
    otherwise ``template`` is a format string over the facts alone (braces of the filled-in
    text escaped). A template this cannot prepare exactly keeps the whole mapping
    (``values`` set): it is filled as before, knowledge values and facts together.
    """

    template: str
    constant: str | None = None
    values: Mapping[str, Any] | None = field(default=None, repr=False)

    def fill(self, facts: Mapping[str, object]) -> str:
        """The text with ``facts`` filled in."""
        if self.constant is not None:
            return self.constant
        if self.values is not None:
            return self.template.format_map({**self.values, **facts})
        return self.template.format_map(facts)


def prepare(template: str, values: Mapping[str, Any]) -> Prepared:
    """Fill the knowledge values of ``template`` now, as ``str.format`` would (``format(value,
    spec)`` of the named attribute); placeholders of facts stay. Filling the result with the
    facts gives the same text as filling ``template`` with knowledge values and facts at once
    (for facts that do not shadow a knowledge value: the loader refuses those)."""
    try:
        parsed = list(Formatter().parse(template))
    except ValueError:  # malformed: leave the error to the fill, as before
        return Prepared(template, values=values)
    literal: list[str] = []  # the text as shown (braces not escaped)
    escaped: list[str] = []  # the same as a format string over the facts
    placeholders = False
    for text, name, spec, conversion in parsed:
        literal.append(text)
        escaped.append(text.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        head = _HEAD.match(name).group()  # type: ignore[union-attr]  # always matches
        if head not in values:  # a fact: kept as written
            placeholders = True
            escaped.append(
                "{"
                + name
                + (f"!{conversion}" if conversion else "")
                + (f":{spec}" if spec else "")
                + "}"
            )
            continue
        if conversion is not None or "[" in name or (spec and "{" in spec):
            return Prepared(template, values=values)  # beyond plain names: fill as before
        value = values[head]
        for attribute in name.split(".")[1:]:
            value = getattr(value, attribute)
        shown = format(value, spec or "")
        literal.append(shown)
        escaped.append(shown.replace("{", "{{").replace("}", "}}"))
    if not placeholders:
        return Prepared(template, constant="".join(literal))
    return Prepared("".join(escaped))


@dataclass(frozen=True, slots=True)
class CardTexts:
    """The prepared templates of one rule's card: ``texts("summary", partners=...)``."""

    rule_id: str
    templates: dict[str, Prepared]
    facts: frozenset[str]

    def __call__(self, name: str, /, **facts: object) -> str:
        """Fill template ``name`` with ``facts`` (each declared in the table's ``facts``)."""
        self._check_declared(facts)
        return self.templates[name].fill(facts)

    def each(self, name: str, rows: Sequence[Mapping[str, object]]) -> list[str]:
        """Fill template ``name`` once per mapping of facts in ``rows`` (a table's lines)."""
        for facts in rows:
            self._check_declared(facts)
        fill = self.templates[name].fill
        return [fill(facts) for facts in rows]

    def _check_declared(self, facts: Mapping[str, object]) -> None:
        if not self.facts.issuperset(facts):  # no set built when all is well
            undeclared = sorted(set(facts) - self.facts)
            raise KnowledgeError(
                f"cards.toml [{self.rule_id}]: facts {undeclared} are not declared"
            )


@dataclass(frozen=True)
class Knowledge:
    """The whole reviewed knowledge base, immutable after loading."""

    version: str
    digest: str
    label_url: str
    payer_policy_title: str
    drugs: tuple[DrugEntry, ...]
    ndc_prefixes: dict[str, str]
    vaccines: dict[str, VaccineEntry]
    live_vaccine_terms: tuple[str, ...]
    # Values are ObservationKind / ConditionKind members, checked at load.
    observation_kinds: dict[str, ObservationKind]
    condition_kinds: dict[tuple[str, str], ConditionKind]
    renal: Renal
    ckd_epi: CkdEpi2021
    creatinine_umol_per_mg_dl: float
    blood_pressure: BloodPressureLimits
    potassium: PotassiumLimits
    adult_from_years: int
    live_vaccine_days_before_initiation: int
    dose: DoseRules
    dose_vocabulary: DoseVocabulary
    duration: DurationRules
    prior_authorization: PriorAuthorizationLimits
    course: CourseRules
    reinitiation: ReinitiationRules
    rules: dict[str, RuleCitation]
    override_reasons: tuple[OverrideReason, ...]
    cards: dict[str, CardText]
    payer_criteria: tuple[PayerCriterion, ...]
    brands: tuple[BrandEntry, ...] = ()
    ndc_names: dict[str, str] = field(default_factory=dict)  # ndc.csv ``name`` by prefix
    code_system_aliases: dict[str, str] = field(default_factory=dict)  # OID form -> FHIR URI
    routes: tuple[RouteEntry, ...] = ()
    # LOINC eGFR codes of race-based equations (observations.csv ``race_based``): read only when
    # a draw has no race-free result and no creatinine (knowledge: "lab values as labs send them").
    race_based_egfr_codes: frozenset[str] = frozenset()
    # The payer's renewal criteria (prior_authorization.toml ``[[renewal_criterion]]``).
    payer_renewal_criteria: tuple[PayerCriterion, ...] = ()

    @property
    def full_version(self) -> str:
        """Version plus a digest of the files, so an unreviewed edit is visible in the audit."""
        return f"{self.version}+{self.digest[:12]}"

    @property
    def override_reason_displays(self) -> dict[tuple[str, str], str]:
        """(system, code) -> the display the cards offer (feedback may come without it)."""
        return {(r.system, r.code): r.display for r in self.override_reasons}

    def loinc_codes(self, *kinds: ObservationKind) -> tuple[str, ...]:
        return tuple(code for code, kind in self.observation_kinds.items() if kind in kinds)

    @cached_property
    def template_values(self) -> dict[str, Any]:
        """The knowledge values a template may name (after any local policy was applied).

        Computed once per Knowledge (``with_local_policy`` makes a new one): cards are filled
        on the hook path.
        """
        return _template_values(self)

    @cached_property
    def _prepared(self) -> dict[str, Prepared]:
        """Template -> the template with its knowledge values already filled in (see
        ``prepare``); filled lazily, once per template and Knowledge, as ``fill`` meets
        them. The knowledge values never change after loading, so neither do these."""
        return {}

    @cached_property
    def _card_texts(self) -> dict[str, CardTexts]:
        return {}

    def _prepare(self, template: str) -> Prepared:
        prepared = self._prepared.get(template)
        if prepared is None:
            prepared = self._prepared[template] = prepare(template, self.template_values)
        return prepared

    def card_texts(self, rule_id: str) -> CardTexts:
        """The prose of one rule's card (cards.toml), prepared once per Knowledge and rule."""
        texts = self._card_texts.get(rule_id)
        if texts is None:
            card = self.cards[rule_id]
            # The loader refuses facts that shadow knowledge values, so the prepared form applies.
            prepared = {name: self._prepare(t) for name, t in card.templates.items()}
            texts = self._card_texts[rule_id] = CardTexts(rule_id, prepared, card.facts)
        return texts

    def named_criteria(self, renewal: bool) -> tuple[tuple[PayerCriterion, str], ...]:
        """The payer criteria of one set (renewal or initial approval), each with its name as
        the card shows it (the ``name`` template filled, once per Knowledge)."""
        return self._named_criteria[renewal]

    @cached_property
    def _named_criteria(self) -> dict[bool, tuple[tuple[PayerCriterion, str], ...]]:
        return {
            renewal: tuple((c, self.fill(c.name)) for c in criteria)
            for renewal, criteria in (
                (False, self.payer_criteria),
                (True, self.payer_renewal_criteria),
            )
        }

    def card_text(self, rule_id: str, name: str, /, **facts: object) -> str:
        """Fill template ``name`` of ``rule_id`` (cards.toml) with the knowledge and ``facts``."""
        return self.card_texts(rule_id)(name, **facts)

    def fill(self, template: str, /, **facts: object) -> str:
        """Fill a checked template with the knowledge values and ``facts``."""
        if facts and not self.template_values.keys().isdisjoint(facts):  # a fact shadows one
            return template.format_map({**self.template_values, **facts})
        return self._prepare(template).fill(facts)

    def with_local_policy(
        self,
        egfr_baseline_max_days: int | None = None,
        bp_max_age_days: int | None = None,
        potassium_high_default: float | None = None,
        potassium_near_limit: float | None = None,
        course_max_gap_days: int | None = None,
        course_default_span_days: int | None = None,
    ) -> Knowledge:
        """Apply the site's configured local-policy values (documented in the README)."""
        renal, bp, potassium, course = self.renal, self.blood_pressure, self.potassium, self.course
        if course_max_gap_days is not None:  # 0 is a policy too: only touching spans join
            if isinstance(course_max_gap_days, bool) or course_max_gap_days < 0:
                raise KnowledgeError(
                    f"course gap must be 0 or more days, got {course_max_gap_days}"
                )
            course = replace(course, max_gap_days=course_max_gap_days)
        if course_default_span_days is not None:
            course = replace(course, default_span_days=_positive(course_default_span_days))
        if egfr_baseline_max_days is not None:
            renal = replace(renal, baseline_max_age_days=_positive(egfr_baseline_max_days))
        if bp_max_age_days is not None:
            bp = replace(bp, max_age_days=_positive(bp_max_age_days))
        if potassium_high_default is not None:
            potassium = replace(potassium, default_high_mmol_l=_positive(potassium_high_default))
        if potassium_near_limit is not None:
            potassium = replace(potassium, near_limit_mmol_l=_not_negative(potassium_near_limit))
        return replace(self, renal=renal, blood_pressure=bp, potassium=potassium, course=course)


T = TypeVar("T")


def _positive(value: T) -> T:
    if not isinstance(value, int | float) or value <= 0:
        raise KnowledgeError(f"local policy value must be a positive number, got {value!r}")
    return value


def _not_negative(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise KnowledgeError(f"local policy value must be zero or more, got {value!r}")
    return value


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for number, row in enumerate(rows, start=2):
        for column in required:
            if not (row.get(column) or "").strip():
                raise KnowledgeError(f"{path.name} line {number}: column {column!r} is empty")
    return rows


def _section(cls: type[T], data: dict[str, Any], name: str) -> T:
    """Build a typed section dataclass, refusing missing keys and wrong types."""
    values: dict[str, Any] = {}
    for spec in fields(cls):  # type: ignore[arg-type]
        if spec.name not in data:
            raise KnowledgeError(f"rules.toml [{name}]: missing {spec.name!r}")
        value = data[spec.name]
        wanted = int if spec.type == "int" else float
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise KnowledgeError(f"rules.toml [{name}].{spec.name}: expected a number")
        if wanted is int and not isinstance(value, int):
            raise KnowledgeError(f"rules.toml [{name}].{spec.name}: expected an integer")
        values[spec.name] = wanted(value)
    return cls(**values)


def _drugs(directory: Path) -> tuple[DrugEntry, ...]:
    entries = []
    rows = _read_csv(directory / "drugs.csv", ("role", "ingredient", "terms", "source"))
    for number, row in enumerate(rows, start=2):
        if row["role"] not in DRUG_LIST_ROLES:
            raise KnowledgeError(f"drugs.csv line {number}: unknown role {row['role']!r}")
        terms = tuple(t.strip().lower() for t in row["terms"].split("|") if t.strip())
        rxnorm = tuple(c.strip() for c in (row.get("rxnorm") or "").split("|") if c.strip())
        if not all(code.isdigit() for code in rxnorm):
            raise KnowledgeError(f"drugs.csv line {number}: RxCUIs must be digits")
        entries.append(
            DrugEntry(Role(row["role"]), row["ingredient"].lower(), terms, rxnorm, row["source"])
        )
    if not any(entry.role is Role.VOCLOSPORIN for entry in entries):
        raise KnowledgeError("drugs.csv: no voclosporin row")
    return tuple(entries)


def _brands(directory: Path, ingredients: Set[str]) -> tuple[BrandEntry, ...]:
    """brands.csv: each product's ingredients must be drugs.csv ingredients; names unique."""
    entries: list[BrandEntry] = []
    rows = _read_csv(directory / "brands.csv", ("brand", "ingredients", "source"))
    for number, row in enumerate(rows, start=2):
        name = row["brand"].strip().lower()
        parts = tuple(i.strip().lower() for i in row["ingredients"].split("|") if i.strip())
        unknown = [i for i in parts if i not in ingredients]
        if unknown or not parts:
            raise KnowledgeError(
                f"brands.csv line {number}: ingredients {unknown or parts!r} of "
                f"{row['brand']!r} have no drugs.csv row"
            )
        if any(e.name == name for e in entries):
            raise KnowledgeError(f"brands.csv line {number}: {row['brand']!r} is repeated")
        exposure = (row.get("exposure") or "").strip()
        if exposure and exposure not in ROUTE_EXPOSURES:
            raise KnowledgeError(f"brands.csv line {number}: unknown exposure {exposure!r}")
        other = (row.get("other_components") or "").strip()
        entries.append(BrandEntry(name, parts, other, exposure, row["source"]))
    return tuple(entries)


def _code_systems(directory: Path) -> dict[str, str]:
    """code_systems.csv: an OID form (``urn:oid:...``) -> the FHIR URI it stands for."""
    aliases: dict[str, str] = {}
    rows = _read_csv(directory / "code_systems.csv", ("alias", "system", "source"))
    for number, row in enumerate(rows, start=2):
        alias, system = row["alias"].strip(), row["system"].strip()
        if not alias.startswith("urn:oid:") or not _absolute(system, ("http://",)):
            raise KnowledgeError(
                f"code_systems.csv line {number}: expected urn:oid:... -> http://..., "
                f"got {alias!r} -> {system!r}"
            )
        if alias in aliases:
            raise KnowledgeError(f"code_systems.csv line {number}: {alias!r} is repeated")
        aliases[alias] = system
    return aliases


def _routes(directory: Path, aliases: dict[str, str]) -> tuple[RouteEntry, ...]:
    """routes.csv: route codes and dose-form words, each with where it puts the drug."""
    entries: list[RouteEntry] = []
    rows = _read_csv(directory / "routes.csv", ("kind", "value", "exposure", "source"))
    for number, row in enumerate(rows, start=2):
        where = f"routes.csv line {number}"
        kind, exposure = row["kind"].strip(), row["exposure"].strip()
        system = (row.get("system") or "").strip()
        if kind not in ROUTE_KINDS:
            raise KnowledgeError(f"{where}: unknown kind {kind!r}")
        if exposure not in ROUTE_EXPOSURES:
            raise KnowledgeError(f"{where}: unknown exposure {exposure!r}")
        if (kind == "code") != bool(system):
            raise KnowledgeError(f"{where}: a code row needs a system, a word row none")
        value = row["value"].strip() if kind == "code" else row["value"].strip().lower()
        system = aliases.get(system, system)
        entries.append(RouteEntry(kind, system, value, exposure, row["source"]))
    return tuple(entries)


def _vaccines(directory: Path) -> dict[str, VaccineEntry]:
    vaccines: dict[str, VaccineEntry] = {}
    rows = _read_csv(directory / "vaccines.csv", ("cvx", "description", "live", "source"))
    for number, row in enumerate(rows, start=2):
        if row["live"] not in ("true", "false"):
            raise KnowledgeError(f"vaccines.csv line {number}: live must be true or false")
        cvx = normalize_cvx(row["cvx"])
        vaccines[cvx] = VaccineEntry(
            cvx, row["description"], row["live"] == "true", row.get("note") or "", row["source"]
        )
    return vaccines


K = TypeVar("K", ObservationKind, ConditionKind)


def _dose_vocabulary(directory: Path) -> DoseVocabulary:
    """Unit synonyms, timing abbreviations and day parts, each row checked and sourced."""
    units: dict[str, str] = {}
    for number, row in enumerate(
        _read_csv(directory / "dose_units.csv", ("unit", "counts", "source")), start=2
    ):
        unit, counts = row["unit"].strip().lower(), row["counts"].strip()
        if counts not in DOSE_UNIT_COUNTS or not unit or unit in units:
            raise KnowledgeError(
                f"dose_units.csv line {number}: unit {unit!r} repeated or empty, or counts "
                f"{counts!r} not one of {sorted(DOSE_UNIT_COUNTS)}"
            )
        units[unit] = counts
    parts: dict[str, str] = {}
    for number, row in enumerate(
        _read_csv(directory / "event_timing.csv", ("when", "part", "source")), start=2
    ):
        when, part = row["when"].strip().upper(), row["part"].strip()
        if part not in DAY_PARTS or not when or when in parts:
            raise KnowledgeError(
                f"event_timing.csv line {number}: {when!r} repeated or empty, or part "
                f"{part!r} not one of {list(DAY_PARTS)}"
            )
        parts[when] = part
    codes: dict[str, TimingCode] = {}
    columns = ("code", "frequency", "period", "period_unit", "source")
    for number, row in enumerate(_read_csv(directory / "timing_codes.csv", columns), start=2):
        code, when = row["code"].strip().upper(), (row.get("when") or "").strip()
        try:
            frequency, period = int(row["frequency"]), float(row["period"])
        except ValueError as exc:
            raise KnowledgeError(f"timing_codes.csv line {number}: {exc}") from exc
        if (
            not code
            or code in codes
            or frequency <= 0
            or period <= 0
            or row["period_unit"].strip() not in TIMING_PERIOD_UNITS
            or (when and when.upper() not in parts)
        ):
            raise KnowledgeError(
                f"timing_codes.csv line {number}: {code!r} repeated or empty, frequency and "
                f"period must be positive, period_unit one of {sorted(TIMING_PERIOD_UNITS)}, "
                "when an event_timing.csv code"
            )
        codes[code] = TimingCode(
            frequency, period, row["period_unit"].strip(), when or None, row["source"]
        )
    return DoseVocabulary(units=units, timing_codes=codes, day_parts=parts)


def _kind(vocabulary: type[K], path: Path, number: int, value: str) -> K:
    """The row's ``kind`` as a vocabulary member; anything else stops start-up."""
    try:
        return vocabulary(value)
    except ValueError:
        raise KnowledgeError(f"{path.name} line {number}: unknown kind {value!r}") from None


def _observation_kinds(directory: Path) -> dict[str, ObservationKind]:
    path = directory / "observations.csv"
    return {
        row["loinc"].strip(): _kind(ObservationKind, path, number, row["kind"])
        for number, row in enumerate(_read_csv(path, ("loinc", "kind", "source")), start=2)
    }


def _race_based_egfr_codes(directory: Path) -> frozenset[str]:
    """observations.csv rows marked ``race_based = true`` (empty or ``false``: race-free)."""
    path = directory / "observations.csv"
    codes = set()
    for number, row in enumerate(_read_csv(path, ("loinc", "kind", "source")), start=2):
        flag = (row.get("race_based") or "").strip()
        if flag not in ("", "true", "false"):
            raise KnowledgeError(f"{path.name} line {number}: race_based must be true or false")
        if flag == "true":
            if row["kind"] != ObservationKind.EGFR:
                raise KnowledgeError(f"{path.name} line {number}: race_based is for egfr rows")
            codes.add(row["loinc"].strip())
    return frozenset(codes)


def _condition_kinds(directory: Path) -> dict[tuple[str, str], ConditionKind]:
    path = directory / "conditions.csv"
    rows = _read_csv(path, ("system", "code", "kind", "source"))
    return {
        (row["system"].strip(), row["code"].strip()): _kind(
            ConditionKind, path, number, row["kind"]
        )
        for number, row in enumerate(rows, start=2)
    }


def _template_values(knowledge: Knowledge) -> dict[str, Any]:
    """Name -> value for every knowledge value a template may use (``{renal.baseline_low_max}``)."""
    return {
        "payer_policy_title": knowledge.payer_policy_title,
        "renal": knowledge.renal,
        "ckd_epi": knowledge.ckd_epi,
        "creatinine_umol_per_mg_dl": knowledge.creatinine_umol_per_mg_dl,
        "blood_pressure": knowledge.blood_pressure,
        "potassium": knowledge.potassium,
        "adult_from_years": knowledge.adult_from_years,
        "live_vaccine_days_before_initiation": knowledge.live_vaccine_days_before_initiation,
        "dose": knowledge.dose,
        "duration": knowledge.duration,
        "prior_authorization": knowledge.prior_authorization,
        "course": knowledge.course,
        "reinitiation": knowledge.reinitiation,
    }


def _strings(doc: dict[str, Any], where: str) -> dict[str, str]:
    if not all(isinstance(value, str) for value in doc.values()):
        raise KnowledgeError(f"{where}: every template must be a string")
    return dict(doc)


def _cards(doc: dict[str, Any], rule_ids: Set[str], values: dict[str, Any]) -> dict[str, CardText]:
    """cards.toml: one table per rule id, a ``facts`` list and named templates."""
    cards: dict[str, CardText] = {}
    for rule_id, table in doc.items():
        where = f"cards.toml [{rule_id}]"
        if rule_id not in rule_ids:
            raise KnowledgeError(f"{where}: not a rule in rules.toml [rules.*]")
        if not isinstance(table, dict):
            raise KnowledgeError(f"{where}: expected a table")
        table = dict(table)
        facts = table.pop("facts", [])
        if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
            raise KnowledgeError(f"{where}: facts must be a list of names")
        clashing = sorted(set(facts) & set(values))
        if clashing:
            raise KnowledgeError(f"{where}: facts {clashing} shadow knowledge values")
        templates = _strings(table, where)
        for name, template in templates.items():
            for problem in placeholder_problems(template, values, frozenset(facts)):
                raise KnowledgeError(f"{where} {name}: {problem}")
        unused = sorted(set(facts) - set().union(*map(used_names, templates.values())))
        if unused:
            raise KnowledgeError(f"{where}: facts {unused} are used by no template")
        cards[rule_id] = CardText(rule_id, templates, frozenset(facts))
    unworded = sorted(set(rule_ids) - set(cards))
    if unworded:
        raise KnowledgeError(f"cards.toml: no table for rules {unworded}")
    return cards


def _titled(rules: dict[str, RuleCitation], values: dict[str, Any]) -> dict[str, RuleCitation]:
    """Fill the card titles of rules.toml [rules.*] (templates over knowledge values only)."""
    for rule_id, citation in rules.items():
        for problem in placeholder_problems(citation.title, values):
            raise KnowledgeError(f"rules.toml [rules.{rule_id}] title: {problem}")
    return {
        rule_id: replace(citation, title=citation.title.format_map(values))
        for rule_id, citation in rules.items()
    }


def _payer_criteria(
    doc: dict[str, Any], values: dict[str, Any], key: str
) -> tuple[PayerCriterion, ...]:
    """prior_authorization.toml ``[[key]]``: one criteria set in card order, each of its ids once.

    ``criterion`` is the initial prior approval, ``renewal_criterion`` the renewal; each must
    hold exactly the ids of its set (``INITIATION_CRITERIA`` / ``RENEWAL_CRITERIA``).
    """
    expected = INITIATION_CRITERIA if key == "criterion" else RENEWAL_CRITERIA
    criteria = []
    for number, entry in enumerate(doc.get(key, []), start=1):
        where = f"prior_authorization.toml {key} {number}"
        missing = [
            k for k in ("id", "name", "wording", "source") if not str(entry.get(k, "")).strip()
        ]
        if missing:
            raise KnowledgeError(f"{where}: missing {', '.join(missing)}")
        try:
            criterion_id = Criterion(entry["id"])
        except ValueError:
            raise KnowledgeError(f"{where}: unknown criterion id {entry['id']!r}") from None
        for problem in placeholder_problems(str(entry["name"]), values):
            raise KnowledgeError(f"{where} ({criterion_id}) name: {problem}")
        criteria.append(
            PayerCriterion(
                criterion_id, str(entry["name"]), str(entry["source"]), str(entry["wording"])
            )
        )
    ids = [c.id for c in criteria]
    repeated = sorted({str(i) for i in ids if ids.count(i) > 1})
    absent = sorted(str(c) for c in expected - set(ids))
    foreign = sorted(str(c) for c in set(ids) - expected)
    if repeated or absent or foreign:
        raise KnowledgeError(
            f"prior_authorization.toml [[{key}]]: every criterion of the set exactly once "
            f"(repeated {repeated}, missing {absent}, not of this set {foreign})"
        )
    return tuple(criteria)


def _absolute(url: str, schemes: tuple[str, ...]) -> bool:
    return any(url.startswith(scheme) and len(url) > len(scheme) for scheme in schemes)


def _link(entry: dict[str, Any], where: str, label_url: str) -> LabelLink | None:
    """``link_label`` (and ``link_url``, default the [label] url): the card's label link."""
    label, url = entry.get("link_label"), entry.get("link_url", label_url)
    if label is None:
        if "link_url" in entry:
            raise KnowledgeError(f"{where}: link_url without link_label")
        return None
    if not isinstance(label, str) or not label.strip():
        raise KnowledgeError(f"{where}: link_label must be a non-empty string")
    if not isinstance(url, str) or not _absolute(url, ("https://",)):
        raise KnowledgeError(f"{where}: link_url must be an absolute https URL, got {url!r}")
    return LabelLink(label.strip(), url)


def _override_reasons(doc: dict[str, Any]) -> tuple[OverrideReason, ...]:
    """override_reasons.toml: each reason with its own system, a code and a display."""
    reasons = []
    for number, entry in enumerate(doc.get("reason", []), start=1):
        where = f"override_reasons.toml reason {number}"
        values = {key: entry.get(key) for key in ("system", "code", "display")}
        missing = [k for k, v in values.items() if not isinstance(v, str) or not v.strip()]
        if missing:
            raise KnowledgeError(f"{where}: missing {', '.join(missing)}")
        system = str(values["system"])
        if not _absolute(system, ("http://", "https://", "urn:")):
            raise KnowledgeError(f"{where}: system {system!r} is not an absolute URI")
        reasons.append(OverrideReason(system, str(values["code"]), str(values["display"])))
    if not reasons:
        raise KnowledgeError("override_reasons.toml: no reasons")
    keys = [(r.system, r.code) for r in reasons]
    repeated = sorted({f"{s}|{c}" for s, c in keys if keys.count((s, c)) > 1})
    if repeated:
        raise KnowledgeError(f"override_reasons.toml: repeated system|code {repeated}")
    return tuple(reasons)


def normalize_cvx(code: str) -> str:
    """CVX codes arrive as "03" or "3": compare them without leading zeros."""
    stripped = code.strip().lstrip("0")
    return stripped or "0"


def _digest(directory: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.is_file():
            sha.update(path.name.encode())
            sha.update(path.read_bytes())
    return sha.hexdigest()


def load_knowledge(directory: Path = DATA_DIR) -> Knowledge:
    """Read every data file, validate it and return the knowledge base."""
    try:
        rules_doc = tomllib.loads((directory / "rules.toml").read_text(encoding="utf-8"))
        reasons_doc = tomllib.loads((directory / "override_reasons.toml").read_text("utf-8"))
        cards_doc = tomllib.loads((directory / "cards.toml").read_text(encoding="utf-8"))
        payer_doc = tomllib.loads((directory / "prior_authorization.toml").read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise KnowledgeError(f"cannot read knowledge TOML in {directory}: {exc}") from exc
    try:
        knowledge = _build(directory, rules_doc, reasons_doc)
        values = _template_values(knowledge)
        return replace(
            knowledge,
            rules=_titled(knowledge.rules, values),
            cards=_cards(cards_doc, knowledge.rules.keys(), values),
            payer_criteria=_payer_criteria(payer_doc, values, "criterion"),
            payer_renewal_criteria=_payer_criteria(payer_doc, values, "renewal_criterion"),
        )
    except KeyError as exc:
        raise KnowledgeError(f"knowledge data in {directory}: missing key {exc}") from exc
    except OSError as exc:
        raise KnowledgeError(f"cannot read knowledge data in {directory}: {exc}") from exc


def _build(directory: Path, rules_doc: dict[str, Any], reasons_doc: dict[str, Any]) -> Knowledge:
    ndc_rows = _read_csv(directory / "ndc.csv", ("ndc_prefix", "ingredient", "source"))
    live_terms = _read_csv(directory / "live_vaccine_terms.csv", ("term", "source"))
    creatinine = rules_doc["creatinine"]
    label_url = str(rules_doc["label"]["url"])
    citations = {
        rule_id: RuleCitation(
            rule_id,
            str(entry["title"]),
            str(entry["section"]),
            _link(entry, f"rules.toml [rules.{rule_id}]", label_url),
        )
        for rule_id, entry in rules_doc["rules"].items()
    }
    reasons = _override_reasons(reasons_doc)
    drugs = _drugs(directory)
    ingredients = {entry.ingredient for entry in drugs}
    aliases = _code_systems(directory)
    for number, row in enumerate(ndc_rows, start=2):
        if row["ingredient"].strip().lower() not in ingredients:
            raise KnowledgeError(
                f"ndc.csv line {number}: ingredient {row['ingredient']!r} has no drugs.csv row"
            )
    return Knowledge(
        version=str(rules_doc["version"]),
        digest=_digest(directory),
        label_url=label_url,
        payer_policy_title=str(rules_doc["payer_policy"]["title"]),
        drugs=drugs,
        ndc_prefixes={
            row["ndc_prefix"].strip(): row["ingredient"].strip().lower() for row in ndc_rows
        },
        vaccines=_vaccines(directory),
        live_vaccine_terms=tuple(row["term"].strip().lower() for row in live_terms),
        observation_kinds=_observation_kinds(directory),
        condition_kinds=_condition_kinds(directory),
        renal=_section(Renal, rules_doc["renal"], "renal"),
        ckd_epi=_section(CkdEpi2021, creatinine["ckd_epi_2021"], "creatinine.ckd_epi_2021"),
        creatinine_umol_per_mg_dl=float(creatinine["umol_per_mg_dl"]),
        blood_pressure=_section(BloodPressureLimits, rules_doc["blood_pressure"], "blood_pressure"),
        potassium=_section(PotassiumLimits, rules_doc["potassium"], "potassium"),
        adult_from_years=int(rules_doc["age"]["adult_from_years"]),
        live_vaccine_days_before_initiation=int(
            rules_doc["live_vaccine"]["days_before_initiation"]
        ),
        dose=_section(DoseRules, rules_doc["dose"], "dose"),
        dose_vocabulary=_dose_vocabulary(directory),
        duration=_section(DurationRules, rules_doc["duration"], "duration"),
        prior_authorization=_section(
            PriorAuthorizationLimits, rules_doc["prior_authorization"], "prior_authorization"
        ),
        course=_section(CourseRules, rules_doc["course"], "course"),
        reinitiation=_section(ReinitiationRules, rules_doc["reinitiation"], "reinitiation"),
        rules=citations,
        override_reasons=reasons,
        cards={},  # filled by load_knowledge once the values templates may name exist
        payer_criteria=(),
        brands=_brands(directory, ingredients),
        ndc_names={
            row["ndc_prefix"].strip(): row["name"].strip()
            for row in ndc_rows
            if (row.get("name") or "").strip()
        },
        code_system_aliases=aliases,
        routes=_routes(directory, aliases),
        race_based_egfr_codes=_race_based_egfr_codes(directory),
    )
