"""Condition, Immunization and AllergyIntolerance -> the history facts the rules read."""

from __future__ import annotations

from fhir_mappings.codes import CVX
from fhir_mappings.facts import Allergy, Condition, Immunization
from fhir_mappings.mapper import Mapper
from fhir_mappings.readers import (
    Resource,
    as_list,
    codings,
    concept_name,
    concept_texts,
    parse_datetime,
    status_code,
)
from fhir_mappings.references import reference_of
from fhir_mappings.vocabulary import Role

_UNUSABLE_VERIFICATION = frozenset({"refuted", "entered-in-error"})
_INACTIVE_CLINICAL = frozenset({"inactive", "resolved", "remission"})


def condition(mapper: Mapper, resource: Resource) -> Condition | None:
    """A Condition and the kinds it matched; None when it was refuted or entered in error."""
    status = status_code(resource.get("clinicalStatus"))
    verification = status_code(resource.get("verificationStatus"))
    if verification in _UNUSABLE_VERIFICATION:
        return None
    concept = resource.get("code")
    kinds = mapper.terminology.condition_kinds(codings(concept), concept_texts(concept))
    return Condition(reference_of(resource), concept_name(concept), kinds, status)


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
