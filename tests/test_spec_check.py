"""Pin the CDS Hooks 2.0 document checker: a valid document per kind, one mutation per rule."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from cds_service.spec_check import (
    CHECKERS,
    Violation,
    check_discovery,
    check_feedback,
    check_request,
    check_response,
    detect_kind,
)

DELETE = object()
_STEP = re.compile(r'\.?([A-Za-z_$][\w$]*)|\[(\d+)\]|\["([^"]+)"\]')


def mutate(doc: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Return a deep copy of doc with each path set to its value (DELETE removes it)."""
    result = copy.deepcopy(doc)
    for path, value in changes.items():
        steps: list[str | int] = []
        for match in _STEP.finditer(path):
            name, index, quoted = match.groups()
            steps.append(int(index) if index is not None else (name or quoted))
        parent: Any = result
        for step in steps[:-1]:
            parent = parent[step]
        last = steps[-1]
        if value is DELETE:
            del parent[last]
        elif isinstance(parent, list) and last == len(parent):
            parent.append(copy.deepcopy(value))
        else:
            parent[last] = copy.deepcopy(value)
    return result


def err(path: str, fragment: str) -> tuple[str, str, str]:
    return ("error", path, fragment)


def warn(path: str, fragment: str) -> tuple[str, str, str]:
    return ("warning", path, fragment)


def assert_violations(actual: list[Violation], expected: list[tuple[str, str, str]]) -> None:
    """Compare severities and paths exactly, and check each message names the problem."""
    assert sorted((v.severity, v.path) for v in actual) == sorted((s, p) for s, p, _ in expected)
    for severity, path, fragment in expected:
        messages = [v.message for v in actual if (v.severity, v.path) == (severity, path)]
        assert any(fragment in message for message in messages), (path, fragment, messages)


# ---------------------------------------------------------------------------------------------
# Minimal valid documents exercising every construct.
# ---------------------------------------------------------------------------------------------

CARD_UUID = "0f6b4c0e-5b2e-4f0a-9d55-3c1d8a7e2b10"
SUGGESTION_UUIDS = [
    "7a1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d",
    "8b2d3e4f-5061-4b7c-9d8e-0f1a2b3c4d5e",
    "9c3e4f50-6172-4c8d-ae9f-1a2b3c4d5e6f",
]
DRAFT_ORDER = {
    "resourceType": "MedicationRequest",
    "id": "vclo-1",
    "status": "draft",
    "intent": "order",
    "subject": {"reference": "Patient/pat-1"},
}

VALID_RESPONSE: dict[str, Any] = {
    "cards": [
        {
            "uuid": CARD_UUID,
            "summary": "Voclosporin with ketoconazole: strong CYP3A4 inhibitor, contraindicated",
            "detail": "Ketoconazole raises voclosporin exposure about **19-fold**.",
            "indicator": "critical",
            "source": {
                "label": "LUPKYNIS prescribing information",
                "url": "https://example.org/lupkynis-pi",
                "icon": "https://example.org/icon-100.png",
                "topic": {
                    "system": "http://example.org/topics",
                    "code": "ddi",
                    "display": "Drug interaction",
                },
            },
            "selectionBehavior": "at-most-one",
            "suggestions": [
                {
                    "label": "Cancel the voclosporin order",
                    "uuid": SUGGESTION_UUIDS[0],
                    "isRecommended": True,
                    "actions": [
                        {
                            "type": "delete",
                            "description": "Remove the draft voclosporin order",
                            "resourceId": "MedicationRequest/vclo-1",
                        }
                    ],
                },
                {
                    "label": "Keep voclosporin, mark it reviewed",
                    "uuid": SUGGESTION_UUIDS[1],
                    "actions": [
                        {
                            "type": "update",
                            "description": "Replace the draft order",
                            "resource": {**DRAFT_ORDER, "note": [{"text": "Reviewed"}]},
                        }
                    ],
                },
                {
                    "label": "Order an eGFR",
                    "uuid": SUGGESTION_UUIDS[2],
                    "actions": [
                        {
                            "type": "create",
                            "description": "Order a baseline eGFR",
                            "resource": {"resourceType": "ServiceRequest", "status": "draft"},
                        }
                    ],
                },
            ],
            "overrideReasons": [
                {
                    "code": "cds-not-applicable",
                    "system": "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes",
                    "display": "Not applicable",
                }
            ],
            "links": [
                {"label": "Label", "url": "https://example.org/label", "type": "absolute"},
                {
                    "label": "Dose calculator",
                    "url": "https://smart.example.org/launch",
                    "type": "smart",
                    "appContext": '{"order":"vclo-1"}',
                    "autolaunchable": False,
                },
            ],
        }
    ],
    "systemActions": [
        {
            "type": "update",
            "description": "Attach the interaction check to the order",
            "resource": DRAFT_ORDER,
        }
    ],
}

VALID_REQUEST: dict[str, Any] = {
    "hook": "order-select",
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "https://fhir.example.org/r4",
    "fhirAuthorization": {
        "access_token": "some-opaque-fhir-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read user/Observation.read",
        "subject": "voclosporin-cds",
    },
    "context": {
        "userId": "PractitionerRole/123",
        "patientId": "pat-1",
        "encounterId": "enc-1",
        "selections": ["MedicationRequest/vclo-1"],
        "draftOrders": {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": DRAFT_ORDER}],
        },
    },
    "prefetch": {
        "patient": {"resourceType": "Patient", "id": "pat-1"},
        "egfr": {"resourceType": "Bundle", "type": "searchset", "total": 0},
        "uacr": None,
    },
}

VALID_DISCOVERY: dict[str, Any] = {
    "services": [
        {
            "hook": "order-select",
            "title": "Voclosporin safety",
            "description": "Checks voclosporin orders for interactions, renal function and vitals",
            "id": "voclosporin-safety",
            "prefetch": {
                "patient": "Patient/{{context.patientId}}",
                "egfr": "Observation?patient={{context.patientId}}&code=33914-3&_count=1",
                "encounter": "Encounter/{{context.encounterId}}",
                "user": "PractitionerRole?_id={{userPractitionerRoleId}}",
            },
        },
        {
            "hook": "order-sign",
            "title": "Voclosporin safety",
            "description": "Checks voclosporin orders for interactions, renal function and vitals",
            "id": "voclosporin-safety",
            "usageRequirements": "Needs eGFR history",
        },
    ]
}

