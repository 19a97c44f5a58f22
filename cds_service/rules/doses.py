"""The session's voclosporin regimen: every voclosporin draft read as one, and the order changes
that rewrite it as a whole (knowledge "Decisions, second round": dose suggestions).

An AM draft and a PM draft are one regimen: their doses are put side by side by the part of the
day they name. Untimed doses of two drafts are read as taken together (the n-th dose of one with
the n-th of the other): conservative for a maximum-dose check. Every step is one pass over the
drafts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cds_service.rules.model import Action, RemoveOrder, ReplaceDosage
from fhir_mappings.facts import DoseAmount, Medication
from fhir_mappings.knowledge import DAY_PARTS, Knowledge

_RANK = {part: rank for rank, part in enumerate(DAY_PARTS)}
_PART_RANKS = frozenset(_RANK.values())
_UNTIMED, _CLOCK = -1, len(DAY_PARTS)


@dataclass(frozen=True)
class Regimen:
    """The combined dosing of the voclosporin drafts of one order session.

    ``doses`` are the administrations of a day in day order (untimed first, in listed order);
    ``without_dose`` are drafts that state no structured dose (not part of ``doses``).
    """

    orders: tuple[Medication, ...]
    doses: tuple[DoseAmount, ...]
    doses_per_day: float | None
    without_dose: tuple[Medication, ...]

    def daily_mg(self) -> float | None:
        """The day's total (None: no dose or no frequency stated)."""
        if not self.doses or self.doses_per_day is None or self.without_dose:
            return None
        if len(self.doses) == 1:
            return self.doses[0].mg * self.doses_per_day
        return sum(d.mg for d in self.doses)

    def within(self, mg: tuple[float, ...], tolerance: float) -> bool:
        """No dose of the day is above the largest of ``mg`` and the day's total is at most
        theirs: accepting ``mg`` instead would not lower this regimen (False when unknown)."""
        per_day = self.daily_mg()
        if per_day is None:
            return False
        return per_day <= sum(mg) + tolerance and all(
            d.mg <= max(mg) + tolerance for d in self.doses
        )

    def matches(self, mg: tuple[float, ...], tolerance: float) -> bool:
        """The day's doses are ``mg`` in day order (15.8 then 7.9: the AM dose first)."""
        return len(self.doses) == len(mg) and all(
            abs(d.mg - m) <= tolerance for d, m in zip(self.doses, mg, strict=True)
        )


def _slot(dose: DoseAmount, untimed_index: int, parts: dict[str, str]) -> tuple[int, str]:
    """Where a dose sits in the day: its part (morning...), its clock time, or its position."""
    part = dose.part or parts.get((dose.when or "").upper())
    if part in _RANK:
        return _RANK[part], part
    if dose.when:
        return _CLOCK, dose.when
    return _UNTIMED, f"{untimed_index:04d}"


def regimen_of(orders: Iterable[Medication], knowledge: Knowledge) -> Regimen | None:
    """The voclosporin drafts among ``orders`` read as one regimen (None: there are none)."""
    drafts = tuple(o for o in orders if o.is_voclosporin and o.is_draft)
    if not drafts:
        return None
    return _read(drafts, knowledge.dose_vocabulary.day_parts)


def _read(drafts: tuple[Medication, ...], parts: dict[str, str]) -> Regimen:
    """Put the doses of ``drafts`` side by side by their slot in the day (one pass)."""
    slots: dict[tuple[int, str], DoseAmount] = {}
    without_dose = []
    regular, total_per_day = True, 0.0
    unknown_frequency = False
    for order in drafts:
        dosage = order.dosage
        if dosage is None or not dosage.doses:
            without_dose.append(order)
            continue
        if dosage.doses_per_day is None:
            unknown_frequency = True
        else:
            total_per_day += dosage.doses_per_day
            regular = regular and dosage.doses_per_day == len(dosage.doses)
        untimed = 0
        for dose in dosage.doses:
            key = _slot(dose, untimed, parts)
            untimed += key[0] == _UNTIMED
            before = slots.get(key)
            mg = round(dose.mg + (before.mg if before else 0.0), 2)
            part = key[1] if key[0] in _PART_RANKS else None
            slots[key] = DoseAmount(mg, before.when if before else dose.when, part)
    per_day: float | None
    if unknown_frequency:
        per_day = None
    elif not regular:  # e.g. every other day: the stated frequency, summed
        per_day = total_per_day
    else:
        per_day = float(len(slots))
    doses = tuple(slots[key] for key in sorted(slots))
    return Regimen(drafts, doses, per_day, tuple(without_dose))


def rewrite(
    regimen: Regimen,
    target: tuple[tuple[float, str | None], ...],
    description: str,
    knowledge: Knowledge,
) -> tuple[Action, ...]:
    """The order changes that make the session's regimen ``target``, all in one suggestion.

    A single draft is rewritten; an AM and a PM draft (one timed dose each, different parts of
    the day) each get their own dose when ``target`` has as many timed doses; otherwise the
    first draft takes the whole regimen and the others are removed. Nothing (no suggestion)
    when a draft cannot be changed (it would stay in force beside the change) or when the
    target is above the label maximum: accepting a suggestion never yields more than it.
    """
    dose = knowledge.dose
    if not regimen.orders or any(not o.can_be_changed for o in regimen.orders):
        return ()
    if any(mg > dose.max_dose_mg + dose.mg_tolerance or mg <= 0 for mg, _ in target):
        return ()
    if len(regimen.orders) == 1:
        return (ReplaceDosage(regimen.orders[0], target, description),)
    split = _split_by_part(regimen.orders, target, description, knowledge.dose_vocabulary.day_parts)
    if split is not None:
        return split
    first, *rest = regimen.orders
    return (
        ReplaceDosage(first, target, description),
        *(RemoveOrder(order) for order in rest),
    )


def _split_by_part(
    orders: tuple[Medication, ...],
    target: tuple[tuple[float, str | None], ...],
    description: str,
    parts: dict[str, str],
) -> tuple[Action, ...] | None:
    """One target dose per draft when each draft holds one timed dose in its own part of day."""
    if len(orders) != len(target) or not all(when for _, when in target):
        return None
    ranked = []
    for order in orders:
        doses = order.dosage.doses if order.dosage else ()
        rank = _slot(doses[0], 0, parts)[0] if len(doses) == 1 else _UNTIMED
        if rank not in _PART_RANKS:
            return None
        ranked.append((rank, order))
    if len({rank for rank, _ in ranked}) != len(ranked):
        return None
    ranked.sort(key=lambda pair: pair[0])
    return tuple(
        ReplaceDosage(order, (part,), description, whole=False)
        for (_, order), part in zip(ranked, target, strict=True)
    )
