"""MedicationRequest / Immunization orders -> Medication facts, resolving medicationReference."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from fhir_mappings.codes import Coding, MedicationMatch
from fhir_mappings.dosage import dosage, to_days
from fhir_mappings.facts import Medication
from fhir_mappings.mapper import Mapper
from fhir_mappings.readers import (
    Resource,
    as_list,
    as_object,
    codings_and_texts,
    concept_texts,
    parse_datetime,
    quantity,
)
from fhir_mappings.references import (
    contained,
    medication_reference,
    reference_of,
    relative_reference,
)
from fhir_mappings.supply import record_start, supplied_until
from fhir_mappings.vocabulary import Role

# Request types read from draftOrders / medications (MedicationOrder: DSTU2 medication-prescribe,
# read leniently; it has no R4 model, so it is also reported).
DRAFT_TYPES = frozenset({"MedicationRequest", "Immunization", "MedicationOrder"})
# The elements that name the drug of an order; an order with none of them names nothing.
_MEDICATION_ELEMENTS = ("medicationCodeableConcept", "medicationReference", "vaccineCode")


def names_a_medication(resource: Resource) -> bool:
    """The order has a medication element at all, readable or not.

    A client may send a draft before a drug is picked (the CDS Hooks Sandbox sends a
    MedicationRequest with no medication[x] and no intent): there is nothing to identify and
    nothing to check, so it is not an order. A medication element that is present but cannot
    be recognised (empty, a broken reference) is: that order stays "unidentified".
    """
    return any(resource.get(key) is not None for key in _MEDICATION_ELEMENTS)


def medication(
    mapper: Mapper,
    resource: Resource,
    medications_by_ref: Mapping[str, Resource],
    *,
    draft_index: int | None = None,
    selected: bool = False,
) -> Medication:
    """One order as a Medication: the drug matched by every means, its dosage when it matters.

    ``draft_index``: the order's position among the session's drafts (None: a recorded order).
    """
    return _medication(
        mapper,
        resource,
        _identify(mapper, resource, medications_by_ref),
        draft_index=draft_index,
        selected=selected,
    )


def recorded_medication(
    mapper: Mapper, resource: Resource, medications_by_ref: Mapping[str, Resource]
) -> Medication | None:
    """A recorded order as a Medication when its drug has a role a rule reads, else None.

    The drug is matched first (memoized) and the rest is read only for orders with a role:
    a chart's long list of everyday drugs builds no objects no rule reads. An order whose
    drug could not be told is still reported, as ``medication`` does.
    """
    identified = _identify(mapper, resource, medications_by_ref)
    if not identified[3].roles:
        return None
    return _medication(mapper, resource, identified, recorded=True)


# (the Medication.form that named it, its codings, its names, what the knowledge matched)
_Identified = tuple[Any, list[Coding], list[str], MedicationMatch]


def _identify(
    mapper: Mapper, resource: Resource, medications_by_ref: Mapping[str, Resource]
) -> _Identified:
    """The order's drug: its codings and names, what the knowledge matched, and the form of a
    referenced Medication."""
    inline = resource.get("medicationCodeableConcept")
    if isinstance(inline, dict):  # the usual order: no Medication to look up (issue 14)
        concept_codings, texts = codings_and_texts(inline)
        return (
            None,
            concept_codings,
            texts,
            mapper.terminology.match_medication(concept_codings, texts),
        )
    read = _medication_concept(resource, medications_by_ref)
    concept_codings, texts = codings_and_texts(read.concept)
    texts += read.texts
    match = mapper.terminology.match_medication(concept_codings, texts)
    if read.missing_note is not None and not (match.ingredients or match.roles):
        # The display named nothing the knowledge knows: say the drug could not be told.
        mapper.skip(resource, read.missing_note)
    return read.form, concept_codings, texts, match


def _medication(
    mapper: Mapper,
    resource: Resource,
    identified: _Identified,
    *,
    draft_index: int | None = None,
    selected: bool = False,
    recorded: bool = False,
) -> Medication:
    """The Medication of an identified order; ``recorded``: with what currency needs from its
    record (type, intent, start and supply, ``supply.py``), else as a draft reads."""
    form, concept_codings, texts, match = identified
    terminology = mapper.terminology
    # The routes of its dosages, then the referenced Medication's dose form (each read once).
    route_codings: list[Coding] = []
    route_texts: list[str] = []
    for concept in [d.get("route") for d in _dosages(resource)] + [form]:
        if concept is not None:
            found_codings, found_texts = codings_and_texts(concept)
            route_codings += found_codings
            route_texts += found_texts
    exposure, site = terminology.exposure(route_codings, [*route_texts, *texts])
    status = resource.get("status")
    dispense = as_object(resource.get("dispenseRequest"))
    supply = quantity(dispense.get("expectedSupplyDuration"))
    repeats = dispense.get("numberOfRepeatsAllowed")
    # A code-only order (an NDC without text) shows the knowledge's product name.
    name = texts[0] if texts else match.product_name or "(unidentified medication)"
    knowledge = mapper.terminology.knowledge
    is_voclosporin = Role.VOCLOSPORIN in match.roles
    # Capsule counts are voclosporin's 7.9 mg capsules; another drug's capsule is not known.
    capsule_mg = knowledge.dose.capsule_mg if is_voclosporin else None
    # The dose rules read the drafts' doses (and a voclosporin record's): another recorded
    # order's dosage is read by no rule, so it is not read at all (issue 14).
    read_dosage = bool(match.roles) and (draft_index is not None or is_voclosporin)
    record_type, intent = "MedicationRequest", None
    authored_on, covered_until = None, None
    if recorded:
        kind, stated_intent = resource.get("resourceType"), resource.get("intent")
        record_type = kind if isinstance(kind, str) else record_type
        intent = stated_intent if isinstance(stated_intent, str) else None
        authored_on = record_start(resource)
        covered_until = supplied_until(resource, authored_on)
    else:
        authored_on = parse_datetime(resource.get("authoredOn"))
    return Medication(
        reference=reference_of(resource),
        name=name,
        ingredients=match.ingredients,
        roles=match.roles,
        status=status if isinstance(status, str) else None,
        authored_on=authored_on,
        is_draft=draft_index is not None,
        is_selected=selected,
        draft_index=draft_index,
        record_type=record_type,
        intent=intent,
        supply_until=covered_until,
        dosage=dosage(resource, knowledge.dose_vocabulary, capsule_mg) if read_dosage else None,
        expected_supply_days=to_days(supply) if supply else None,
        number_of_repeats=repeats if isinstance(repeats, int) else None,
        identified=bool(concept_codings or texts),
        renews_prior=bool(resource.get("priorPrescription")),
        matched_text=match.near_match_text,
        exposure=exposure,
        exposure_site=site,
    )


class _Concept(NamedTuple):
    """What names an order's drug: its concept, extra names, the Medication.form, and the note
    to give when a referenced Medication is missing (used only if the names identify nothing)."""

    concept: Any
    texts: list[str]
    form: Any = None
    missing_note: str | None = None


def _dosages(resource: Resource) -> list[dict[str, Any]]:
    """The dosage instructions (MedicationRequest and MedicationDispense `dosageInstruction`,
    MedicationStatement `dosage`), objects only."""
    dosages = as_list(resource.get("dosageInstruction")) + as_list(resource.get("dosage"))
    return [d for d in dosages if isinstance(d, dict)]


def _medication_concept(resource: Resource, medications_by_ref: Mapping[str, Resource]) -> _Concept:
    """The medication concept of a request: inline, contained, or a referenced Medication."""
    for key in ("medicationCodeableConcept", "vaccineCode"):
        if isinstance(resource.get(key), dict):
            return _Concept(resource[key], [])
    if not isinstance(resource.get("medicationReference"), dict):
        return _Concept(None, [])
    target, display = medication_reference(resource)
    extra = [display] if display is not None else []
    medication: Resource | None = None
    if target is not None and target.startswith("#"):
        medication = contained(resource, target)
    elif target is not None:
        # "Medication/1", or an absolute URL ending in it.
        medication = medications_by_ref.get(relative_reference(target))
    if medication is None:
        named = repr(target) if target is not None else "(no reference)"
        shown = f" (display: {extra[0]!r})" if extra else ""
        note = (
            f"medicationReference {named} is not in the chart: the drug "
            f"could not be identified{shown}"
        )
        return _Concept(None, extra, missing_note=note)
    for ingredient in as_list(medication.get("ingredient")):
        if isinstance(ingredient, dict):
            extra += concept_texts(ingredient.get("itemCodeableConcept"))
            item = ingredient.get("itemReference")
            if isinstance(item, dict) and isinstance(item.get("display"), str):
                extra.append(item["display"])
    return _Concept(medication.get("code"), extra, form=medication.get("form"))