VALID_FEEDBACK: dict[str, Any] = {
    "feedback": [
        {
            "card": CARD_UUID,
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": SUGGESTION_UUIDS[0]}],
            "outcomeTimestamp": "2021-12-11T10:05:31Z",
        },
        {
            "card": CARD_UUID,
            "outcome": "overridden",
            "overrideReason": {
                "reason": {
                    "code": "cds-not-applicable",
                    "system": "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes",
                },
                "userComment": "Ketoconazole already stopped.",
            },
            "outcomeTimestamp": "1985-04-12T23:20:50.52Z",
        },
    ]
}


@pytest.mark.parametrize(
    ("checker", "doc"),
    [
        pytest.param(check_response, VALID_RESPONSE, id="response"),
        pytest.param(check_request, VALID_REQUEST, id="request"),
        pytest.param(check_discovery, VALID_DISCOVERY, id="discovery"),
        pytest.param(check_feedback, VALID_FEEDBACK, id="feedback"),
    ],
)
def test_valid_document_has_no_violations(checker: Any, doc: dict[str, Any]) -> None:
    """A document using every construct correctly yields neither errors nor warnings."""
    assert checker(doc) == []


@pytest.mark.parametrize(
    "checker", [check_response, check_request, check_discovery, check_feedback]
)
@pytest.mark.parametrize("doc", [[], "cards", None, 3], ids=["list", "string", "null", "number"])
def test_non_object_document_is_one_error(checker: Any, doc: object) -> None:
    """Every kind of CDS Hooks document is a JSON object; anything else is one root error."""
    assert_violations(checker(doc), [err("", "JSON object")])


# ---------------------------------------------------------------------------------------------
# Response rules.
# ---------------------------------------------------------------------------------------------

C = "cards[0]"
S = f"{C}.suggestions"
LINK = f"{C}.links"

