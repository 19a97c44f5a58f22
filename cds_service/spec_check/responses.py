"""Check a CDS Service response: cards, their source, suggestions, actions and links."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from .core import (
    CODING,
    RELATIVE_REFERENCE,
    SUMMARY_MAX_LENGTH,
    Field,
    JsonObject,
    Violation,
    absolute_url,
    allow_root_array,
    check_fields,
    coding,
    each,
    error,
    fhir_resource,
    join,
    one,
    run,
    warning,
)

# #reasons-for-rejecting-a-card: the service MUST populate display on each override reason.
OVERRIDE_REASON_CODING: Mapping[str, Field] = {**CODING, "display": Field("string", required=True)}

SOURCE: Mapping[str, Field] = {
    "label": Field("string", required=True),
    "url": Field("string"),
    "icon": Field("string"),
    "topic": Field("object"),
}
CARD: Mapping[str, Field] = {
    "uuid": Field("string"),
    "summary": Field("string", required=True),
    "detail": Field("string"),
    "indicator": Field("string", required=True, choices=("info", "warning", "critical")),
    "source": Field("object", required=True),
    "suggestions": Field("array"),
    "selectionBehavior": Field("string", choices=("at-most-one", "any")),
    "overrideReasons": Field("array"),
    "links": Field("array"),
}
SUGGESTION: Mapping[str, Field] = {
    "label": Field("string", required=True),
    "uuid": Field("string"),
    "isRecommended": Field("boolean"),
    "actions": Field("array"),
}
ACTION: Mapping[str, Field] = {
    "type": Field("string", required=True, choices=("create", "update", "delete")),
    "description": Field("string", required=True),
    "resource": Field("any"),  # an object, or (deprecated, delete only) an id string
    "resourceId": Field("string"),
}
LINK: Mapping[str, Field] = {
    "label": Field("string", required=True),
    "url": Field("string", required=True),
    "type": Field("string", required=True, choices=("absolute", "smart")),
    "appContext": Field("string"),
    "autolaunchable": Field("boolean"),
}
RESPONSE: Mapping[str, Field] = {
    "cards": Field("array", required=True),
    "systemActions": Field("array"),
}


def check_response(doc: object) -> list[Violation]:
    """Check a CDS Service response: cards and systemActions (#cds-service-response)."""
    return run(doc, _response, allow_root_array("cards"))


def _response(doc: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(doc, path, RESPONSE)
    yield from each(doc, "cards", path, _card)
    yield from each(doc, "systemActions", path, _action)
    yield from _duplicate_uuids(doc)


def _card(card: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(card, path, CARD)
    if "uuid" not in card:
        yield warning(
            join(path, "uuid"), "is missing, so the CDS Client cannot send feedback (#feedback)"
        )
    summary = card.get("summary")
    if isinstance(summary, str) and len(summary) > SUMMARY_MAX_LENGTH:
        yield error(
            join(path, "summary"),
            f"must be under {SUMMARY_MAX_LENGTH + 1} characters, has {len(summary)} "
            "(#card-attributes)",
        )
    yield from one(card, "source", path, _source)
    yield from _suggestions(card, path)
    yield from each(card, "overrideReasons", path, _override_reason_coding)
    yield from each(card, "links", path, _link)


def _source(source: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(source, path, SOURCE)
    yield from absolute_url(source, "url", path)
    yield from absolute_url(source, "icon", path)
    yield from one(source, "topic", path, coding)


def _suggestions(card: JsonObject, path: str) -> Iterator[Violation]:
    """Check each suggestion and the card-level rules that tie suggestions together."""
    suggestions = card.get("suggestions")
    if not isinstance(suggestions, list) or not suggestions:
        return
    if "selectionBehavior" not in card:
        yield error(join(path, "selectionBehavior"), "is required when suggestions are present")
    yield from each(card, "suggestions", path, _suggestion)
    recommended = [s for s in suggestions if isinstance(s, dict) and s.get("isRecommended") is True]
    if card.get("selectionBehavior") == "at-most-one" and len(recommended) > 1:
        yield error(
            join(path, "suggestions"),
            "only one suggestion may be isRecommended when selectionBehavior is at-most-one",
        )


def _suggestion(suggestion: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(suggestion, path, SUGGESTION)
    if "uuid" not in suggestion:
        yield warning(
            join(path, "uuid"),
            "is missing, so the CDS Client cannot report it accepted (#suggestion-accepted)",
        )
    yield from each(suggestion, "actions", path, _action)


def _action(action: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(action, path, ACTION)
    action_type = action.get("type")
    resource, resource_path = action.get("resource"), join(path, "resource")
    if action_type in ("create", "update"):
        if "resource" not in action:
            yield error(resource_path, f"is required for a {action_type} action")
        elif resource is not None:
            yield from fhir_resource(resource, resource_path)
        if action_type == "update" and isinstance(resource, dict) and "id" not in resource:
            yield warning(
                join(resource_path, "id"),
                "is missing; an update carries the whole resource it replaces",
            )
    elif action_type == "delete":
        if "resource" in action:
            yield warning(resource_path, "is deprecated for delete actions; use resourceId")
        elif "resourceId" not in action:
            yield error(join(path, "resourceId"), "is required for a delete action")
    resource_id = action.get("resourceId")
    if (
        isinstance(resource_id, str)
        and resource_id
        and not RELATIVE_REFERENCE.fullmatch(resource_id)
    ):
        yield warning(
            join(path, "resourceId"),
            "should be a relative reference such as 'MedicationRequest/123'",
        )


def _override_reason_coding(reason: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(reason, path, OVERRIDE_REASON_CODING)


def _link(link: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(link, path, LINK)
    yield from absolute_url(link, "url", path)
    if "appContext" in link and link.get("type") != "smart":
        yield error(join(path, "appContext"), "is only allowed on links of type smart (#link)")


def _duplicate_uuids(doc: JsonObject) -> Iterator[Violation]:
    """Report reused card or suggestion uuids: feedback could not tell them apart."""
    seen: dict[str, str] = {}
    cards = doc.get("cards")
    for card_index, card in enumerate(cards if isinstance(cards, list) else []):
        if not isinstance(card, dict):
            continue
        card_path = f"cards[{card_index}]"
        suggestions = card.get("suggestions")
        owners = [(card_path, card)] + [
            (f"{card_path}.suggestions[{index}]", suggestion)
            for index, suggestion in enumerate(suggestions if isinstance(suggestions, list) else [])
            if isinstance(suggestion, dict)
        ]
        for owner_path, owner in owners:
            uuid = owner.get("uuid")
            if not isinstance(uuid, str) or not uuid:
                continue
            uuid_path = f"{owner_path}.uuid"
            if uuid in seen:
                yield error(uuid_path, f"must be unique; {seen[uuid]} has the same value")
            else:
                seen[uuid] = uuid_path
