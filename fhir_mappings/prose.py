"""Card prose templates: check their placeholders at load time and fill them at run time.

A template is a ``str.format`` string from ``data/cards.toml`` (card text) or
``data/prior_authorization.toml`` (criterion names). A placeholder is one of:

- a knowledge value: a section attribute such as ``{renal.baseline_low_max:g}`` or a top-level
  value such as ``{live_vaccine_days_before_initiation}`` (see ``Knowledge.template_values``);
- a fact the rule fills in, named in the table's ``facts`` list (``{egfr}``, ``{partners}``).

Anything else (a typo, a positional ``{}``, an attribute a section does not have, a format spec
the knowledge value refuses) is a problem the loader turns into ``KnowledgeError``, so a bad
template stops start-up instead of failing on a patient's card.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Set
from dataclasses import dataclass
from string import Formatter
from typing import Any


@dataclass(frozen=True)
class CardText:
    """The prose templates of one rule, and the names of the facts the rule fills in."""

    rule_id: str
    templates: Mapping[str, str]
    facts: frozenset[str]


def placeholder_problems(
    template: str, values: Mapping[str, Any], facts: Set[str] = frozenset()
) -> list[str]:
    """What is wrong with the placeholders of ``template`` (empty: every one is known)."""
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as exc:  # an unmatched brace
        return [f"not a format string ({exc})"]
    problems = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        where = f"placeholder {{{field}}}"
        if conversion is not None or "[" in field or (spec and "{" in spec):
            problems.append(f"{where}: only plain names with a format spec are allowed")
            continue
        head, _, attribute = field.partition(".")
        if head in facts:
            if attribute:
                problems.append(f"{where}: a fact has no attributes")
            continue
        if head not in values:
            problems.append(f"{where}: unknown name {head!r} (not a knowledge value or a fact)")
            continue
        value = values[head]
        if attribute:
            names = {f.name for f in dataclasses.fields(value)} if _is_section(value) else set()
            if attribute not in names:
                problems.append(f"{where}: {head} has no value {attribute!r}")
                continue
            value = getattr(value, attribute)
        try:
            format(value, spec or "")
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}: format spec {spec!r} does not fit {value!r} ({exc})")
    return problems


def used_names(template: str) -> set[str]:
    """The top-level names a template's placeholders use."""
    return {field.partition(".")[0] for _, field, _, _ in Formatter().parse(template) if field}


def _is_section(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)
