"""Code systems and terminology matching (RxNorm, NDC, CVX, LOINC, SNOMED CT, ICD-10-CM).

RxNorm SCD codes are product-level and the voclosporin RxCUI is unverified, so medications are
matched by every means at once: verified ingredient/product RxCUIs, the LUPKYNIS NDC, CVX for
vaccines, and ingredient or brand names found as whole words in displays and text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from fhir_mappings.knowledge import Knowledge, normalize_cvx
from fhir_mappings.vocabulary import ConditionKind, ObservationKind, Role

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"
CVX = "http://hl7.org/fhir/sid/cvx"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"

# Names that mean lupus nephritis when a Condition carries only text (payer policy wording).
LUPUS_NEPHRITIS_TEXT = re.compile(r"\blupus\s+nephritis\b|\bsle\s+glomerulonephritis\b", re.I)


MATCH_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Coding:
    system: str
    code: str
    display: str = ""


@dataclass(frozen=True)
class MedicationMatch:
    ingredients: frozenset[str]
    roles: frozenset[Role]

    @property
    def is_live_vaccine(self) -> bool:
        return Role.LIVE_VACCINE in self.roles


def _word_pattern(terms: Iterable[str]) -> re.Pattern[str]:
    """One alternation of whole-word terms, longest first so 'levoketoconazole' wins."""
    escaped = sorted({re.escape(t) for t in terms}, key=len, reverse=True)
    return re.compile(r"(?<![a-z0-9])(" + "|".join(escaped) + r")(?![a-z0-9])")


def normalize_ndc(code: str) -> tuple[int, int] | None:
    """Return (labeler, product) of an NDC in 5-4-2 (11 digit) or hyphenated form."""
    code = code.strip()
    if "-" in code:
        parts = code.split("-")
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            return int(parts[0]), int(parts[1])
        return None
    if len(code) == 11 and code.isdigit():
        return int(code[:5]), int(code[5:9])
    return None


class Terminology:
    """Matchers built once from the knowledge base; pure and thread-safe afterwards."""

    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge
        self._by_term: dict[str, list[tuple[str, Role]]] = {}
        self._by_rxcui: dict[str, list[tuple[str, Role]]] = {}
        # An NDC names a product's ingredient; the ingredient's rows give its roles.
        self._by_ingredient: dict[str, list[tuple[str, Role]]] = {}
        for entry in knowledge.drugs:
            self._by_ingredient.setdefault(entry.ingredient, []).append(
                (entry.ingredient, entry.role)
            )
            for term in entry.terms:
                self._by_term.setdefault(term, []).append((entry.ingredient, entry.role))
            for code in entry.rxnorm:
                self._by_rxcui.setdefault(code, []).append((entry.ingredient, entry.role))
        self._drug_pattern = _word_pattern(self._by_term)
        self._live_pattern = _word_pattern(knowledge.live_vaccine_terms)
        self._matches: dict[tuple[tuple[Coding, ...], tuple[str, ...]], MedicationMatch] = {}
        self._ndc = {
            parsed: ingredient
            for prefix, ingredient in knowledge.ndc_prefixes.items()
            if (parsed := normalize_ndc(prefix)) is not None
        }

    def match_medication(self, codings: Iterable[Coding], texts: Iterable[str]) -> MedicationMatch:
        """Find the ingredients and roles a medication concept carries (memoized: order lists
        repeat the same few hundred products, and matching is a pure function of the concept)."""
        key = (tuple(codings), tuple(texts))
        match = self._matches.get(key)
        if match is None:
            match = self._match(*key)
            if len(self._matches) >= MATCH_CACHE_SIZE:
                self._matches.clear()
            self._matches[key] = match
        return match

    def _match(self, codings: tuple[Coding, ...], texts: tuple[str, ...]) -> MedicationMatch:
        pairs: set[tuple[str, Role]] = set()
        live_cvx = False
        known_cvx = False
        all_texts = list(texts)
        for coding in codings:
            if coding.display:
                all_texts.append(coding.display)
            if coding.system == RXNORM:
                pairs.update(self._by_rxcui.get(coding.code, ()))
            elif coding.system == NDC:
                ingredient = self._ndc.get(normalize_ndc(coding.code) or (-1, -1))
                if ingredient:
                    pairs.update(self._by_ingredient.get(ingredient, ()))
            elif coding.system == CVX:
                vaccine = self.knowledge.vaccines.get(normalize_cvx(coding.code))
                known_cvx = known_cvx or vaccine is not None
                if vaccine and vaccine.live:
                    live_cvx = True
        for text in all_texts:
            lowered = text.lower()
            for term in self._drug_pattern.findall(lowered):
                pairs.update(self._by_term[term])
        roles = {role for _, role in pairs}
        # A CVX code in the reviewed list decides (CVX 206 JYNNEOS says "live" in its name but
        # is non-replicating: not flagged); names decide only when no listed CVX code is sent.
        if live_cvx or (
            not known_cvx and any(self._live_pattern.search(t.lower()) for t in all_texts)
        ):
            roles.add(Role.LIVE_VACCINE)
        return MedicationMatch(
            ingredients=frozenset(ingredient for ingredient, _ in pairs),
            roles=frozenset(roles),
        )

    def observation_match(self, codings: Iterable[Coding]) -> tuple[ObservationKind, str] | None:
        """(kind, LOINC code) of the first coding the knowledge knows."""
        for coding in codings:
            if coding.system == LOINC and coding.code in self.knowledge.observation_kinds:
                return self.knowledge.observation_kinds[coding.code], coding.code
        return None

    def observation_kind(self, codings: Iterable[Coding]) -> ObservationKind | None:
        match = self.observation_match(codings)
        return match[0] if match else None

    def condition_kinds(
        self, codings: Iterable[Coding], texts: Iterable[str]
    ) -> frozenset[ConditionKind]:
        kinds = {
            kind
            for coding in codings
            if (kind := self.knowledge.condition_kinds.get((coding.system, coding.code)))
        }
        if any(LUPUS_NEPHRITIS_TEXT.search(t) for t in texts):
            kinds.add(ConditionKind.LUPUS_NEPHRITIS)
        return frozenset(kinds)
