"""When a medication record starts and the last day its supply covers (MedicationRequest,
MedicationStatement, MedicationDispense): what ``facts.is_current`` and the course read.

Knowledge decisions, second round, "which medications are current": a completed prescription is
still taken while its supply lasts (FHIR R4: "completed" = all actions done).
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta

from fhir_mappings.dosage import to_days
from fhir_mappings.readers import Resource, as_object, parse_date, parse_datetime, quantity

# Recorded medications: orders, what the patient reports taking, what a pharmacy handed over.
RECORD_TYPES = ("MedicationRequest", "MedicationStatement", "MedicationDispense")


def record_start(resource: Resource) -> datetime | None:
    """When the record's supply or use starts: authoredOn; a statement's effective start (else
    when it was asserted); a dispense's hand-over (else when it was prepared)."""
    kind = resource.get("resourceType")
    if kind == "MedicationStatement":
        period = as_object(resource.get("effectivePeriod"))
        return (
            parse_datetime(resource.get("effectiveDateTime"))
            or parse_datetime(period.get("start"))
            or parse_datetime(resource.get("dateAsserted"))
        )
    if kind == "MedicationDispense":
        return parse_datetime(resource.get("whenHandedOver")) or parse_datetime(
            resource.get("whenPrepared")
        )
    return parse_datetime(resource.get("authoredOn"))


def supply_until(resource: Resource) -> date | None:
    """The last day the record's supply covers, or None when it does not say.

    MedicationRequest: the later of ``dispenseRequest.validityPeriod.end`` and authoredOn +
    expectedSupplyDuration x (1 + numberOfRepeatsAllowed) (the last fill may come on the last
    valid day, so the later end is the one the patient may still be taking); a dispense:
    whenHandedOver + daysSupply; a statement: its effective period's end (or its one dateTime).
    """
    return supplied_until(resource, record_start(resource))


def supplied_until(resource: Resource, start: datetime | None) -> date | None:
    """``supply_until`` of a record whose ``record_start`` is known already."""
    kind = resource.get("resourceType")
    if kind == "MedicationStatement":
        period = as_object(resource.get("effectivePeriod"))
        return parse_date(period.get("end")) or parse_date(resource.get("effectiveDateTime"))
    if kind == "MedicationDispense":
        return _covered(start, _days(resource.get("daysSupply")), 1)
    dispense = as_object(resource.get("dispenseRequest"))
    repeats = dispense.get("numberOfRepeatsAllowed")
    fills = 1 + (repeats if isinstance(repeats, int) and repeats > 0 else 0)
    ends = [
        parse_date(as_object(dispense.get("validityPeriod")).get("end")),
        _covered(start, _days(dispense.get("expectedSupplyDuration")), fills),
    ]
    known = [end for end in ends if end is not None]
    return max(known) if known else None


def _days(value: object) -> float | None:
    """A duration Quantity in days (a dispense's daysSupply may have no unit: it is days)."""
    read = quantity(value)
    if read is None:
        return None
    number, unit, _ = read
    return number if not unit else to_days(read)


def _covered(start: datetime | None, days: float | None, fills: int) -> date | None:
    """The last day ``fills`` supplies of ``days`` each cover from ``start`` (start day is 1)."""
    if start is None or days is None or days <= 0:
        return None
    return start.date() + timedelta(days=math.ceil(days * fills) - 1)
