"""Writing orders: a FHIR Dosage, a draft MedicationRequest, and a draft with new dosing.

One Dosage writer serves the cards' update suggestion and the CLI's draft orders, so what the
service suggests and what the CLI sends read the same way to the dose rules.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from fhir_mappings.codes import RXNORM, UCUM
from fhir_mappings.readers import Resource, as_list

_FREQUENCY = {1: "once daily", 2: "twice daily", 3: "three times daily"}
_TIME_OF_DAY = {"MORN": "in the morning", "EVE": "in the evening"}
# Parts of the draft's first instruction kept when the dose changes (how, not how much).
_KEPT = ("route", "method", "site", "additionalInstruction")


def dosage_instruction(
    dose_mg: float,
    per_day: int,
    *,
    capsule_mg: float | None = None,
    when: str | None = None,
    sequence: int | None = None,
    keep: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A structured FHIR Dosage the dose rules can read: ``dose_mg`` mg, ``per_day`` times a day.

    ``capsule_mg`` adds the capsule count to the text; ``when`` (MORN, EVE, or a clock time)
    times the dose and its text names it; ``sequence`` numbers the instruction (instructions
    with the same or no sequence apply together, FHIR R4 Dosage.sequence);
    ``keep`` holds elements copied from the instruction being replaced (route, method ...).
    """
    if when is None:
        how = _FREQUENCY.get(per_day, f"{per_day} times daily")
    else:
        how = _TIME_OF_DAY.get(when, f"daily at {when}" if ":" in when else "daily")
    capsules = ""
    if capsule_mg is not None:
        capsules = f" ({dose_mg / capsule_mg:.0f} x {capsule_mg:g} mg capsules)"
    repeat: dict[str, Any] = {"frequency": per_day, "period": 1, "periodUnit": "d"}
    if when:
        # A clock time ("08:00:00", read from timeOfDay) goes back to timeOfDay, a code to when.
        repeat["timeOfDay" if ":" in when else "when"] = [when]
    instruction = {
        **copy.deepcopy(dict(keep or {})),
        "text": f"{dose_mg:g} mg{capsules} by mouth {how}",
        "timing": {"repeat": repeat},
        "doseAndRate": [
            {"doseQuantity": {"value": dose_mg, "unit": "mg", "system": UCUM, "code": "mg"}}
        ],
    }
    if sequence is not None:
        instruction["sequence"] = sequence
    return instruction


def with_doses(
    draft: Resource | None, doses: Sequence[tuple[float, str | None]], capsule_mg: float
) -> Resource:
    """The whole draft order with new dosageInstruction (a CDS Hooks update is the full resource).

    ``doses`` holds (mg, time of day or None) per administration in a day: equal untimed doses
    become one instruction, anything else one instruction per dose, with no ``sequence``: they
    apply together (FHIR R4 Dosage.sequence numbers instructions applied one after another).
    """
    resource = copy.deepcopy(draft or {})
    keep: dict[str, Any] = {}
    for instruction in as_list(resource.get("dosageInstruction")):  # raw JSON: any type
        if isinstance(instruction, dict):
            keep = {k: v for k, v in instruction.items() if k in _KEPT}
            break
    amounts = {mg for mg, _ in doses}
    timed = all(when for _, when in doses)
    if len(amounts) == 1 and not timed:
        instructions = [
            dosage_instruction(doses[0][0], len(doses), capsule_mg=capsule_mg, keep=keep)
        ]
    else:
        instructions = [
            dosage_instruction(mg, 1, capsule_mg=capsule_mg, when=when, keep=keep)
            for mg, when in doses
        ]
    resource["dosageInstruction"] = instructions
    return resource


def draft_medication_request(
    patient_id: str,
    *,
    drug: str | None = None,
    rxnorm: str | None = None,
    dose_mg: float | None = None,
    per_day: int = 2,
    today: str | None = None,
) -> dict[str, Any]:
    """A draft MedicationRequest, as the EHR holds an order that is not signed yet."""
    concept: dict[str, Any] = {}
    if rxnorm:
        concept["coding"] = [{"system": RXNORM, "code": rxnorm}]
    if drug:
        concept["text"] = drug
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": f"draft-{uuid.uuid4().hex[:12]}",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": concept,
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": today or datetime.now(UTC).date().isoformat(),
    }
    if dose_mg is not None:
        order["dosageInstruction"] = [dosage_instruction(dose_mg, per_day)]
    return order


def as_draft_order(resource: Resource, patient_id: str) -> Resource:
    """A resource read from a file, as an EHR holds a draft: with an id and the patient."""
    order = dict(resource)
    order.setdefault("id", f"draft-{uuid.uuid4().hex[:12]}")
    order.setdefault("subject", {"reference": f"Patient/{patient_id}"})
    return order
