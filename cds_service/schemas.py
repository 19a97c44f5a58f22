"""Marshmallow wire schemas: hook request, per-hook context, feedback and discovery.

Marshmallow stays where it validates input; everything the schemas load is snake_case
(camelCase only via ``data_key``). Cards are not dumped through a schema: ``cds_service.cards``
builds them in their wire shape (camelCase, no empty values), because a schema dump cost
about 7% of a small hook call (issue 14); the contract tests check them against openapi.yaml.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    post_dump,
    validate,
    validates_schema,
)

from cds_service.contract import ACCEPTED_FHIR_ID, ACCEPTED_USER_REFERENCE
from cds_service.fhir_policy import base_url_problem
from fhir_mappings.bundles import bundle_shape_problem, entry_references, prefetch_value_problem

# Lone surrogates cannot be encoded as UTF-8 and NUL is refused by PostgreSQL text columns, so
# text that is stored or logged must hold neither (JSON allows both: "\ud800", "\u0000").
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class Text(fields.String):
    """A string the database and the logs can keep: no NUL, no lone surrogate."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        if _UNSTORABLE.search(text):
            raise ValidationError("must not contain NUL characters or unpaired surrogates")
        return text


class UtcDateTime(fields.AwareDateTime):
    """An ISO 8601 date-time with an offset, loaded as UTC; one that UTC cannot hold is refused.

    ``0001-01-01T00:00:00+14:00`` is a valid local time whose UTC instant is before year 1.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment: datetime = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(UTC)
        except OverflowError as exc:
            raise ValidationError("must lie between years 1 and 9999 in UTC") from exc


class _Lenient(Schema):
    class Meta:
        unknown = EXCLUDE


def _bundle(value: Any) -> None:
    """A Bundle whose entries and links have the shapes the service reads."""
    problem = bundle_shape_problem(value)
    if problem is not None:
        raise ValidationError(problem)


class _Context(_Lenient):
    user_id = fields.String(
        required=True,
        data_key="userId",
        validate=validate.Regexp(
            ACCEPTED_USER_REFERENCE,
            error="must reference a Practitioner, PractitionerRole, Patient or RelatedPerson",
        ),
    )
    patient_id = fields.String(
        required=True,
        data_key="patientId",
        validate=validate.Regexp(ACCEPTED_FHIR_ID, error="must be a FHIR resource id (Patient.id)"),
    )
    encounter_id = fields.String(
        data_key="encounterId",
        validate=validate.Regexp(
            ACCEPTED_FHIR_ID, error="must be a FHIR resource id (Encounter.id)"
        ),
    )


class OrderSelectContext(_Context):
    selections = fields.List(
        Text(validate=validate.Length(min=1)),
        required=True,
        validate=validate.Length(min=1),
    )
    draft_orders = fields.Dict(required=True, data_key="draftOrders", validate=_bundle)

    @validates_schema
    def _selections_in_drafts(self, data: dict[str, Any], **_: Any) -> None:
        present = entry_references(data.get("draft_orders") or {})
        unknown = [s for s in data.get("selections", []) if s not in present]
        if unknown:
            raise ValidationError(
                f"not found in draftOrders: {', '.join(unknown)}", field_name="selections"
            )


class OrderSignContext(_Context):
    draft_orders = fields.Dict(required=True, data_key="draftOrders", validate=_bundle)


class MedicationPrescribeContext(_Context):
    medications = fields.Dict(required=True, validate=_bundle)


CONTEXT_SCHEMAS: dict[str, type[_Context]] = {
    "order-select": OrderSelectContext,
    "order-sign": OrderSignContext,
    "medication-prescribe": MedicationPrescribeContext,
}


class FhirAuthorizationSchema(_Lenient):
    access_token = fields.String(required=True, validate=validate.Length(min=1))
    token_type = fields.String(
        required=True, validate=validate.OneOf(["Bearer"], error="must be 'Bearer'")
    )
    expires_in = fields.Integer(required=True, strict=True)
    scope = fields.String(required=True)
    subject = fields.String(required=True)
    patient = fields.String()


def _bare_base_url(value: str) -> None:
    """fhirServer is a base URL the service appends ``/Type?...`` to (CDS Hooks #fhirserver)."""
    problem = base_url_problem(value)
    if problem is not None:
        raise ValidationError(problem)


class HookRequestSchema(_Lenient):
    hook = Text(required=True)
    hook_instance = fields.UUID(required=True, data_key="hookInstance")
    fhir_server = fields.Url(
        data_key="fhirServer",
        require_tld=False,
        schemes={"http", "https"},
        validate=_bare_base_url,
    )
    fhir_authorization = fields.Nested(FhirAuthorizationSchema, data_key="fhirAuthorization")
    context = fields.Dict(required=True)
    prefetch = fields.Dict()  # JSON object keys are strings; each value is checked below
    extension = fields.Dict()

    @validates_schema
    def _authorization_needs_server(self, data: dict[str, Any], **_: Any) -> None:
        if "fhir_authorization" in data and "fhir_server" not in data:
            raise ValidationError(
                "fhirServer is required when fhirAuthorization is present",
                field_name="fhirServer",
            )
        for key, value in (data.get("prefetch") or {}).items():
            problem = prefetch_value_problem(value)
            if problem is not None:
                raise ValidationError({key: [problem]}, field_name="prefetch")


class CodingSchema(_Lenient):
    system = Text(required=True, validate=validate.Length(min=1))
    code = Text(required=True, validate=validate.Length(min=1))
    display = Text()


class OverrideReasonSchema(_Lenient):
    reason = fields.Nested(CodingSchema)
    user_comment = Text(data_key="userComment", validate=validate.Length(max=4000))

    @validates_schema
    def _reason_or_comment(self, data: dict[str, Any], **_: Any) -> None:
        if not data:
            raise ValidationError("needs a reason and/or a userComment")


class AcceptedSuggestionSchema(_Lenient):
    id = Text(required=True, validate=validate.Length(min=1, max=100))


class FeedbackItemSchema(_Lenient):
    card = Text(required=True, validate=validate.Length(min=1, max=100))
    outcome = fields.String(required=True, validate=validate.OneOf(["accepted", "overridden"]))
    accepted_suggestions = fields.List(
        fields.Nested(AcceptedSuggestionSchema), data_key="acceptedSuggestions"
    )
    override_reason = fields.Nested(OverrideReasonSchema, data_key="overrideReason")
    outcome_timestamp = UtcDateTime(required=True, data_key="outcomeTimestamp")

    @validates_schema
    def _accepted_needs_suggestions(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("outcome") == "accepted" and not data.get("accepted_suggestions"):
            raise ValidationError(
                "required when outcome is 'accepted'", field_name="acceptedSuggestions"
            )


class FeedbackSchema(_Lenient):
    feedback = fields.List(
        fields.Nested(FeedbackItemSchema),
        required=True,
        validate=validate.Length(min=1, max=500),
    )


# ---------------------------------------------------------------------------------------------
# Discovery. CDS Hooks 2.0: no null or empty values anywhere except "cards": [].


def _drop_empty(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None and v != "" and v != [] and v != {}}


class _Out(Schema):
    @post_dump
    def _strip(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        return _drop_empty(data)


class ServiceOut(_Out):
    hook = fields.String()
    id = fields.String()
    title = fields.String()
    description = fields.String()
    prefetch = fields.Dict(keys=fields.String(), values=fields.String())
    usage_requirements = fields.String(data_key="usageRequirements")


class DiscoveryOut(Schema):
    services = fields.List(fields.Nested(ServiceOut))


def field_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Flatten marshmallow's nested error dict into {"context.patientId": [...]}."""
    flat: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            if isinstance(key, int):
                path = f"{prefix}[{key}]"
            elif key == "_schema":
                path = prefix or "(body)"
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            flat.update(field_errors(value, path))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        flat[prefix or "(body)"] = list(messages)
    elif isinstance(messages, list):
        for item in messages:
            flat.update(field_errors(item, prefix))
    else:
        flat[prefix or "(body)"] = [str(messages)]
    return flat