RESPONSE_MUTATIONS = [
    pytest.param({"cards": DELETE}, [err("cards", "required")], id="cards-missing"),
    pytest.param({"cards": "none"}, [err("cards", "array")], id="cards-not-array"),
    pytest.param({C: "card"}, [err(C, "JSON object")], id="card-not-object"),
    pytest.param({"systemActions": "x"}, [err("systemActions", "array")], id="system-actions-type"),
    pytest.param(
        {"systemActions[0].description": DELETE},
        [err("systemActions[0].description", "required")],
        id="system-action-description-missing",
    ),
    pytest.param({f"{C}.summary": DELETE}, [err(f"{C}.summary", "required")], id="summary-missing"),
    pytest.param({f"{C}.summary": 42}, [err(f"{C}.summary", "string")], id="summary-not-string"),
    pytest.param({f"{C}.detail": 7}, [err(f"{C}.detail", "string")], id="detail-not-string"),
    pytest.param({f"{C}.uuid": 7}, [err(f"{C}.uuid", "string")], id="card-uuid-not-string"),
    pytest.param({f"{C}.uuid": DELETE}, [warn(f"{C}.uuid", "feedback")], id="card-uuid-missing"),
    pytest.param(
        {f"{C}.indicator": DELETE}, [err(f"{C}.indicator", "required")], id="indicator-missing"
    ),
    pytest.param(
        {f"{C}.indicator": "hard-stop"},
        [err(f"{C}.indicator", "info | warning | critical")],
        id="indicator-hard-stop",
    ),
    pytest.param({f"{C}.source": DELETE}, [err(f"{C}.source", "required")], id="source-missing"),
    pytest.param(
        {f"{C}.source.label": DELETE}, [err(f"{C}.source.label", "required")], id="source-label"
    ),
    pytest.param(
        {f"{C}.source.url": "/about"},
        [err(f"{C}.source.url", "absolute")],
        id="source-url-relative",
    ),
    pytest.param(
        {f"{C}.source.icon": "icon.png"},
        [err(f"{C}.source.icon", "absolute")],
        id="source-icon-relative",
    ),
    pytest.param(
        {f"{C}.source.topic.code": DELETE},
        [err(f"{C}.source.topic.code", "required")],
        id="topic-code-missing",
    ),
    pytest.param(
        {f"{C}.source.topic.system": DELETE},
        [err(f"{C}.source.topic.system", "required")],
        id="topic-system-missing",
    ),
    pytest.param({f"{C}.source.topic.display": DELETE}, [], id="topic-display-optional"),
    pytest.param(
        {f"{C}.selectionBehavior": DELETE},
        [err(f"{C}.selectionBehavior", "required when suggestions")],
        id="selection-behavior-missing",
    ),
    pytest.param(
        {f"{C}.selectionBehavior": "all"},
        [err(f"{C}.selectionBehavior", "at-most-one | any")],
        id="selection-behavior-invalid",
    ),
    pytest.param(
        {f"{S}[1].isRecommended": True},
        [err(S, "only one suggestion")],
        id="two-recommended-at-most-one",
    ),
    pytest.param(
        {f"{S}[1].isRecommended": True, f"{C}.selectionBehavior": "any"},
        [],
        id="two-recommended-any-allowed",
    ),
    pytest.param(
        {f"{S}[0].isRecommended": "yes"},
        [err(f"{S}[0].isRecommended", "boolean")],
        id="is-recommended-not-boolean",
    ),
    pytest.param(
        {f"{S}[0].label": DELETE}, [err(f"{S}[0].label", "required")], id="suggestion-label"
    ),
    pytest.param(
        {f"{S}[0].uuid": DELETE},
        [warn(f"{S}[0].uuid", "accepted")],
        id="suggestion-uuid-missing",
    ),
    pytest.param(
        {f"{S}[0].actions": {"type": "delete"}},
        [err(f"{S}[0].actions", "array")],
        id="suggestion-actions-not-array",
    ),
    pytest.param(
        {f"{S}[0].actions[0].type": DELETE},
        [err(f"{S}[0].actions[0].type", "required")],
        id="action-type-missing",
    ),
    pytest.param(
        {f"{S}[0].actions[0].type": "replace"},
        [err(f"{S}[0].actions[0].type", "create | update | delete")],
        id="action-type-invalid",
    ),
    pytest.param(
        {f"{S}[0].actions[0].description": DELETE},
        [err(f"{S}[0].actions[0].description", "required")],
        id="action-description-missing",
    ),
    pytest.param(
        {f"{S}[2].actions[0].resource": DELETE},
        [err(f"{S}[2].actions[0].resource", "required for a create")],
        id="create-without-resource",
    ),
    pytest.param(
        {f"{S}[2].actions[0].resource": "ServiceRequest/1"},
        [err(f"{S}[2].actions[0].resource", "FHIR resource")],
        id="create-resource-not-object",
    ),
    pytest.param(
        {f"{S}[2].actions[0].resource.resourceType": DELETE},
        [err(f"{S}[2].actions[0].resource.resourceType", "required")],
        id="create-resource-without-resource-type",
    ),
    pytest.param(
        {f"{S}[1].actions[0].resource": DELETE},
        [err(f"{S}[1].actions[0].resource", "required for a update")],
        id="update-without-resource",
    ),
    pytest.param(
        {f"{S}[1].actions[0].resource.id": DELETE},
        [warn(f"{S}[1].actions[0].resource.id", "whole resource")],
        id="update-resource-without-id",
    ),
    pytest.param(
        {f"{S}[0].actions[0].resourceId": DELETE},
        [err(f"{S}[0].actions[0].resourceId", "required for a delete")],
        id="delete-without-resource-id",
    ),
    pytest.param(
        {f"{S}[0].actions[0].resourceId": DELETE, f"{S}[0].actions[0].resource": "vclo-1"},
        [warn(f"{S}[0].actions[0].resource", "deprecated")],
        id="delete-with-resource-deprecated",
    ),
    pytest.param(
        {f"{S}[0].actions[0].resourceId": "vclo-1"},
        [warn(f"{S}[0].actions[0].resourceId", "relative reference")],
        id="resource-id-not-relative-reference",
    ),
    pytest.param(
        {f"{C}.overrideReasons[0].display": DELETE},
        [err(f"{C}.overrideReasons[0].display", "required")],
        id="override-reason-display-missing",
    ),
    pytest.param(
        {f"{C}.overrideReasons[0].code": DELETE},
        [err(f"{C}.overrideReasons[0].code", "required")],
        id="override-reason-code-missing",
    ),
    pytest.param(
        {f"{C}.overrideReasons[0].system": DELETE},
        [err(f"{C}.overrideReasons[0].system", "required")],
        id="override-reason-system-missing",
    ),
    pytest.param(
        {f"{LINK}[0].label": DELETE}, [err(f"{LINK}[0].label", "required")], id="link-label"
    ),
    pytest.param({f"{LINK}[0].url": DELETE}, [err(f"{LINK}[0].url", "required")], id="link-url"),
    pytest.param(
        {f"{LINK}[0].url": "label.html"},
        [err(f"{LINK}[0].url", "absolute")],
        id="link-url-relative",
    ),
    pytest.param({f"{LINK}[0].type": DELETE}, [err(f"{LINK}[0].type", "required")], id="link-type"),
    pytest.param(
        {f"{LINK}[0].type": "launch"},
        [err(f"{LINK}[0].type", "absolute | smart")],
        id="link-type-invalid",
    ),
    pytest.param(
        {f"{LINK}[0].appContext": "x"},
        [err(f"{LINK}[0].appContext", "smart")],
        id="app-context-on-absolute-link",
    ),
    pytest.param(
        {f"{LINK}[1].autolaunchable": "true"},
        [err(f"{LINK}[1].autolaunchable", "boolean")],
        id="autolaunchable-not-boolean",
    ),
    pytest.param(
        {f"{C}.overrideReason": [{"code": "x"}]},
        [warn(f"{C}.overrideReason", "extension")],
        id="unknown-card-field-typo",
    ),
    pytest.param(
        {f"{C}.extension": ["x"]}, [err(f"{C}.extension", "JSON object")], id="extension-not-object"
    ),
    pytest.param({f"{C}.extension": {"org.example.rule": "R1"}}, [], id="extension-object"),
    pytest.param(
        {"cards[1]": VALID_RESPONSE["cards"][0]},
        [
            err("cards[1].uuid", "unique"),
            *(err(f"cards[1].suggestions[{i}].uuid", "unique") for i in range(3)),
        ],
        id="duplicate-card",
    ),
    pytest.param(
        {f"{S}[1].uuid": SUGGESTION_UUIDS[0]},
        [err(f"{S}[1].uuid", "unique")],
        id="duplicate-suggestion-uuid",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), RESPONSE_MUTATIONS)
def test_response_rule(changes: dict[str, Any], expected: list[tuple[str, str, str]]) -> None:
    """Each broken response rule is reported once, at the path of the offending element."""
    assert_violations(check_response(mutate(VALID_RESPONSE, changes)), expected)


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        pytest.param(139, [], id="139-chars-passes"),
        pytest.param(140, [err(f"{C}.summary", "has 140")], id="140-chars-fails"),
        pytest.param(141, [err(f"{C}.summary", "has 141")], id="141-chars-fails"),
    ],
)
def test_summary_must_be_under_140_characters(
    length: int, expected: list[tuple[str, str, str]]
) -> None:
    """Summaries are '<140-character'; Inferno fails a summary of exactly 140."""
    doc = mutate(VALID_RESPONSE, {f"{C}.summary": "x" * length})
    assert_violations(check_response(doc), expected)


# ---------------------------------------------------------------------------------------------
# The null-and-empty rule (#use-of-json).
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({f"{C}.detail": None}, [err(f"{C}.detail", "null")], id="null-optional"),
        pytest.param({f"{C}.summary": None}, [err(f"{C}.summary", "null")], id="null-required"),
        pytest.param({f"{C}.detail": ""}, [err(f"{C}.detail", "empty string")], id="empty-string"),
        pytest.param({f"{C}.links": []}, [err(f"{C}.links", "empty array")], id="empty-array"),
        pytest.param(
            {f"{C}.extension": {}}, [err(f"{C}.extension", "empty object")], id="empty-object"
        ),
        pytest.param(
            {"systemActions": []}, [err("systemActions", "empty array")], id="empty-system-actions"
        ),
        pytest.param(
            {f"{S}[1].actions[0].resource.note": None},
            [err(f"{S}[1].actions[0].resource.note", "null")],
            id="null-inside-fhir-resource",
        ),
        pytest.param(
            {f"{S}[1].actions[0].resource.note[0].text": ""},
            [err(f"{S}[1].actions[0].resource.note[0].text", "empty string")],
            id="empty-string-deep-in-array",
        ),
    ],
)
def test_null_and_empty_values_are_errors(
    changes: dict[str, Any], expected: list[tuple[str, str, str]]
) -> None:
    """Null and empty values anywhere are errors, each reported once with its path."""
    assert_violations(check_response(mutate(VALID_RESPONSE, changes)), expected)


