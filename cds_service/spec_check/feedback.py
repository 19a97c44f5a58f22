"""Check a feedback POST body: each card's outcome, accepted suggestions and override reason."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import datetime

from .core import (
    Field,
    JsonObject,
    Violation,
    allow_nothing,
    check_fields,
    coding,
    each,
    error,
    join,
    one,
    run,
    warning,
)

FEEDBACK_REQUEST: Mapping[str, Field] = {"feedback": Field("array", required=True)}
FEEDBACK: Mapping[str, Field] = {
    "card": Field("string", required=True),
    "outcome": Field("string", required=True, choices=("accepted", "overridden")),
    "acceptedSuggestions": Field("array"),
    "overrideReason": Field("object"),
    "outcomeTimestamp": Field("string", required=True),
}
ACCEPTED_SUGGESTION: Mapping[str, Field] = {"id": Field("string", required=True)}
OVERRIDE_REASON: Mapping[str, Field] = {
    "reason": Field("object"),
    "userComment": Field("string"),
}

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def check_feedback(doc: object) -> list[Violation]:
    """Check a feedback POST body (#feedback)."""
    return run(doc, _feedback_request, allow_nothing)


def _feedback_request(doc: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(doc, path, FEEDBACK_REQUEST)
    yield from each(doc, "feedback", path, _feedback)


def _feedback(feedback: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(feedback, path, FEEDBACK)
    outcome = feedback.get("outcome")
    if outcome == "accepted" and "acceptedSuggestions" not in feedback:
        yield error(join(path, "acceptedSuggestions"), "is required for an accepted outcome")
    if outcome == "overridden" and "acceptedSuggestions" in feedback:
        yield warning(join(path, "acceptedSuggestions"), "makes no sense for an overridden card")
    if outcome == "accepted" and "overrideReason" in feedback:
        yield warning(join(path, "overrideReason"), "makes no sense for an accepted card")
    yield from each(feedback, "acceptedSuggestions", path, _accepted_suggestion)
    yield from one(feedback, "overrideReason", path, _override_reason)
    timestamp = feedback.get("outcomeTimestamp")
    if isinstance(timestamp, str) and timestamp:
        yield from _timestamp(timestamp, join(path, "outcomeTimestamp"))


def _accepted_suggestion(accepted: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(accepted, path, ACCEPTED_SUGGESTION)


def _override_reason(reason: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(reason, path, OVERRIDE_REASON)
    yield from one(reason, "reason", path, coding)
    if reason and not {"reason", "userComment"} & reason.keys():
        yield error(path, "needs a reason Coding, a userComment, or both (#overridereason)")


def _timestamp(value: str, path: str) -> Iterator[Violation]:
    """Require an RFC 3339 date-time with a time zone (section 5.6), ideally in UTC."""
    if not _RFC3339.fullmatch(value):
        yield error(path, "must be an RFC 3339 date-time with time zone, e.g. 2021-12-11T10:05:31Z")
        return
    try:
        moment = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        yield error(path, "is not a real date and time")
        return
    if moment.utcoffset():
        yield warning(path, "should be in UTC (#feedback)")
