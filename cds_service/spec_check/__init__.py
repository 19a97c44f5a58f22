"""Check CDS Hooks 2.0 JSON documents against the rules of the specification.

Stdlib only, and only relative imports inside, so anyone building a CDS Client or CDS Service
can copy this folder. Each ``check_*`` function takes a parsed JSON document and returns every
``Violation`` it finds; an empty list means the document keeps every rule checked here. An
*error* breaks a SHALL/MUST of CDS Hooks 2.0.1 (https://cds-hooks.hl7.org/2.0/, anchors quoted
in the messages); a *warning* flags a SHOULD, a deprecated form, or something that silently
disables a feature (a card without ``uuid`` can never receive feedback).

Paths name the offending element: ``cards[0].suggestions[1].actions[0].resource``. Keys that
are not plain identifiers are quoted (``prefetch["hemoglobin-a1c"]``); the document itself
is ``""``.

The rooms:

    core.py           Violation, Field, the contract limits, the walking helpers
    hooks.py          each known hook's context table (add a hook here)
    hook_requests.py  the hook call: request, fhirAuthorization, context, prefetch data
    responses.py      cards, source, suggestions, actions, links, systemActions
    discovery.py      services and their prefetch templates
    feedback.py       feedback outcomes, accepted suggestions, override reasons
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .core import FHIR_ID, Kind, Severity, Violation
from .discovery import check_discovery
from .feedback import check_feedback
from .hook_requests import check_request
from .responses import check_response

__all__ = [
    "CHECKERS",
    "FHIR_ID",
    "Kind",
    "Severity",
    "Violation",
    "check_discovery",
    "check_feedback",
    "check_request",
    "check_response",
    "detect_kind",
]


def detect_kind(doc: object) -> Kind | None:
    """Guess which CDS Hooks document this is from its top-level keys, so files need no flag."""
    if not isinstance(doc, dict):
        return None
    for kind, markers in _KIND_MARKERS:
        if markers & doc.keys():
            return kind
    return None


CHECKERS: Mapping[Kind, Callable[[object], list[Violation]]] = {
    "request": check_request,
    "response": check_response,
    "discovery": check_discovery,
    "feedback": check_feedback,
}

_KIND_MARKERS: tuple[tuple[Kind, frozenset[str]], ...] = (
    ("discovery", frozenset({"services"})),
    ("feedback", frozenset({"feedback"})),
    ("response", frozenset({"cards", "systemActions"})),
    ("request", frozenset({"hook", "hookInstance", "context"})),
)