@pytest.mark.parametrize(
    ("checker", "valid", "changes", "expected"),
    [
        pytest.param(check_response, VALID_RESPONSE, {C: None}, [err(C, "null")], id="card"),
        pytest.param(
            check_response,
            VALID_RESPONSE,
            {f"{S}[2].actions[0].resource": None},
            [err(f"{S}[2].actions[0].resource", "null")],
            id="action-resource",
        ),
        pytest.param(
            check_request,
            VALID_REQUEST,
            {"context.selections[0]": None},
            [err("context.selections[0]", "null")],
            id="selection",
        ),
        pytest.param(
            check_discovery,
            VALID_DISCOVERY,
            {"services[0].prefetch.patient": None},
            [err("services[0].prefetch.patient", "null")],
            id="prefetch-template",
        ),
    ],
)
def test_null_in_place_of_a_structure_is_one_error(
    checker: Any, valid: dict[str, Any], changes: dict[str, Any], expected: list[Any]
) -> None:
    """A null where an object or string belongs gets the null error, not a type error too."""
    assert_violations(checker(mutate(valid, changes)), expected)


def test_empty_cards_array_means_no_guidance() -> None:
    """The spec's one named exception: "cards": [] is a valid "no guidance" response."""
    assert check_response({"cards": []}) == []


def test_prefetch_null_means_no_data() -> None:
    """A null prefetch value is allowed: the client has no data for that template."""
    doc = mutate(VALID_REQUEST, {'prefetch["hemoglobin-a1c"]': None})
    assert check_request(doc) == []


def test_null_outside_prefetch_values_is_still_an_error() -> None:
    """Only prefetch values may be null in a request; null context fields are errors."""
    doc = mutate(VALID_REQUEST, {"context.encounterId": None, "prefetch": {}})
    assert_violations(
        check_request(doc),
        [err("context.encounterId", "null"), err("prefetch", "empty object")],
    )


def test_empty_services_array_means_no_services() -> None:
    """A server hosting no services answers discovery with an empty services array."""
    assert check_discovery({"services": []}) == []


# ---------------------------------------------------------------------------------------------
# Request rules.
# ---------------------------------------------------------------------------------------------

AUTH = "fhirAuthorization"
SEL = "context.selections"

REQUEST_MUTATIONS = [
    pytest.param({"hook": DELETE}, [err("hook", "required")], id="hook-missing"),
    pytest.param({"hook": 1}, [err("hook", "string")], id="hook-not-string"),
    pytest.param(
        {"hookInstance": DELETE}, [err("hookInstance", "required")], id="hook-instance-missing"
    ),
    pytest.param(
        {"hookInstance": "call-42"}, [err("hookInstance", "UUID")], id="hook-instance-uuid"
    ),
    pytest.param(
        {"fhirServer": DELETE}, [err("fhirServer", "fhirAuthorization")], id="fhir-server-missing"
    ),
    pytest.param({"fhirServer": "fhir/r4"}, [err("fhirServer", "absolute")], id="fhir-server-url"),
    pytest.param({"fhirServer": DELETE, AUTH: DELETE}, [], id="no-fhir-access-is-fine"),
    *(
        pytest.param(
            {f"{AUTH}.{field}": DELETE}, [err(f"{AUTH}.{field}", "required")], id=f"auth-{field}"
        )
        for field in ("access_token", "token_type", "expires_in", "scope", "subject")
    ),
    pytest.param(
        {f"{AUTH}.token_type": "bearer"}, [err(f"{AUTH}.token_type", "Bearer")], id="token-type"
    ),
    pytest.param(
        {f"{AUTH}.expires_in": "300"}, [err(f"{AUTH}.expires_in", "integer")], id="expires-in-str"
    ),
    pytest.param(
        {f"{AUTH}.expires_in": True}, [err(f"{AUTH}.expires_in", "integer")], id="expires-in-bool"
    ),
    pytest.param(
        {f"{AUTH}.scope": "patient/Observation.read"},
        [warn(f"{AUTH}.patient", "patient/ scopes")],
        id="patient-scope-without-patient",
    ),
    pytest.param(
        {f"{AUTH}.scope": "patient/Observation.read", f"{AUTH}.patient": "pat-1"},
        [],
        id="patient-scope-with-patient",
    ),
    pytest.param({"context": DELETE}, [err("context", "required")], id="context-missing"),
    pytest.param({"context": ["x"]}, [err("context", "JSON object")], id="context-not-object"),
    pytest.param(
        {"context.userId": DELETE}, [err("context.userId", "required")], id="user-id-missing"
    ),
    pytest.param(
        {"context.userId": "123"}, [err("context.userId", "reference")], id="user-id-bare"
    ),
    pytest.param(
        {"context.userId": "Device/1"}, [err("context.userId", "reference")], id="user-id-device"
    ),
    pytest.param({"context.userId": "Patient/pat-1"}, [], id="user-id-patient"),
    pytest.param({"context.userId": "RelatedPerson/rp-1"}, [], id="user-id-related-person"),
    pytest.param(
        {"context.patientId": DELETE},
        [err("context.patientId", "required")],
        id="patient-id-missing",
    ),
    pytest.param(
        {"context.patientId": "Patient/pat-1"},
        [err("context.patientId", "bare FHIR id")],
        id="patient-id-reference",
    ),
    pytest.param({"context.encounterId": DELETE}, [], id="encounter-id-optional"),
    pytest.param({SEL: DELETE}, [err(SEL, "required")], id="selections-missing"),
    pytest.param({SEL: "MedicationRequest/vclo-1"}, [err(SEL, "array")], id="selections-str"),
    pytest.param({f"{SEL}[0]": 5}, [err(f"{SEL}[0]", "string")], id="selection-not-string"),
    pytest.param(
        {f"{SEL}[0]": "MedicationRequest/other"},
        [err(f"{SEL}[0]", "draftOrders")],
        id="selection-not-in-draft-orders",
    ),
    pytest.param(
        {"context.draftOrders": DELETE},
        [err("context.draftOrders", "required")],
        id="draft-orders-missing",
    ),
    pytest.param(
        {"context.draftOrders": DRAFT_ORDER},
        [err("context.draftOrders", "Bundle")],
        id="draft-orders-not-bundle",
    ),
    pytest.param(
        {"context.draftOrders.entry[1]": {"fullUrl": "urn:uuid:9d1f"}},
        [],
        id="draft-entry-without-resource",
    ),
    pytest.param({"hook": "order-sign", SEL: DELETE}, [], id="order-sign"),
    pytest.param(
        {"hook": "order-sign", "context.draftOrders": DELETE},
        [err("context.draftOrders", "required")],
        id="order-sign-draft-orders-missing",
    ),
    pytest.param(
        {"hook": "patient-view", SEL: DELETE, "context.draftOrders": DELETE}, [], id="patient-view"
    ),
    pytest.param(
        {
            "hook": "medication-prescribe",
            SEL: DELETE,
            "context.medications": VALID_REQUEST["context"]["draftOrders"],
            "context.draftOrders": DELETE,
        },
        [warn("hook", "deprecated")],
        id="medication-prescribe-deprecated",
    ),
    pytest.param(
        {"hook": "medication-prescribe", SEL: DELETE},
        [warn("hook", "deprecated"), err("context.medications", "required")],
        id="medication-prescribe-medications-missing",
    ),
    pytest.param(
        {"hook": "encounter-discharge", "context": {"anything": "goes"}},
        [warn("hook", "unknown hook")],
        id="unknown-hook-warning-only",
    ),
    pytest.param(
        {"prefetch.patient": "123"},
        [err("prefetch.patient", "FHIR resource")],
        id="prefetch-value-string",
    ),
    pytest.param(
        {"prefetch.patient": {"id": "pat-1"}},
        [err("prefetch.patient.resourceType", "required")],
        id="prefetch-value-without-resource-type",
    ),
    pytest.param(
        {"prefetch.patient.resourceType": 5},
        [err("prefetch.patient.resourceType", "string")],
        id="prefetch-resource-type-not-string",
    ),
    pytest.param(
        {"prefetch.patient.resourceType": ""},
        [err("prefetch.patient.resourceType", "empty string")],
        id="prefetch-resource-type-empty",
    ),
    pytest.param({"prefetch": "x"}, [err("prefetch", "JSON object")], id="prefetch-not-object"),
    pytest.param(
        {"hookinstance": "x"}, [warn("hookinstance", "not defined")], id="unknown-request-field"
    ),
]


