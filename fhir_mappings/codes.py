"""Code systems and terminology matching (RxNorm, NDC, CVX, LOINC, SNOMED CT, ICD-10-CM).

RxNorm SCD codes are product-level and the voclosporin RxCUI is unverified, so medications are
matched by every means at once: verified ingredient/product RxCUIs, the LUPKYNIS NDC, CVX for
vaccines, and ingredient, brand or combination-product names (drugs.csv, brands.csv) found as
whole words in displays and text. Names are compared as EHRs write them (knowledge "Decisions,
second round": names as EHRs write them): after Unicode normalisation, a name may touch a
strength glued to it ("LUPKYNIS7.9MG"), and voclosporin's own names also match with one wrong
letter. Code systems are compared after their OID aliases (code_systems.csv) are mapped to the
FHIR URIs. Route and dose form (routes.csv) say whether a product is systemic at all.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

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


# The memos of match_medication and exposure are bounded by entries and by characters (issue 13:
# 60 distinct 4.5 MB order texts grew the process by 301 MB): concepts longer than
# MATCH_CACHE_MAX_KEY_CHARS are matched every time and never kept; the kept keys of both memos
# total at most MATCH_CACHE_MAX_CHARS.
MATCH_CACHE_SIZE = 4096
MATCH_CACHE_MAX_KEY_CHARS = 2048
MATCH_CACHE_MAX_CHARS = 2_000_000

# Medication.exposure values: only a product read as non-systemic (a cutaneous, ophthalmic or
# otic route or dose form, routes.csv) is spared the systemic interaction rules.
SYSTEMIC = "systemic"
NON_SYSTEMIC = "non-systemic"
UNKNOWN = "unknown"

# Voclosporin's own names also match with one wrong letter, on whole words this long or longer
# (knowledge "names as EHRs write them"); shorter words are too easily another word.
NEAR_MATCH_MIN_LENGTH = 6

# Typographic characters EHRs and word processors put in names, and what they stand for.
_TYPOGRAPHIC = str.maketrans(
    {
        "\u2018": "'",  # left single quotation mark
        "\u2019": "'",  # right single quotation mark (the typographic apostrophe)
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",  # prime
        "\u02bc": "'",  # modifier letter apostrophe
        "\u00b4": "'",  # acute accent used as an apostrophe
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2033": '"',
        "\u2010": "-",  # hyphen
        "\u2011": "-",  # non-breaking hyphen
        "\u2012": "-",  # figure dash
        "\u2013": "-",  # en dash
        "\u2014": "-",  # em dash
        "\u2015": "-",  # horizontal bar
        "\u2212": "-",  # minus sign
        "\u00ad": None,  # soft hyphen: invisible, drop it
        "\u200b": None,  # zero-width space
    }
)
_SPACES = re.compile(r"\s{2,}|[\t\n\r\f\v]")  # runs of blanks, tabs, newlines: one space
_WORD = re.compile(r"[a-z]+")


def normalize_text(text: str) -> str:
    """A name as it is compared: NFKC, plain quotes and dashes, case-folded, blanks single.

    Strengths glued to words ("LUPKYNIS7.9MG") are handled by the match patterns (a name ends
    where the letters end, _word_pattern), not by rewriting the text: rewriting costs seconds
    on the multi-megabyte texts a hostile or broken client can send (issue 13).
    """
    if text.isascii():  # the common ASCII text skips the (per-character) translation
        folded = text.lower()
    else:
        folded = unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHIC).casefold()
    if "`" in folded:
        folded = folded.replace("`", "'")
    if _SPACES.search(folded):
        folded = _SPACES.sub(" ", folded)
    return folded.strip()


def within_one_edit(word: str, target: str) -> bool:
    """``word`` and ``target`` differ by at most one substituted, missing or extra letter."""
    if word == target:
        return True
    if abs(len(word) - len(target)) > 1:
        return False
    if len(word) == len(target):
        return sum(a != b for a, b in zip(word, target, strict=True)) == 1
    shorter, longer = sorted((word, target), key=len)
    return any(longer[:i] + longer[i + 1 :] == shorter for i in range(len(longer)))


class Coding(NamedTuple):
    """One coding as the matchers read it (a NamedTuple: the memos hash a tuple of them, and
    every order and condition of a chart builds some; issue 14)."""

    system: str
    code: str
    display: str = ""


# A medication concept as the memos key it: its codings and its texts.
_ConceptKey = tuple[tuple["Coding", ...], tuple[str, ...]]


@dataclass(frozen=True)
class MedicationMatch:
    ingredients: frozenset[str]
    roles: frozenset[Role]
    # The knowledge's name for a concept that carried no text (an NDC-only order): ndc.csv
    # ``name``, else the matched drugs.csv ingredient.
    product_name: str | None = None
    # The text read as voclosporin only because it is one letter off its names (said on cards).
    near_match_text: str | None = None

    @property
    def is_live_vaccine(self) -> bool:
        return Role.LIVE_VACCINE in self.roles


def _word_pattern(terms: Iterable[str]) -> re.Pattern[str]:
    """One alternation of whole-word terms, longest first so 'levoketoconazole' wins.

    A term that starts or ends with a letter may touch digits there ("LUPKYNIS7.9MG",
    "ketoconazole200mg": strengths glued to words), never other letters ("tacrolimusoid"); a
    term that starts or ends with a digit ("acam2000") touches neither.
    """

    def bounded(term: str) -> str:
        before = r"(?<![0-9])" if term[:1].isdigit() else ""
        after = r"(?![0-9])" if term[-1:].isdigit() else ""
        return before + re.escape(term) + after

    ordered = sorted(set(terms), key=len, reverse=True)
    # One shared letter boundary keeps the alternation fast (a lookbehind per term is 100x
    # slower on megabyte texts); digit-edged terms add their own digit boundary.
    return re.compile(r"(?<![a-z])(" + "|".join(bounded(t) for t in ordered) + r")(?![a-z])")


# NDC segment lengths (FDA): labeler-product-package as 4-4-2, 5-3-2 or 5-4-1 (10 digits) and
# 5-4-2 (the 11-digit billing form); product NDCs (no package) as 4-4, 5-3 or 5-4.
_NDC_SHAPES = frozenset({(4, 4, 2), (5, 3, 2), (5, 4, 1), (5, 4, 2), (4, 4), (5, 3), (5, 4)})


def normalize_ndc(code: str) -> tuple[int, int] | None:
    """(labeler, product) of an NDC: hyphenated 10-digit (4-4-2, 5-3-2, 5-4-1), 11-digit (5-4-2,
    with or without hyphens) or a product NDC; None for anything else (a 10-digit NDC without
    hyphens is ambiguous: its segments cannot be told apart)."""
    code = code.strip()
    if "-" in code:
        parts = code.split("-")
        if not all(p.isdigit() for p in parts) or tuple(map(len, parts)) not in _NDC_SHAPES:
            return None
        return int(parts[0]), int(parts[1])
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
        # A brand or combination product (brands.csv) carries every role of its ingredients.
        for brand in knowledge.brands:
            for ingredient in brand.ingredients:
                self._by_term.setdefault(brand.name, []).extend(
                    self._by_ingredient.get(ingredient, ())
                )
        self._by_term = {normalize_text(t): v for t, v in self._by_term.items()}
        self._drug_pattern = _word_pattern(self._by_term)
        self._live_pattern = _word_pattern(map(normalize_text, knowledge.live_vaccine_terms))
        # Voclosporin's own names (drugs.csv voclosporin row), for the one-letter tolerance.
        self._voclosporin_names = tuple(
            normalize_text(term)
            for entry in knowledge.drugs
            if entry.role is Role.VOCLOSPORIN
            for term in entry.terms
            if len(term) >= NEAR_MATCH_MIN_LENGTH and _WORD.fullmatch(term)
        )
        self._voclosporin_pairs = tuple(
            pair
            for entry in knowledge.drugs
            if entry.role is Role.VOCLOSPORIN
            for pair in self._by_ingredient.get(entry.ingredient, ())
        )
        # Only whole words one letter shorter or longer than a name can be one edit away.
        lengths = [len(n) for n in self._voclosporin_names] or [NEAR_MATCH_MIN_LENGTH]
        shortest = max(NEAR_MATCH_MIN_LENGTH, min(lengths) - 1)
        self._near_words = re.compile(rf"(?<![a-z])[a-z]{{{shortest},{max(lengths) + 1}}}(?![a-z])")
        # Every whole word of every known name: such a word is another drug, never a near match.
        self._known_words = frozenset(w for t in self._by_term for w in _WORD.findall(t))
        # Memos of match_medication and exposure, sharing one bound (issue 13).
        self._matches: dict[_ConceptKey, MedicationMatch] = {}
        self._exposures: dict[_ConceptKey, tuple[str, str | None]] = {}
        self._cached_chars = 0
        self._ndc = {
            parsed: ingredient
            for prefix, ingredient in knowledge.ndc_prefixes.items()
            if (parsed := normalize_ndc(prefix)) is not None
        }
        self._ndc_names = {
            parsed: name
            for prefix, name in knowledge.ndc_names.items()
            if (parsed := normalize_ndc(prefix)) is not None
        }
        self._systems = dict(knowledge.code_system_aliases)
        # (kind, LOINC code) of every code observations.csv knows, made once.
        self._observation_codes = {
            code: (kind, code) for code, kind in knowledge.observation_kinds.items()
        }
        # Every system string read as LOINC as sent (the URI and its OID aliases): the pass over
        # a chart's Observations decides most codings with one set look-up (issue 14).
        self._loinc_systems = frozenset(
            {LOINC, *(a for a, uri in self._systems.items() if uri == LOINC and a == a.strip())}
        )
        # Route and dose form (routes.csv; brands.csv ``exposure`` for one-route products).
        self._route_codes = {
            (r.system, r.value): r.exposure for r in knowledge.routes if r.kind == "code"
        }
        self._route_words: dict[str, set[str]] = {}
        for r in knowledge.routes:
            if r.kind == "word":
                self._route_words.setdefault(normalize_text(r.value), set()).add(r.exposure)
        for brand in knowledge.brands:
            if brand.exposure:
                self._route_words.setdefault(normalize_text(brand.name), set()).add(brand.exposure)
        self._route_pattern = _word_pattern(self._route_words)

    def system(self, coding: Coding) -> str:
        """The FHIR URI of a coding's system, its OID form (``urn:oid:...``) mapped too."""
        system = coding.system.strip()
        return self._systems.get(system, system)

    def match_medication(self, codings: Iterable[Coding], texts: Iterable[str]) -> MedicationMatch:
        """Find the ingredients and roles a medication concept carries (memoized: order lists
        repeat the same few hundred products, and matching is a pure function of the concept)."""
        key = (tuple(codings), tuple(texts))
        match = self._matches.get(key)
        if match is None:
            match = self._match(*key)
            if self._room_for(key):
                self._matches[key] = match
        return match

    def _room_for(self, key: _ConceptKey) -> bool:
        """Whether a memo may keep ``key``, making room when the memos are full; the memos
        keep at most MATCH_CACHE_SIZE entries each and MATCH_CACHE_MAX_CHARS key characters."""
        size = sum(len(t) for t in key[1]) + sum(
            len(c.system) + len(c.code) + len(c.display) for c in key[0]
        )
        if size > MATCH_CACHE_MAX_KEY_CHARS:
            return False  # a huge concept is rare: match it again rather than keep it
        if (
            len(self._matches) >= MATCH_CACHE_SIZE
            or len(self._exposures) >= MATCH_CACHE_SIZE
            or self._cached_chars + size > MATCH_CACHE_MAX_CHARS
        ):
            self._matches.clear()
            self._exposures.clear()
            self._cached_chars = 0
        self._cached_chars += size
        return True

    @property
    def cached_chars(self) -> int:
        """Characters held by the match memo's keys (bounded by MATCH_CACHE_MAX_CHARS)."""
        return self._cached_chars

    def _match(self, codings: tuple[Coding, ...], texts: tuple[str, ...]) -> MedicationMatch:
        pairs: set[tuple[str, Role]] = set()
        live_cvx = False
        known_cvx = False
        product_name: str | None = None
        all_texts = list(texts)
        for coding in codings:
            if coding.display:
                all_texts.append(coding.display)
            system = self.system(coding)
            if system == RXNORM:
                pairs.update(self._by_rxcui.get(coding.code.strip(), ()))
            elif system == NDC:
                product = normalize_ndc(coding.code) or (-1, -1)
                ingredient = self._ndc.get(product)
                if ingredient:
                    pairs.update(self._by_ingredient.get(ingredient, ()))
                    product_name = product_name or self._ndc_names.get(product)
            elif system == CVX:
                vaccine = self.knowledge.vaccines.get(normalize_cvx(coding.code))
                known_cvx = known_cvx or vaccine is not None
                if vaccine is not None:
                    # A code-only vaccine order is shown by its CVX description ("MMR", CVX 03).
                    product_name = (
                        product_name or f"{vaccine.description} (CVX {coding.code.strip()})"
                    )
                if vaccine and vaccine.live:
                    live_cvx = True
        normalized = [normalize_text(t) for t in all_texts]
        for text in normalized:
            for term in self._drug_pattern.findall(text):
                pairs.update(self._by_term[term])
        near = None
        if not any(role is Role.VOCLOSPORIN for _, role in pairs):
            near = self._near_voclosporin(zip(all_texts, normalized, strict=True))
            if near is not None:
                pairs.update(self._voclosporin_pairs)
        roles = {role for _, role in pairs}
        # A CVX code in the reviewed list decides (CVX 206 JYNNEOS says "live" in its name but
        # is non-replicating: not flagged); names decide only when no listed CVX code is sent.
        if live_cvx or (not known_cvx and any(self._live_pattern.search(t) for t in normalized)):
            roles.add(Role.LIVE_VACCINE)
        ingredients = frozenset(ingredient for ingredient, _ in pairs)
        if product_name is None and len(ingredients) == 1:
            product_name = next(iter(ingredients))
        return MedicationMatch(
            ingredients=ingredients,
            roles=frozenset(roles),
            product_name=product_name,
            near_match_text=near,
        )

    def _near_voclosporin(self, texts: Iterable[tuple[str, str]]) -> str | None:
        """The first text with a whole word one letter off a voclosporin name (or None).

        Only voclosporin's own names, only words of at least NEAR_MATCH_MIN_LENGTH letters, and
        never a word that is itself part of a known drug name (knowledge "names as EHRs write
        them"): a misspelt LUPKYNIS must not pass unseen, but no other drug is guessed at.
        """
        for text, normalized in texts:
            for word in self._near_words.findall(normalized):
                if word in self._known_words:
                    continue
                if any(within_one_edit(word, name) for name in self._voclosporin_names):
                    return text
        return None

    def exposure(self, codings: Iterable[Coding], texts: Iterable[str]) -> tuple[str, str | None]:
        """(exposure, site) of a product from its route and form codings and its texts.

        exposure is SYSTEMIC, NON_SYSTEMIC or UNKNOWN; site names the non-systemic route
        (cutaneous, ophthalmic, otic). Any systemic sign wins, and no sign at all is unknown:
        both fire the interaction rules (knowledge "route and dose form": unknown fires).
        Memoized like ``match_medication``: a chart's orders repeat the same products.
        """
        key = (tuple(codings), tuple(texts))
        exposure = self._exposures.get(key)
        if exposure is None:
            exposure = self._exposure(*key)
            if self._room_for(key):
                self._exposures[key] = exposure
        return exposure

    def _exposure(
        self, codings: tuple[Coding, ...], texts: tuple[str, ...]
    ) -> tuple[str, str | None]:
        found: set[str] = set()
        for coding in codings:
            exposure = self._route_codes.get((self.system(coding), coding.code.strip()))
            if exposure:
                found.add(exposure)
            if coding.display:
                texts = (*texts, coding.display)
        for text in texts:
            for term in self._route_pattern.findall(normalize_text(text)):
                found |= self._route_words[term]
        if not found:
            return UNKNOWN, None
        if SYSTEMIC in found:
            return SYSTEMIC, None
        if found & {"ophthalmic", "otic"}:
            found.discard("cutaneous")  # an eye or ear ointment/gel is read by its site
        return NON_SYSTEMIC, ", ".join(sorted(found))

    def observation_match(self, codings: Iterable[Coding]) -> tuple[ObservationKind, str] | None:
        """(kind, LOINC code) of the first coding the knowledge knows."""
        for coding in codings:
            if self.system(coding) == LOINC and coding.code in self.knowledge.observation_kinds:
                return self.knowledge.observation_kinds[coding.code], coding.code
        return None

    def observation_match_concept(self, concept: Any) -> tuple[ObservationKind, str] | None:
        """``observation_match`` over a raw CodeableConcept, without building Codings: the one
        pass over a chart's Observations runs this for every result (issue 14)."""
        if not isinstance(concept, dict):
            return None
        coding_list = concept.get("coding")
        if not isinstance(coding_list, list):
            return None
        table = self._observation_codes
        for c in coding_list:
            try:
                match = table.get(c.get("code"))
            except (AttributeError, TypeError):  # a coding that is no object, a code unhashable
                continue
            if match is None:
                continue
            system = c.get("system")
            if isinstance(system, str) and system in self._loinc_systems:
                return match
            if self._is_loinc(system):
                return match
        return None

    def _is_loinc(self, system: Any) -> bool:
        """A system sent in another spelling (blanks around it) that still names LOINC."""
        text = str(system or "").strip()
        return self._systems.get(text, text) == LOINC

    def observation_kind(self, codings: Iterable[Coding]) -> ObservationKind | None:
        match = self.observation_match(codings)
        return match[0] if match else None

    def condition_kinds(
        self, codings: Iterable[Coding], texts: Iterable[str]
    ) -> frozenset[ConditionKind]:
        kinds = {
            kind
            for coding in codings
            if (kind := self.knowledge.condition_kinds.get((self.system(coding), coding.code)))
        }
        if any(LUPUS_NEPHRITIS_TEXT.search(t) for t in texts):
            kinds.add(ConditionKind.LUPUS_NEPHRITIS)
        return frozenset(kinds)
