"""Condition, Immunization and AllergyIntolerance -> the history facts the rules read."""

from __future__ import annotations

import re
from collections.abc import Iterable

from fhir_mappings.codes import CVX
from fhir_mappings.facts import Allergy, Condition, Immunization
from fhir_mappings.mapper import Mapper
from fhir_mappings.readers import (
    Resource,
    as_code,
    as_list,
    codings,
    codings_and_texts,
    concept_name,
    concept_texts,
    parse_datetime,
    status_code,
)
from fhir_mappings.references import reference_of
from fhir_mappings.selection import Result
from fhir_mappings.vocabulary import ConditionKind, Role

_UNUSABLE_VERIFICATION = frozenset({"refuted", "entered-in-error"})
_INACTIVE_CLINICAL = frozenset({"inactive", "resolved", "remission"})
# Observation statuses whose answer is no result (FHIR R4 Observation.status).
_UNUSABLE_OBSERVATION = frozenset({"entered-in-error", "cancelled", "registered"})
# "Child-Pugh B", "Child-Turcotte-Pugh class C", "Child Pugh grade A" (any dash), or a bare
# "class C" on a hepatic condition (the decisions table: class from the condition's text/stage).
_DASH = r"[\s\-\u2010-\u2015]*"
CHILD_PUGH_TEXT = re.compile(
    rf"\bchild{_DASH}(?:turcotte{_DASH})?pugh\b[\s:,\-\u2010-\u2015]*"
    r"(?:(?:class|grade|score)\s*)?([abc])\b"
    r"|\bclass\s*([abc])\b",
    re.IGNORECASE,
)


def child_pugh_class(texts: Iterable[str]) -> str | None:
    """The Child-Pugh class a text states ("A", "B" or "C"); None when none or they disagree.

    Two texts naming different classes are not resolved by guessing: the class is then unknown
    and the rule asks for it.
    """
    found = {
        (match.group(1) or match.group(2)).upper()
        for text in texts
        for match in CHILD_PUGH_TEXT.finditer(text)
    }
    return found.pop() if len(found) == 1 else None


def condition(mapper: Mapper, resource: Resource) -> Condition | None:
    """A Condition and the kinds it matched; None when it was refuted or entered in error."""
    status = status_code(resource.get("clinicalStatus"))
    verification = status_code(resource.get("verificationStatus"))
    if verification in _UNUSABLE_VERIFICATION:
        return None
    concept = resource.get("code")
    concept_codings, texts = codings_and_texts(concept)
    kinds = mapper.terminology.condition_kinds(concept_codings, texts)
    pugh = None
    if ConditionKind.HEPATIC_IMPAIRMENT in kinds:  # only a hepatic condition's stages are read
        stages = [
            text
            for stage in as_list(resource.get("stage"))
            if isinstance(stage, dict)
            for text in concept_texts(stage.get("summary")) + concept_texts(stage.get("type"))
        ]
        pugh = child_pugh_class([*texts, *stages])
    return Condition(
        reference=reference_of(resource),
        name=texts[0] if texts else "(unnamed)",  # concept_name
        kinds=kinds,
        clinical_status=status,
        child_pugh_class=pugh,
        observed_on=None,
    )


def status_answer(mapper: Mapper, result: Result) -> Condition | None:
    """What a coded status Observation (pregnancy, breastfeeding) answers, as a Condition.

    The answer (valueCodeableConcept) is matched against ``conditions.csv``; an answer the data
    does not know gives no kinds (nothing is concluded from it). None for a result that is no
    result (entered in error, cancelled, registered, or no coded answer at all).
    """
    resource = result.resource
    answer = resource.get("valueCodeableConcept")
    if as_code(resource.get("status")) in _UNUSABLE_OBSERVATION or not isinstance(answer, dict):
        return None  # no answer at all (dataAbsentReason, another value type): no result
    kinds = mapper.terminology.condition_kinds(codings(answer), ())
    code_name = concept_name(resource.get("code"))
    return Condition(
        reference_of(resource),
        f"{code_name}: {concept_name(answer)}",
        kinds,
        None,
        observed_on=result.when,
    )


def immunization(mapper: Mapper, resource: Resource) -> Immunization | None:
    """A given immunization (live or not); None when not done or entered in error."""
    status = resource.get("status")
    if status in ("not-done", "entered-in-error"):
        return None
    concept = resource.get("vaccineCode")
    match = mapper.terminology.match_medication(codings(concept), concept_texts(concept))
    return Immunization(
        reference=reference_of(resource),
        name=concept_name(concept),
        cvx_codes=tuple(c.code for c in codings(concept) if mapper.terminology.system(c) == CVX),
        live=match.is_live_vaccine,
        when=parse_datetime(resource.get("occurrenceDateTime"))
        or parse_datetime(resource.get("recorded")),
        status=status if isinstance(status, str) else None,
    )


def allergy(mapper: Mapper, resource: Resource) -> Allergy | None:
    """An allergy and whether it is to voclosporin; None when refuted or no longer active."""
    clinical = status_code(resource.get("clinicalStatus"))
    verification = status_code(resource.get("verificationStatus"))
    if verification in _UNUSABLE_VERIFICATION or clinical in _INACTIVE_CLINICAL:
        return None
    texts = concept_texts(resource.get("code"))
    severities: list[str] = []
    reactions: list[str] = []
    for reaction in as_list(resource.get("reaction")):
        if not isinstance(reaction, dict):
            continue
        texts += concept_texts(reaction.get("substance"))
        if isinstance(reaction.get("severity"), str):
            severities.append(reaction["severity"])
        # PI 5.8 / decision "allergy severity": the card names the reaction it weighed.
        named = [concept_name(m) for m in as_list(reaction.get("manifestation")) if m]
        description = reaction.get("description")
        if not named and isinstance(description, str) and description.strip():
            named = [description.strip()]
        reactions += named
    match = mapper.terminology.match_medication(codings(resource.get("code")), texts)
    criticality = resource.get("criticality")
    kind = resource.get("type")
    return Allergy(
        reference=reference_of(resource),
        substance=([*texts, "(unnamed substance)"])[0],
        to_voclosporin=Role.VOCLOSPORIN in match.roles,
        criticality=criticality if isinstance(criticality, str) else None,
        severities=tuple(severities),
        verification=verification,
        clinical_status=clinical,
        kind=kind if isinstance(kind, str) else None,
        reactions=tuple(dict.fromkeys(reactions)),
    )


def latest_status_answers(mapper: Mapper, results: Iterable[Result]) -> list[Condition]:
    """The latest readable answer of each status kind (pregnancy, breastfeeding), oldest first.

    A newer answer supersedes an older one ("not pregnant" last month after "pregnant" last year);
    an answer the data does not know is reported as unreadable and the next older one is read.
    """
    by_kind: dict[str, list[Result]] = {}
    for result in results:
        by_kind.setdefault(result.kind, []).append(result)
    answers = []
    for kind_results in by_kind.values():
        for result in sorted(kind_results, key=lambda r: r.when, reverse=True):
            answer = status_answer(mapper, result)
            if answer is None:
                continue
            if not answer.kinds:
                mapper.skip(result.resource, f"{result.kind} answer not recognised")
                continue
            answers.append(mapper.checked(result.resource, answer))
            break
    return answers


def on_dialysis(conditions: Iterable[Condition]) -> bool:
    """A current dialysis condition is on record (then no eGFR is computed from creatinine)."""
    return any(ConditionKind.DIALYSIS in c.kinds and c.is_current for c in conditions)