@pytest.mark.parametrize(("changes", "expected"), REQUEST_MUTATIONS)
def test_request_rule(changes: dict[str, Any], expected: list[tuple[str, str, str]]) -> None:
    """Each broken request rule is reported at the path of the offending element."""
    assert_violations(check_request(mutate(VALID_REQUEST, changes)), expected)


def test_prefetch_key_with_dash_is_quoted_in_the_path() -> None:
    """Keys that are not identifiers are quoted, so the path stays unambiguous."""
    doc = mutate(VALID_REQUEST, {'prefetch["hemoglobin-a1c"]': "4548-4"})
    assert_violations(check_request(doc), [err('prefetch["hemoglobin-a1c"]', "FHIR resource")])


# ---------------------------------------------------------------------------------------------
# Discovery rules and prefetch tokens.
# ---------------------------------------------------------------------------------------------

SVC = "services[0]"
TEMPLATE = f"{SVC}.prefetch.patient"

DISCOVERY_MUTATIONS = [
    pytest.param({"services": DELETE}, [err("services", "required")], id="services-missing"),
    pytest.param({"services": {}}, [err("services", "array"), err("services", "empty")], id="obj"),
    *(
        pytest.param({f"{SVC}.{field}": DELETE}, [err(f"{SVC}.{field}", "required")], id=field)
        for field in ("id", "hook", "description")
    ),
    pytest.param({"services[1]": "svc"}, [err("services[1]", "JSON object")], id="not-object"),
    pytest.param({f"{SVC}.title": DELETE}, [warn(f"{SVC}.title", "recommended")], id="title"),
    pytest.param({f"{SVC}.title": 3}, [err(f"{SVC}.title", "string")], id="title-not-string"),
    pytest.param(
        {f"{SVC}.prefetch": "Patient/1"}, [err(f"{SVC}.prefetch", "object")], id="prefetch-str"
    ),
    pytest.param({TEMPLATE: 42}, [err(TEMPLATE, "template")], id="template-not-string"),
    pytest.param(
        {TEMPLATE: "Bundle?_id={{context.draftOrders}}"},
        [err(TEMPLATE, "not a prefetch token field of order-select")],
        id="token-non-primitive-context-field",
    ),
    pytest.param(
        {TEMPLATE: "MedicationRequest/{{context.draftOrders.entry.resource.id}}"},
        [err(TEMPLATE, "root-level")],
        id="token-nested-context-path",
    ),
    pytest.param(
        {TEMPLATE: "Patient/{{patientId}}"},
        [err(TEMPLATE, "not a prefetch token")],
        id="token-bare",
    ),
    pytest.param(
        {TEMPLATE: "Patient/{{ context.patientId }}"},
        [err(TEMPLATE, "not a prefetch token")],
        id="token-with-spaces",
    ),
    pytest.param(
        {TEMPLATE: "Patient/{{context.patientId}"}, [err(TEMPLATE, "matching")], id="token-open"
    ),
    pytest.param(
        {TEMPLATE: "Practitioner/{{userPractitionerId}}"}, [], id="token-user-practitioner"
    ),
    pytest.param({TEMPLATE: "Patient/{{userPatientId}}"}, [], id="token-user-patient"),
    pytest.param(
        {TEMPLATE: "RelatedPerson/{{userRelatedPersonId}}"}, [], id="token-user-related-person"
    ),
    pytest.param({TEMPLATE: "{{context.userId}}"}, [], id="token-user-id-read"),
    pytest.param(
        {f"{SVC}.hook": "appointment-book", TEMPLATE: "Patient/{{context.subjectId}}"},
        [],
        id="token-unknown-hook-any-root-field",
    ),
    pytest.param(
        {"services[1].hook": "order-select"},
        [err("services[1]", "repeats")],
        id="duplicate-id-and-hook",
    ),
    pytest.param({"services[1].id": "other-service"}, [], id="two-ids-two-hooks"),
    pytest.param(
        {f"{SVC}.id": {"id": "voclosporin-safety"}},
        [err(f"{SVC}.id", "string")],
        id="id-object-is-a-type-error-not-a-crash",
    ),
    pytest.param(
        {f"{SVC}.hook": ["order-sign"], "services[1].hook": ["order-sign"]},
        [err(f"{SVC}.hook", "string"), err("services[1].hook", "string")],
        id="hooks-arrays-are-type-errors-not-duplicates",
    ),
    pytest.param({f"{SVC}.version": "2.0"}, [warn(f"{SVC}.version", "extension")], id="unknown"),
]


