"""Check a discovery response: the services it lists and their prefetch templates."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from .core import (
    IDENTIFIER,
    Field,
    JsonObject,
    Violation,
    allow_root_array,
    check_fields,
    each,
    error,
    join,
    run,
    warning,
)
from .hooks import HOOK_CONTEXTS

DISCOVERY: Mapping[str, Field] = {"services": Field("array", required=True)}
SERVICE: Mapping[str, Field] = {
    "hook": Field("string", required=True),
    "title": Field("string"),
    "description": Field("string", required=True),
    "id": Field("string", required=True),
    "prefetch": Field("object"),
    "usageRequirements": Field("string"),
}
USER_TOKENS = frozenset(
    {"userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}
)

_TOKEN = re.compile(r"\{\{(.*?)\}\}")


def check_discovery(doc: object) -> list[Violation]:
    """Check a discovery response, including its prefetch templates (#discovery)."""
    # #response: a server with no services returns an empty services array.
    return run(doc, _discovery, allow_root_array("services"))


def _discovery(doc: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(doc, path, DISCOVERY)
    yield from each(doc, "services", path, _service)
    yield from _duplicate_services(doc)


def _service(service: JsonObject, path: str) -> Iterator[Violation]:
    yield from check_fields(service, path, SERVICE)
    if "title" not in service:
        yield warning(join(path, "title"), "is recommended: a human-friendly name")
    prefetch = service.get("prefetch")
    if not isinstance(prefetch, dict):
        return
    hook = service.get("hook")
    for key, template in prefetch.items():
        template_path = join(join(path, "prefetch"), key)
        if isinstance(template, str):
            yield from _template(template, template_path, hook if isinstance(hook, str) else "")
        elif template is not None:
            yield error(template_path, "must be a string: a FHIR query template")


def _template(template: str, path: str, hook: str) -> Iterator[Violation]:
    """Check each {{token}} of a prefetch template (#prefetch-tokens)."""
    for token in _TOKEN.findall(template):
        problem = _token_problem(token, hook)
        if problem is not None:
            yield error(path, problem)
    leftover = _TOKEN.sub("", template)
    if "{{" in leftover or "}}" in leftover:
        yield error(path, "has a prefetch token without matching {{ and }}")


def _token_problem(token: str, hook: str) -> str | None:
    """Say why a token is invalid, or None when it is a context field or user token."""
    if token in USER_TOKENS:
        return None
    shown = "{{" + token + "}}"
    field = token.removeprefix("context.")
    if field == token:
        users = ", ".join(sorted(USER_TOKENS))
        return f"{shown} is not a prefetch token: use {{{{context.<field>}}}} or one of {users}"
    if not IDENTIFIER.fullmatch(field):
        return f"{shown} is invalid: only root-level context fields may be tokens"
    context = HOOK_CONTEXTS.get(hook)
    if context is not None and not (field in context and context[field].prefetch_token):
        return f"{shown} is invalid: {field} is not a prefetch token field of {hook}"
    return None


def _duplicate_services(doc: JsonObject) -> Iterator[Violation]:
    """Report a service listed twice for one hook; one id for several hooks is allowed.

    #discovery: "a CDS server can host multiple entries of CDS service with the same id for
    different hooks" (#update-stale-guidance). An id or hook that is not a string is already
    reported by the field check and takes no part here.
    """
    services = doc.get("services")
    seen: dict[tuple[str, str], int] = {}
    for index, service in enumerate(services if isinstance(services, list) else []):
        if not isinstance(service, dict):
            continue
        service_id, hook = service.get("id"), service.get("hook")
        if not (isinstance(service_id, str) and isinstance(hook, str)):
            continue
        key = (service_id, hook)
        if key in seen:
            yield error(f"services[{index}]", f"repeats the id and hook of services[{seen[key]}]")
        else:
            seen[key] = index
