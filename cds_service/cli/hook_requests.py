"""Build what an EHR sends: the draft orders, the CDS Hooks 2.0 request, its prefetch.

The orders come from flags (``fhir_mappings.orders.draft_medication_request``) or a file
(``load_orders``);
``fill_prefetch`` answers the service's discovery templates from the FHIR server, as an EHR
does before it calls (#prefetch-template).
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cds_service.cli.ehr_client import FhirReader
from cds_service.cli.exit_codes import EXIT_USAGE
from cds_service.contract import FHIR_ID, FHIR_ID_MAX_LENGTH
from cds_service.errors import CliError
from fhir_mappings.bundles import bundle_resources, collection_bundle, is_bundle
from fhir_mappings.orders import as_draft_order
from fhir_mappings.references import reference_of

HOOKS = ("order-select", "order-sign", "medication-prescribe")
TOKEN = re.compile(r"\{\{\s*(.*?)\s*\}\}")
# #prefetch-tokens: the user tokens stand for the id part of context.userId of that type.
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
DEFAULT_USER = "Practitioner/voclosporin-cds-cli"


def normalise_patient_id(value: str) -> str:
    """Accept ``123`` or ``Patient/123``; the context wants the bare id (#order-sign)."""
    patient_id = value.strip().removeprefix("Patient/")
    if not FHIR_ID.fullmatch(patient_id):
        raise CliError(
            f"--patient {value!r} is not a FHIR id (letters, digits, '-' and '.', at most "
            f"{FHIR_ID_MAX_LENGTH})",
            EXIT_USAGE,
        )
    return patient_id


def load_orders(path: str, patient_id: str) -> list[dict[str, Any]]:
    """Read a MedicationRequest (or a Bundle of draft orders) from a JSON file."""
    document = read_json_file(path)
    resources = bundle_resources(document) if is_bundle(document) else [document]
    orders = []
    for resource in resources:
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise CliError(
                f"{path}: expected a FHIR resource (a JSON object with resourceType) "
                "or a Bundle of them",
                EXIT_USAGE,
            )
        orders.append(as_draft_order(resource, patient_id))
    if not orders:
        raise CliError(f"{path}: the Bundle holds no resources", EXIT_USAGE)
    return orders


def build_hook_request(
    hook: str,
    patient_id: str,
    orders: Sequence[Mapping[str, Any]],
    *,
    user_id: str = DEFAULT_USER,
    encounter_id: str | None = None,
    fhir_server: str | None = None,
    fhir_token: str | None = None,
) -> dict[str, Any]:
    """A CDS Hooks 2.0 request for ``hook`` whose new orders are ``orders`` (#http-request_1)."""
    bundle = collection_bundle(orders)
    context: dict[str, Any] = {"userId": user_id, "patientId": patient_id}
    if encounter_id:
        context["encounterId"] = encounter_id
    if hook == "medication-prescribe":
        context["medications"] = bundle
    else:
        if hook == "order-select":
            context["selections"] = [reference_of(dict(o)) for o in orders]
        context["draftOrders"] = bundle
    request: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
    }
    if fhir_server:
        request["fhirServer"] = fhir_server
    if fhir_token:
        if not fhir_server:
            raise CliError("--fhir-token needs --fhir-server", EXIT_USAGE)
        request["fhirAuthorization"] = {
            "access_token": fhir_token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read user/*.read",
            "subject": "voclosporin-cds",
            "patient": patient_id,
        }
    return request


def fill_template(template: str, context: Mapping[str, Any]) -> str | None:
    """Replace prefetch tokens from the context; None when a token cannot be filled."""
    unfilled = False

    def value(match: re.Match[str]) -> str:
        nonlocal unfilled
        token = match.group(1)
        if token.startswith("context."):
            found = context.get(token.removeprefix("context."))
            if isinstance(found, str | int) and not isinstance(found, bool):
                return str(found)
        elif token in USER_TOKENS:
            resource_type, _, user_id = str(context.get("userId", "")).partition("/")
            if resource_type == USER_TOKENS[token] and user_id:
                return user_id
        unfilled = True
        return match.group(0)

    filled = TOKEN.sub(value, template)
    return None if unfilled else filled


def fill_prefetch(
    templates: Mapping[str, Any], context: Mapping[str, Any], fhir: FhirReader
) -> dict[str, Any]:
    """Run each discovery template against the FHIR server, as an EHR does before the call."""
    prefetch: dict[str, Any] = {}
    fhir.progress.say(f"Prefetching {len(templates)} template(s) from {fhir.base}")
    for key, template in templates.items():
        query = fill_template(template, context) if isinstance(template, str) else None
        if query is None:
            # #prefetch-template: a client MUST NOT send a key it chose not to satisfy.
            fhir.progress.say(f"  prefetch {key}: skipped, cannot fill {template!r}")
            continue
        prefetch[key] = fhir.prefetch_value(key, query)
    return prefetch


def read_json_file(path: str) -> Any:
    """Parse a JSON file (``-`` is stdin); an unreadable file is a usage error that says why."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text", EXIT_USAGE) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            EXIT_USAGE,
        ) from exc