@pytest.mark.parametrize(("changes", "expected"), DISCOVERY_MUTATIONS)
def test_discovery_rule(changes: dict[str, Any], expected: list[tuple[str, str, str]]) -> None:
    """Each broken discovery or prefetch-token rule is reported at its path."""
    assert_violations(check_discovery(mutate(VALID_DISCOVERY, changes)), expected)


def test_one_id_for_several_hooks_is_update_stale_guidance() -> None:
    """#update-stale-guidance: one id listed for order-select and order-sign passes; a third
    entry for a hook that id already serves is the only duplicate."""
    shared = VALID_DISCOVERY["services"]
    assert {s["id"] for s in shared} == {"voclosporin-safety"}
    assert check_discovery(VALID_DISCOVERY) == []
    doc = {"services": [*shared, {**shared[1], "title": "Again"}]}
    assert_violations(check_discovery(doc), [err("services[2]", "repeats the id and hook")])


@pytest.mark.parametrize(
    "bad_id", [{"value": "x"}, ["x"], 7, None], ids=["object", "array", "number", "null"]
)
def test_non_string_ids_never_crash_the_duplicate_check(bad_id: Any) -> None:
    """Two entries whose id is not a string are each a type error, never a TypeError."""
    entry = {**VALID_DISCOVERY["services"][1], "id": bad_id}
    violations = check_discovery({"services": [entry, entry]})
    assert [v.path for v in violations if "repeats" in v.message] == []
    assert {v.path for v in violations if v.severity == "error"} == {
        "services[0].id",
        "services[1].id",
    }


# ---------------------------------------------------------------------------------------------
# Feedback rules.
# ---------------------------------------------------------------------------------------------

FB = "feedback[0]"
OVR = "feedback[1].overrideReason"

FEEDBACK_MUTATIONS = [
    pytest.param({"feedback": DELETE}, [err("feedback", "required")], id="feedback-missing"),
    pytest.param({"feedback": []}, [err("feedback", "empty array")], id="feedback-empty"),
    pytest.param({f"{FB}.card": DELETE}, [err(f"{FB}.card", "required")], id="card-missing"),
    pytest.param({f"{FB}.outcome": DELETE}, [err(f"{FB}.outcome", "required")], id="outcome"),
    pytest.param(
        {f"{FB}.outcome": "rejected"},
        [err(f"{FB}.outcome", "accepted | overridden")],
        id="outcome-invalid",
    ),
    pytest.param(
        {f"{FB}.acceptedSuggestions": DELETE},
        [err(f"{FB}.acceptedSuggestions", "accepted")],
        id="accepted-without-suggestions",
    ),
    pytest.param(
        {f"{FB}.acceptedSuggestions[0].id": DELETE},
        [
            err(f"{FB}.acceptedSuggestions[0].id", "required"),
            err(f"{FB}.acceptedSuggestions[0]", "empty object"),
        ],
        id="accepted-suggestion-id-missing",
    ),
    pytest.param(
        {"feedback[1].acceptedSuggestions": [{"id": "x"}]},
        [warn("feedback[1].acceptedSuggestions", "overridden")],
        id="overridden-with-accepted-suggestions",
    ),
    pytest.param(
        {f"{FB}.overrideReason": {"userComment": "x"}},
        [warn(f"{FB}.overrideReason", "accepted")],
        id="accepted-with-override-reason",
    ),
    pytest.param({f"{OVR}.reason": DELETE}, [], id="override-comment-only"),
    pytest.param({f"{OVR}.userComment": DELETE}, [], id="override-reason-only"),
    pytest.param({OVR: DELETE}, [], id="overridden-without-reason"),
    pytest.param(
        {OVR: {"comment": "x"}},
        [err(OVR, "reason Coding"), warn(f"{OVR}.comment", "not defined")],
        id="override-reason-neither",
    ),
    pytest.param(
        {f"{OVR}.reason.system": DELETE},
        [err(f"{OVR}.reason.system", "required")],
        id="override-reason-coding-system",
    ),
    pytest.param(
        {f"{FB}.outcomeTimestamp": DELETE},
        [err(f"{FB}.outcomeTimestamp", "required")],
        id="timestamp-missing",
    ),
    pytest.param(
        {f"{FB}.outcomeTimestamp": "2021-12-11T10:05:31"},
        [err(f"{FB}.outcomeTimestamp", "time zone")],
        id="timestamp-without-zone",
    ),
    pytest.param(
        {f"{FB}.outcomeTimestamp": "2021-12-11 10:05:31Z"},
        [err(f"{FB}.outcomeTimestamp", "RFC 3339")],
        id="timestamp-space-separator",
    ),
    pytest.param(
        {f"{FB}.outcomeTimestamp": "2021-13-11T10:05:31Z"},
        [err(f"{FB}.outcomeTimestamp", "real date")],
        id="timestamp-month-13",
    ),
    pytest.param(
        {f"{FB}.outcomeTimestamp": "2021-12-11T11:05:31+01:00"},
        [warn(f"{FB}.outcomeTimestamp", "UTC")],
        id="timestamp-not-utc",
    ),
    pytest.param({f"{FB}.outcomeTimestamp": "2021-12-11T10:05:31+00:00"}, [], id="timestamp-utc"),
]


@pytest.mark.parametrize(("changes", "expected"), FEEDBACK_MUTATIONS)
def test_feedback_rule(changes: dict[str, Any], expected: list[tuple[str, str, str]]) -> None:
    """Each broken feedback rule is reported at its path."""
    assert_violations(check_feedback(mutate(VALID_FEEDBACK, changes)), expected)


