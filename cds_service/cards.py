"""Findings -> CDS Hooks 2.0 cards: source with the label section, suggestions with full-resource
actions, override reasons, a link to the label section the rule cites, fresh uuids. Severity
order is kept from the engine.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cds_service.contract import RULE_TOPIC_SYSTEM, SUMMARY_MAX_LENGTH
from cds_service.rules.engine import DATA_UNAVAILABLE
from cds_service.rules.model import Finding, RemoveOrder, ReplaceDosage, Suggestion
from fhir_mappings.facts import Medication
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.orders import with_doses


@dataclass(frozen=True)
class BuiltCard:
    """A card as sent, with the ids feedback and the audit trail refer to."""

    rule_id: str
    indicator: str
    uuid: str
    suggestion_uuids: tuple[str, ...]
    body: dict[str, Any]
    finding_key: str | None = None
    quieted: bool = False


def build_cards(
    findings: tuple[Finding, ...],
    knowledge: Knowledge,
    drafts: Sequence[dict[str, Any]],
) -> list[BuiltCard]:
    """Cards for the findings; ``drafts`` (the session's draft orders, in request order) are what
    update suggestions rewrite."""
    frames = _frames(knowledge)
    return [_card(finding, knowledge, drafts, frames) for finding in findings]


@dataclass(frozen=True)
class _Frame:
    """What every card of one rule and citation says besides the finding: its source (with
    the topic), the footer, the label link. Copied into each card, never shared by two."""

    source: dict[str, Any]
    topic: dict[str, Any]
    footer: str
    links: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class _Frames:
    """The frames of one Knowledge, made as cards need them, and its override reasons."""

    knowledge: Knowledge
    reasons: tuple[dict[str, Any], ...]
    by_rule: dict[tuple[str, str], _Frame]


# The frames of the Knowledge last used (one per app; a local policy makes another).
_last_frames: _Frames | None = None


def _frames(knowledge: Knowledge) -> _Frames:
    global _last_frames
    frames = _last_frames
    if frames is None or frames.knowledge is not knowledge:
        reasons = tuple(
            _compact({"system": r.system, "code": r.code, "display": r.display})
            for r in knowledge.override_reasons
        )
        frames = _last_frames = _Frames(knowledge, reasons, {})
    return frames


def _frame(rule_id: str, citation_text: str, knowledge: Knowledge) -> _Frame:
    citation = knowledge.rules.get(rule_id)
    title = citation.title if citation else rule_id
    source: dict[str, Any]
    if rule_id == DATA_UNAVAILABLE:
        source = {"label": "Voclosporin safety service: data access"}
    elif rule_id == "prior-authorization":
        source = {"label": knowledge.payer_policy_title}
    else:
        source = {"label": f"LUPKYNIS label: {citation_text}"[:200], "url": knowledge.label_url}
    topic = _compact({"system": RULE_TOPIC_SYSTEM, "code": rule_id, "display": title})
    source = _compact({**source, "topic": topic})
    footer = f"\n\n---\n_Rule `{rule_id}` · {citation_text} · knowledge {knowledge.full_version}_"
    links: tuple[dict[str, Any], ...] = ()
    if citation is not None and citation.link is not None:  # rules.toml link_label / link_url
        links = (
            _compact({"label": citation.link.label, "url": citation.link.url, "type": "absolute"}),
        )
    return _Frame(source, topic, footer, links)


def _card(
    finding: Finding, knowledge: Knowledge, drafts: Sequence[dict[str, Any]], frames: _Frames
) -> BuiltCard:
    key = (finding.rule_id, finding.citation)
    frame = frames.by_rule.get(key)
    if frame is None:
        frame = frames.by_rule[key] = _frame(finding.rule_id, finding.citation, knowledge)
    suggestions = [_suggestion(s, knowledge, drafts) for s in _one_recommended(finding.suggestions)]
    source = {**frame.source}
    if "topic" in source:
        source["topic"] = {**frame.topic}
    card: dict[str, Any] = {
        "uuid": new_uuid(),
        "summary": _clip(finding.summary),
        "indicator": finding.indicator,
        "detail": finding.detail + frame.footer,
        "source": source,
        "overrideReasons": [{**r} for r in frames.reasons],
    }
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one"
    if frame.links:
        card["links"] = [{**link} for link in frame.links]
    card = _compact(card)
    return BuiltCard(
        rule_id=finding.rule_id,
        indicator=finding.indicator,
        uuid=card["uuid"],
        suggestion_uuids=tuple(s["uuid"] for s in suggestions),
        body=card,
        finding_key=finding.finding_key,
        quieted=finding.quieted,
    )


def new_uuid() -> str:
    """A fresh random (version 4) UUID as text, for a card or a suggestion."""
    return str(uuid.uuid4())


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    """CDS Hooks 2.0 sends no null or empty values: drop them (one level; a draft resource in
    an update action goes out as the EHR sent it)."""
    return {k: v for k, v in data.items() if v is not None and v != "" and v != [] and v != {}}


def _clip(summary: str) -> str:
    return (
        summary if len(summary) <= SUMMARY_MAX_LENGTH else summary[: SUMMARY_MAX_LENGTH - 1] + "…"
    )


def _one_recommended(suggestions: tuple[Suggestion, ...]) -> list[Suggestion]:
    """at-most-one allows a single recommended suggestion (spec #suggestion)."""
    seen = False
    result = []
    for suggestion in suggestions:
        if suggestion.is_recommended and seen:
            suggestion = Suggestion(suggestion.label, suggestion.actions, False)
        seen = seen or suggestion.is_recommended
        result.append(suggestion)
    return result


def _suggestion(
    suggestion: Suggestion, knowledge: Knowledge, drafts: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    actions: list[dict[str, Any]] = []
    for action in suggestion.actions:
        if isinstance(action, RemoveOrder):
            actions.append(
                _compact(
                    {
                        "type": "delete",
                        "description": f"Remove the draft order for {action.order.name}",
                        "resourceId": action.order.reference,
                    }
                )
            )
        elif isinstance(action, ReplaceDosage):
            actions.append(
                _compact(
                    {
                        "type": "update",
                        "description": _change_description(action),
                        "resource": with_doses(
                            _draft_of(action.order, drafts),
                            action.doses,
                            knowledge.dose.capsule_mg,
                        ),
                    }
                )
            )
    result: dict[str, Any] = {
        "label": suggestion.label[:200],
        "uuid": new_uuid(),
        "actions": actions,
    }
    if suggestion.is_recommended:
        result["isRecommended"] = True
    return _compact(result)


def _change_description(action: ReplaceDosage) -> str:
    """What an update does; for one draft of a split regimen, its own dose and the whole."""
    if action.whole:
        return f"Change {action.order.name} to {action.description}"
    doses = " + ".join(f"{mg:g} mg" + (f" ({when})" if when else "") for mg, when in action.doses)
    return (
        f"Change {action.order.name} to {doses}: its part of {action.description}, "
        "with the other drafts of this suggestion"
    )


def _draft_of(order: Medication, drafts: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The raw draft a Medication fact was read from (by position: references may repeat)."""
    if order.draft_index is None or not 0 <= order.draft_index < len(drafts):
        return None
    return drafts[order.draft_index]