# ---------------------------------------------------------------------------------------------
# The specification's own examples, verbatim from CDS Hooks 2.0.1 ({% raw %} markup resolved).
# ---------------------------------------------------------------------------------------------

SPEC_DISCOVERY = """
{
  "services": [
    {
      "hook": "patient-view",
      "title": "Static CDS Service Example",
      "description": "An example of a CDS Service that returns a static set of cards",
      "id": "static-patient-greeter",
      "prefetch": {
        "patientToGreet": "Patient/{{context.patientId}}"
      }
    },
    {
      "hook": "order-select",
      "title": "Order Echo CDS Service",
      "description": "An example of a CDS Service that simply echoes the order(s) being placed",
      "id": "order-echo",
      "prefetch": {
        "patient": "Patient/{{context.patientId}}",
        "medications": "MedicationRequest?patient={{context.patientId}}"
      }
    },
    {
      "hook": "order-sign",
      "title": "Pharmacogenomics CDS Service",
      "description": "An example of a more advanced, precision medicine CDS Service",
      "id": "pgx-on-order-sign",
      "usageRequirements": "Note: functionality of this CDS Service is degraded without access to a FHIR Restful API as part of CDS recommendation generation."
    }
  ]
}
"""  # noqa: E501 (verbatim spec text)

SPEC_DISCOVERY_EXTENSION = """
{
  "services": [
    {
      "title": "Example CDS Service Discovery",
      "hook": "patient-view",
      "id": "patientview",
      "prefetch": {
        "patient": "Patient/{{context.patientId}}"
      },
      "description": "clinical decision support for patient view",
      "extension": {
        "com.example.clientConformance": "http://hooks.example.org/fhir/102/Conformance/patientview"
      }
    }
  ]
}
"""

SPEC_PREFETCH_TEMPLATES = """
{
  "prefetch": {
    "patient": "Patient/{{context.patientId}}",
    "hemoglobin-a1c": "Observation?patient={{context.patientId}}&code=4548-4&_count=1&sort:desc=date",
    "diabetes-type2": "Condition?patient={{context.patientId}}&code=44054006&category=problem-list-item&status=active",
    "user": "PractitionerRole?_id={{userPractitionerRoleId}}"
  }
}
"""  # noqa: E501 (verbatim spec text)

SPEC_REQUEST = """
{
  "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
  "fhirServer": "http://hooks.smarthealthit.org:9080",
  "hook": "patient-view",
  "fhirAuthorization": {
    "access_token": "some-opaque-fhir-access-token",
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "user/Patient.read user/Observation.read",
    "subject": "cds-service4"
  },
  "context": {
    "userId": "Practitioner/example",
    "patientId": "1288992",
    "encounterId": "89284"
  },
  "prefetch": {
    "patientToGreet": {
      "resourceType": "Patient",
      "gender": "male",
      "birthDate": "1925-12-23",
      "id": "1288992",
      "active": true
    }
  }
}
"""

SPEC_REQUEST_EXTENSION = """
{
  "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
  "fhirServer": "http://fhir.example.org:9080",
  "hook": "patient-view",
  "context": {
    "userId": "Practitioner/example"
  },
  "extension": {
    "com.example.timestamp": "2017-11-27T22:13:25Z",
    "com.cds-hooks.sandbox.myextension-practitionerspecialty": "gastroenterology"
  }
}
"""

SPEC_RESPONSE = """
{
  "cards": [
    {
      "uuid": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
      "summary": "Example Card",
      "indicator": "info",
      "detail": "This is an example card.",
      "source": {
        "label": "Static CDS Service Example",
        "url": "https://example.com",
        "icon": "https://example.com/img/icon-100px.png"
      },
      "links": [
        {
          "label": "Google",
          "url": "https://google.com",
          "type": "absolute"
        },
        {
          "label": "Github",
          "url": "https://github.com",
          "type": "absolute"
        },
        {
          "label": "SMART Example App",
          "url": "https://smart.example.com/launch",
          "type": "smart",
          "appContext": "{\\"session\\":3456356,\\"settings\\":{\\"module\\":4235}}"
        }
      ]
    },
    {
      "summary": "Another card",
      "indicator": "warning",
      "source": {
        "label": "Static CDS Service Example"
      },
      "overrideReasons": [
        {
          "code": "reason-code-provided-by-service",
          "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
          "display": "Patient refused"
        },
        {
          "code": "12354",
          "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
          "display": "Contraindicated"
        }
      ]
    }
  ]
}
"""

SPEC_RESPONSE_AUTOLAUNCHABLE = """
{
  "cards": [
    {
      "uuid": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
      "summary": "Lung cancer screening shared decision making",
      "detail": "Patient is a current smoker with a 20 pack/year history. Consider advising patient to complete lung cancer screening. The Lung Cancer Screening Shared Decision Making App (LCSSDM) has been proven to increase patient followthrough for screening.",
      "source": {
        "label": "Lung Cancer Screening Shared Decision Making App",
        "url": "https://example.com/LCS",
        "icon": "https://example.com/img/icon-100px.png"
      },
      "links": [
        {
          "label": "Github",
          "url": "https://github.com",
          "type": "absolute",
          "autolaunchable": true
        }
      ]
    }
  ]
}
"""  # noqa: E501 (verbatim spec text)

SPEC_SYSTEM_ACTIONS = """
{
  "cards": [],
  "systemActions": [
    {
      "type": "update",
      "resource": {
        "resourceType": "ServiceRequest",
        "id": "example-MRI-59879846",
        "...": "<snipped for brevity"
      }
    }
  ]
}
"""

# The Source, Action and overrideReasons snippets of #card-attributes, assembled into one card.
SPEC_SNIPPETS_AS_CARD = """
{
  "cards": [
    {
      "uuid": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
      "summary": "Example Card",
      "indicator": "info",
      "source": {
        "label": "Zika Virus Management",
        "url": "https://example.com/cdc-zika-virus-mgmt",
        "icon": "https://example.com/cdc-zika-virus-mgmt/100.png",
        "topic": {
          "system": "http://example.org/cds-services/fhir/CodeSystem/topics",
          "code": "12345",
          "display": "Mosquito born virus"
        }
      },
      "selectionBehavior": "any",
      "suggestions": [
        {
          "label": "Apply the example actions",
          "uuid": "e56e1945-20b3-4393-8503-a1a20fd73152",
          "actions": [
            {
              "type": "create",
              "description": "Create a prescription for Acetaminophen 250 MG",
              "resource": {
                "resourceType": "MedicationRequest",
                "id": "medrx001",
                "...": "<snipped for brevity>"
              }
            },
            {
              "type": "update",
              "description": "Update the order to record the appropriateness score",
              "resource": {
                "resourceType": "ServiceRequest",
                "id": "procedure-request-1",
                "...": "<snipped for brevity>"
              }
            },
            {
              "type": "delete",
              "description": "Remove the inappropriate order",
              "resourceId": "ServiceRequest/procedure-request-1"
            }
          ]
        }
      ],
      "overrideReasons": [
        {
          "code": "reason-code-provided-by-service",
          "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
          "display": "Patient refused"
        },
        {
          "code": "12354",
          "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
          "display": "Contraindicated"
        }
      ]
    }
  ]
}
"""

SPEC_FEEDBACK_ACCEPTED = """
{
  "feedback": [
    {
      "card": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
      "outcome": "accepted",
      "acceptedSuggestions": [
        {
          "id": "e56e1945-20b3-4393-8503-a1a20fd73152"
        }
      ],
      "outcomeTimestamp": "2021-12-11T10:05:31Z"
    }
  ]
}
"""

SPEC_FEEDBACK_OVERRIDDEN = """
{
  "feedback": [
    {
      "card": "f6b95768-b1c8-40dc-8385-bf3504b82ffb",
      "outcome": "overridden",
      "outcomeTimestamp": "2020-12-11T00:00:00Z"
    }
  ]
}
"""

SPEC_FEEDBACK_OVERRIDE_REASON = """
{
   "feedback":[
      {
         "card":"9368d37b-283f-44a0-93ea-547cebab93ed",
         "outcome":"overridden",
         "overrideReason":{
            "reason":{
               "code":"d7ecf885",
               "system":"https://example.com/cds-hooks/override-reason-system"
            },
            "userComment":"A comment entered by the clinician."
         },
         "outcomeTimestamp":"2020-12-11T00:00:00Z"
      }
   ]
}
"""


def _service_with(prefetch_example: str) -> dict[str, Any]:
    """Wrap the spec's bare prefetch example in a patient-view service entry."""
    service = {"hook": "patient-view", "title": "t", "description": "d", "id": "example"}
    return {"services": [{**service, **json.loads(prefetch_example)}]}


@pytest.mark.parametrize(
    ("checker", "example", "expected"),
    [
        pytest.param(check_discovery, SPEC_DISCOVERY, [], id="discovery"),
        pytest.param(check_discovery, SPEC_DISCOVERY_EXTENSION, [], id="discovery-extension"),
        pytest.param(check_request, SPEC_REQUEST, [], id="request"),
        pytest.param(
            check_response,
            SPEC_RESPONSE,
            [warn("cards[1].uuid", "feedback")],
            id="response-second-card-has-no-uuid",
        ),
        pytest.param(
            check_response, SPEC_SNIPPETS_AS_CARD, [], id="source-action-override-snippets"
        ),
        pytest.param(check_feedback, SPEC_FEEDBACK_ACCEPTED, [], id="feedback-accepted"),
        pytest.param(check_feedback, SPEC_FEEDBACK_OVERRIDDEN, [], id="feedback-overridden"),
        pytest.param(check_feedback, SPEC_FEEDBACK_OVERRIDE_REASON, [], id="feedback-reason"),
    ],
)
def test_spec_example_passes(checker: Any, example: str, expected: list[Any]) -> None:
    """The specification's own examples carry no errors (only the warnings they earn)."""
    assert_violations(checker(json.loads(example)), expected)


def test_spec_prefetch_template_example_passes() -> None:
    """The spec's example prefetch templates use only valid tokens."""
    assert check_discovery(_service_with(SPEC_PREFETCH_TEMPLATES)) == []


@pytest.mark.parametrize(
    ("checker", "example", "expected"),
    [
        pytest.param(
            check_response,
            SPEC_RESPONSE_AUTOLAUNCHABLE,
            [err("cards[0].indicator", "required")],
            id="autolaunchable-example-omits-indicator",
        ),
        pytest.param(
            check_response,
            SPEC_SYSTEM_ACTIONS,
            [err("systemActions[0].description", "required")],
            id="system-action-example-omits-description",
        ),
        pytest.param(
            check_request,
            SPEC_REQUEST_EXTENSION,
            [err("context.patientId", "required")],
            id="extension-example-omits-patient-id",
        ),
    ],
)
def test_spec_example_errata_are_caught(checker: Any, example: str, expected: list[Any]) -> None:
    """Spec snippets that break the spec's own REQUIRED fields get exactly that one error."""
    assert_violations(checker(json.loads(example)), expected)


# ---------------------------------------------------------------------------------------------
# Kind detection and reporting.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "kind"),
    [
        pytest.param(VALID_REQUEST, "request", id="request"),
        pytest.param({"cards": []}, "response", id="response"),
        pytest.param({"systemActions": [{}]}, "response", id="system-actions-only"),
        pytest.param(VALID_DISCOVERY, "discovery", id="discovery"),
        pytest.param(VALID_FEEDBACK, "feedback", id="feedback"),
        pytest.param({"resourceType": "Patient"}, None, id="fhir-resource"),
        pytest.param({}, None, id="empty-object"),
        pytest.param([VALID_REQUEST], None, id="array"),
    ],
)
def test_detect_kind(doc: object, kind: str | None) -> None:
    """The top-level keys pick the checker, so a file needs no --kind flag."""
    assert detect_kind(doc) == kind


def test_checkers_cover_every_detected_kind() -> None:
    """Each kind detect_kind can return has a checker registered for it."""
    assert set(CHECKERS) == {"request", "response", "discovery", "feedback"}
    assert CHECKERS["response"] is check_response


def test_violation_renders_for_humans() -> None:
    """str(violation) reads as one line a CLI can print; the root path is named."""
    assert str(Violation("cards[0].summary", "is required", "error")) == (
        "error: cards[0].summary: is required"
    )
    assert str(Violation("", "must be a JSON object", "error")) == (
        "error: (document): must be a JSON object"
    )
