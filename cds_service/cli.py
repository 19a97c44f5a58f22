"""``voclosporin-cds``: run the service, play the EHR against any CDS service, check CDS Hooks JSON.

    voclosporin-cds serve      run the dev server, or print the gunicorn command (--production)
    voclosporin-cds hook       build a spec-valid hook request for a patient on a FHIR server and
                               a proposed order, fill prefetch from the service's own discovery
                               templates (--prefetch) as an EHR does, send it, show the cards
    voclosporin-cds validate   check a request, response, discovery or feedback JSON file
    voclosporin-cds jwks       print the public JWK Set of a signing key (for CDS_JWT_ISSUERS)

Exit codes, so scripts and CI can tell failures apart:

    0  success (validate: no errors)
    1  the CDS service answered an HTTP error or a non-JSON body; validate found errors
    2  bad usage or an unreadable input file
    3  a server could not be reached, or the FHIR server refused what the command needs

Progress goes to stderr (``--quiet`` silences it); cards or JSON go to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.app import close_app, create_app
from cds_service.errors import CliError
from cds_service.fhir_client import next_link
from cds_service.spec_check import CHECKERS, Violation, detect_kind

EXIT_OK = 0
EXIT_HTTP_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

HOOKS = ("order-select", "order-sign", "medication-prescribe")
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
FHIR_JSON = "application/fhir+json"
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
TOKEN = re.compile(r"\{\{\s*(.*?)\s*\}\}")
# #prefetch-tokens: the user tokens stand for the id part of context.userId of that type.
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
DEFAULT_USER = "Practitioner/voclosporin-cds-cli"
DEFAULT_TIMEOUT_S = 30.0
SLOW_AFTER_S = 1.0
MAX_PAGES = 20
JWT_LIFETIME_S = 300  # spec #trusting-cds-clients: short-lived; Inferno and the sandbox use 5 min


# ------------------------------------------------------------------------------------ output


class Progress:
    """Report each slow step on stderr, so a hung FHIR server is visible rather than silent."""

    def __init__(self, stream: IO[str], *, enabled: bool, slow_after: float = SLOW_AFTER_S):
        self.stream = stream
        self.enabled = enabled
        self.slow_after = slow_after
        self._lock = threading.Lock()

    def say(self, message: str) -> None:
        if self.enabled:
            with self._lock:
                print(message, file=self.stream, flush=True)

    @contextmanager
    def step(self, label: str) -> Iterator[dict[str, str]]:
        """Time one request; say "still waiting" every ``slow_after`` s, then print the result.

        The caller puts the outcome in the yielded dict under ``"result"``.
        """
        outcome: dict[str, str] = {}
        started = time.monotonic()
        finished = threading.Event()

        def nag() -> None:
            while not finished.wait(self.slow_after):
                self.say(f"  ... still waiting for {label} ({time.monotonic() - started:.0f} s)")

        watcher = threading.Thread(target=nag, name="cli-progress", daemon=True)
        if self.enabled:
            watcher.start()
        try:
            yield outcome
        finally:
            finished.set()
            if watcher.is_alive():
                watcher.join()
            elapsed = time.monotonic() - started
            self.say(f"  {label}: {outcome.get('result', 'failed')} ({elapsed:.2f} s)")


def _color_enabled(stream: IO[str]) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


_COLORS = {"critical": "\033[1;31m", "warning": "\033[1;33m", "info": "\033[1;36m"}
_RESET = "\033[0m"


def render_cards(response: Mapping[str, Any], out: IO[str], *, color: bool = False) -> None:
    """Print cards as a clinician would scan them: indicator, summary, detail, suggestions."""
    cards = response.get("cards")
    cards = cards if isinstance(cards, list) else []
    width = max(60, min(100, _terminal_width()))
    if not cards:
        print("No cards: the service has no guidance for this order.", file=out)
    for number, card in enumerate(cards, 1):
        if not isinstance(card, dict):
            continue
        indicator = str(card.get("indicator", "?"))
        label = f"{indicator.upper():<8}"
        if color:
            label = f"{_COLORS.get(indicator, '')}{label}{_RESET}"
        print(f"\n{number}. {label} {card.get('summary', '(no summary)')}", file=out)
        source = card.get("source") if isinstance(card.get("source"), dict) else {}
        if source:
            url = f" <{source['url']}>" if source.get("url") else ""
            print(f"   source: {source.get('label', '?')}{url}", file=out)
        detail = card.get("detail")
        if isinstance(detail, str) and detail:
            print(file=out)
            print(_wrap_markdown(detail, "   ", width) + "\n", file=out)
        _render_suggestions(card, out, width)
        reasons = card.get("overrideReasons")
        if isinstance(reasons, list) and reasons:
            shown = "; ".join(
                str(r.get("display", r.get("code", "?"))) for r in reasons if isinstance(r, dict)
            )
            print(
                textwrap.fill(
                    f"override reasons: {shown}",
                    width,
                    initial_indent="   ",
                    subsequent_indent="     ",
                ),
                file=out,
            )
        for link in card.get("links") or []:
            if isinstance(link, dict):
                print(
                    f"   link: {link.get('label', '?')} <{link.get('url', '?')}> "
                    f"({link.get('type', '?')})",
                    file=out,
                )
    actions = response.get("systemActions")
    if isinstance(actions, list) and actions:
        print("\nsystem actions:", file=out)
        for action in actions:
            if isinstance(action, dict):
                print("   " + _action_line(action), file=out)


def _render_suggestions(card: Mapping[str, Any], out: IO[str], width: int) -> None:
    suggestions = card.get("suggestions")
    if not isinstance(suggestions, list) or not suggestions:
        return
    behavior = card.get("selectionBehavior", "not given")
    print(f"   suggestions (selectionBehavior: {behavior}):", file=out)
    for suggestion in suggestions:
        if not isinstance(suggestion, dict):
            continue
        flag = " [recommended]" if suggestion.get("isRecommended") else ""
        print(f"     - {suggestion.get('label', '?')}{flag}", file=out)
        for action in suggestion.get("actions") or []:
            if isinstance(action, dict):
                print(
                    textwrap.fill(
                        _action_line(action),
                        width,
                        initial_indent="         ",
                        subsequent_indent="           ",
                    ),
                    file=out,
                )


def _action_line(action: Mapping[str, Any]) -> str:
    resource = action.get("resource")
    target = action.get("resourceId")
    if target is None and isinstance(resource, dict):
        target = f"{resource.get('resourceType', '?')}/{resource.get('id', '(new)')}"
    return f"{action.get('type', '?')} {target or ''}: {action.get('description', '')}".strip()


def _wrap_markdown(text: str, indent: str, width: int) -> str:
    """Wrap GitHub-flavoured Markdown for a terminal, keeping list items and blank lines."""
    lines = []
    for line in text.splitlines():
        if not line.strip():
            lines.append("")
            continue
        stripped = line.lstrip()
        if stripped.startswith("|"):  # a table row: wrapping would break its columns
            lines.append(indent + line)
            continue
        lead = line[: len(line) - len(stripped)]
        bullet = re.match(r"([-*+]|\d+\.)\s+", stripped)
        hang = " " * len(bullet.group(0)) if bullet else ""
        lines.append(
            textwrap.fill(
                stripped,
                width,
                initial_indent=indent + lead,
                subsequent_indent=indent + lead + hang,
                break_on_hyphens=False,
                break_long_words=False,
            )
        )
    return "\n".join(lines)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100


def print_violations(violations: Sequence[Violation], out: IO[str], prefix: str = "") -> None:
    for violation in violations:
        print(f"{prefix}{violation}", file=out)


# ------------------------------------------------------------------------------- the target


@dataclass(frozen=True)
class ServiceTarget:
    """Where the CDS service lives: its discovery URL and (once known) the service id."""

    services_url: str  # {base}/cds-services, the discovery endpoint
    service_id: str | None

    @property
    def url(self) -> str:
        return f"{self.services_url}/{self.service_id}"


def parse_service_target(service_url: str, service_id: str | None) -> ServiceTarget:
    """Accept ``{base}/cds-services/{id}``, or a base (with or without /cds-services) plus id."""
    parts = urlsplit(service_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"--service-url must be an http(s) URL, got {service_url!r}", EXIT_USAGE)
    url = service_url.rstrip("/")
    if service_id:
        base = url if url.endswith("/cds-services") else url + "/cds-services"
        return ServiceTarget(base, service_id)
    head, sep, tail = url.rpartition("/cds-services/")
    if sep and tail and "/" not in tail:
        return ServiceTarget(head + "/cds-services", tail)
    base = url if url.endswith("/cds-services") else url + "/cds-services"
    return ServiceTarget(base, None)  # chosen from discovery by --hook


# ------------------------------------------------------------------------------- FHIR reads


class FhirReader:
    """Read from the patient's FHIR server as the EHR would, with errors a person can act on."""

    def __init__(
        self,
        base: str,
        token: str | None,
        session: requests.Session,
        timeout: float,
        progress: Progress,
    ) -> None:
        self.base = base.rstrip("/")
        self.session = session
        self.timeout = timeout
        self.progress = progress
        self.headers = {"Accept": FHIR_JSON}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def get(self, path_or_url: str, label: str) -> requests.Response:
        with self.progress.step(label) as step:
            response = self._get(path_or_url, label)
            step["result"] = f"HTTP {response.status_code}"
        return response

    def _get(self, path_or_url: str, label: str) -> requests.Response:
        absolute = path_or_url.startswith(("http://", "https://"))
        url = path_or_url if absolute else f"{self.base}/{path_or_url}"
        try:
            return self.session.get(url, headers=self.headers, timeout=self.timeout)
        except requests.Timeout as exc:
            raise CliError(
                f"The FHIR server {self.base} did not answer within {self.timeout:g} s "
                f"({label}); raise --timeout or check the server"
            ) from exc
        except requests.ConnectionError as exc:
            raise CliError(
                f"Cannot reach the FHIR server at {self.base}: {_connection_reason(exc)}. "
                "Is it running, and is --fhir-server its base URL "
                "(e.g. http://127.0.0.1:8190/fhir)?"
            ) from exc
        except requests.RequestException as exc:
            raise CliError(f"Cannot query {url}: {exc}", EXIT_USAGE) from exc

    def read_patient(self, patient_id: str) -> dict[str, Any]:
        """Read the Patient; a wrong id or base URL stops here with what to check."""
        response = self.get(f"Patient/{patient_id}", f"GET Patient/{patient_id}")
        if response.status_code in (404, 410):
            known = self._some_patient_ids()
            hint = f" Patients on this server include: {', '.join(known)}." if known else ""
            raise CliError(
                f"Patient '{patient_id}' was not found on the FHIR server {self.base} "
                f"(HTTP {response.status_code}). --patient takes the server's resource id "
                f"(Patient.id), not a name or MRN.{hint}"
            )
        if response.status_code in (401, 403):
            raise CliError(
                f"The FHIR server {self.base} refused to read Patient/{patient_id} "
                f"(HTTP {response.status_code}): pass an access token with --fhir-token"
            )
        body = _json_or_none(response)
        if not response.ok:
            raise CliError(
                f"The FHIR server {self.base} answered HTTP {response.status_code} for "
                f"Patient/{patient_id}: {_fhir_error_text(body, response)}"
            )
        if not isinstance(body, dict) or body.get("resourceType") != "Patient":
            raise CliError(
                f"{self.base}/Patient/{patient_id} did not return a FHIR Patient; is "
                "--fhir-server the FHIR base URL (the one /metadata lives under)?"
            )
        return body

    def _some_patient_ids(self) -> list[str]:
        """A few ids from the server, so a typo'd id can be corrected at once."""
        try:
            response = self.session.get(
                f"{self.base}/Patient",
                params={"_count": "5", "_elements": "id"},
                headers=self.headers,
                timeout=self.timeout,
            )
        except requests.RequestException:
            return []
        body = _json_or_none(response)
        if not response.ok or not isinstance(body, dict):
            return []
        return [
            str(entry["resource"]["id"])
            for entry in body.get("entry") or []
            if isinstance(entry, dict)
            and isinstance(entry.get("resource"), dict)
            and entry["resource"].get("resourceType") == "Patient"
            and entry["resource"].get("id")
        ]

    def prefetch_value(self, key: str, query: str) -> Any:
        """Answer one template the way the spec asks of a client (#prefetch-template).

        A read that finds nothing is ``null``; a search is one searchset Bundle with every page
        merged; a failed query sends an OperationOutcome in its place.
        """
        with self.progress.step(f"prefetch {key}") as step:
            response = self._get(query, f"prefetch {key}")
            body = _json_or_none(response)
            if "?" not in query and response.status_code in (404, 410):
                step["result"] = f"HTTP {response.status_code}, sending null (no data)"
                return None
            if not response.ok or not isinstance(body, dict):
                step["result"] = f"HTTP {response.status_code}, sending an OperationOutcome"
                return _operation_outcome(body, response)
            if body.get("resourceType") != "Bundle":
                step["result"] = f"HTTP {response.status_code}, {body.get('resourceType')}"
                return body
            merged, pages = self._all_pages(key, body)
            matches = sum(
                1
                for e in merged.get("entry", [])
                if (e.get("search") or {}).get("mode", "match") == "match"
            )
            step["result"] = f"HTTP {response.status_code}, {matches} resource(s)" + (
                f" in {pages} pages" if pages > 1 else ""
            )
            return merged

    def _all_pages(self, key: str, first: dict[str, Any]) -> tuple[dict[str, Any], int]:
        entries = list(first.get("entry") or [])
        bundle, pages = first, 1
        while (url := next_link(bundle)) is not None and pages < MAX_PAGES:
            response = self._get(url, f"prefetch {key} page {pages + 1}")
            body = _json_or_none(response)
            if not response.ok or not isinstance(body, dict):
                break
            bundle, pages = body, pages + 1
            entries += body.get("entry") or []
        merged: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if "total" in first:
            merged["total"] = first["total"]
        last_next = next_link(bundle)
        if last_next is not None:  # page cap hit: let the service follow the rest
            merged["link"] = [{"relation": "next", "url": last_next}]
        if entries:
            merged["entry"] = entries
        return merged, pages


def _operation_outcome(body: Any, response: requests.Response) -> dict[str, Any]:
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return body
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "exception",
                "diagnostics": f"HTTP {response.status_code} from {response.url}",
            }
        ],
    }


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _fhir_error_text(body: Any, response: requests.Response) -> str:
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = [
            str(issue.get("diagnostics") or (issue.get("details") or {}).get("text") or "")
            for issue in body.get("issue") or []
            if isinstance(issue, dict)
        ]
        return "; ".join(t for t in texts if t) or "OperationOutcome without text"
    return _excerpt(response.text)


def _excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _connection_reason(exc: requests.ConnectionError) -> str:
    text = str(exc)
    for marker in (
        "Connection refused",
        "Name or service not known",
        "No route to host",
        "Temporary failure in name resolution",
        "Connection reset",
    ):
        if marker in text:
            return marker.lower()
    return _excerpt(text, 200)


# ------------------------------------------------------------------------- building requests


def normalise_patient_id(value: str) -> str:
    """Accept ``123`` or ``Patient/123``; the context wants the bare id (#order-sign)."""
    patient_id = value.strip().removeprefix("Patient/")
    if not FHIR_ID.fullmatch(patient_id):
        raise CliError(
            f"--patient {value!r} is not a FHIR id (letters, digits, '-' and '.', at most 64)",
            EXIT_USAGE,
        )
    return patient_id


def dosage_instruction(dose_mg: float, per_day: int) -> dict[str, Any]:
    """A structured Dosage the dose rules can read: mg per dose and doses per day."""
    times = {1: "once daily", 2: "twice daily", 3: "three times daily"}.get(
        per_day, f"{per_day} times daily"
    )
    return {
        "text": f"{dose_mg:g} mg by mouth {times}",
        "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
        "doseAndRate": [
            {
                "doseQuantity": {"value": dose_mg, "unit": "mg", "system": UCUM, "code": "mg"},
            }
        ],
    }


def draft_medication_request(
    patient_id: str,
    *,
    drug: str | None = None,
    rxnorm: str | None = None,
    dose_mg: float | None = None,
    per_day: int = 2,
    today: str | None = None,
) -> dict[str, Any]:
    """A draft MedicationRequest, as the EHR holds an order that is not signed yet."""
    concept: dict[str, Any] = {}
    if rxnorm:
        concept["coding"] = [{"system": RXNORM, "code": rxnorm}]
    if drug:
        concept["text"] = drug
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": f"draft-{uuid.uuid4().hex[:12]}",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": concept,
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": today or datetime.now(UTC).date().isoformat(),
    }
    if dose_mg is not None:
        order["dosageInstruction"] = [dosage_instruction(dose_mg, per_day)]
    return order


def load_orders(path: str, patient_id: str) -> list[dict[str, Any]]:
    """Read a MedicationRequest (or a Bundle of draft orders) from a JSON file."""
    document = _read_json_file(path)
    if isinstance(document, dict) and document.get("resourceType") == "Bundle":
        resources = [
            e["resource"]
            for e in document.get("entry") or []
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
    else:
        resources = [document]
    orders = []
    for resource in resources:
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise CliError(
                f"{path}: expected a FHIR resource (a JSON object with resourceType) "
                "or a Bundle of them",
                EXIT_USAGE,
            )
        order = dict(resource)
        order.setdefault("id", f"draft-{uuid.uuid4().hex[:12]}")
        order.setdefault("subject", {"reference": f"Patient/{patient_id}"})
        orders.append(order)
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
    fhir_scope: str = "patient/*.read user/*.read",
    fhir_subject: str = "voclosporin-cds",
) -> dict[str, Any]:
    """A CDS Hooks 2.0 request for ``hook`` whose new orders are ``orders`` (#http-request_1)."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": dict(order)} for order in orders],
    }
    context: dict[str, Any] = {"userId": user_id, "patientId": patient_id}
    if encounter_id:
        context["encounterId"] = encounter_id
    if hook == "medication-prescribe":
        context["medications"] = bundle
    else:
        if hook == "order-select":
            context["selections"] = [f"{o['resourceType']}/{o['id']}" for o in orders]
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
            "scope": fhir_scope,
            "subject": fhir_subject,
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


# ------------------------------------------------------------------------------ client JWT


def load_private_key(path: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read --jwt-key {path}: {exc.strerror}", EXIT_USAGE) from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CliError(
            f"--jwt-key {path} is not an unencrypted PEM private key ({exc})", EXIT_USAGE
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CliError(
            f"--jwt-key {path}: only RSA and EC keys can sign CDS Hooks JWTs", EXIT_USAGE
        )
    return key


def default_algorithm(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    """Spec #jwt-signing-algorithm recommends ES384 and RS384; pick the one the key fits."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS384"
    return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(
        key.curve.name, "ES384"
    )


def client_jwt(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    iss: str,
    kid: str,
    audience: str,
    algorithm: str | None = None,
    jku: str | None = None,
    lifetime: int = JWT_LIFETIME_S,
) -> str:
    """Sign the JWT a CDS client sends: aud is the endpoint URL, jti fresh per call (#trusting)."""
    now = int(time.time())
    claims = {
        "iss": iss,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime,
        "jti": str(uuid.uuid4()),
    }
    headers: dict[str, Any] = {"kid": kid, "typ": "JWT"}
    if jku:
        headers["jku"] = jku
    return jwt.encode(claims, key, algorithm=algorithm or default_algorithm(key), headers=headers)


@dataclass(frozen=True)
class JwtSigner:
    """Make one token per endpoint called (discovery and service have different audiences)."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None
    iss: str | None
    kid: str | None
    algorithm: str | None
    jku: str | None
    fixed: str | None

    def headers(self, audience: str) -> dict[str, str]:
        if self.fixed:
            return {"Authorization": f"Bearer {self.fixed}"}
        if self.key is None or not self.iss or not self.kid:
            return {}
        token = client_jwt(
            self.key,
            iss=self.iss,
            kid=self.kid,
            audience=audience,
            algorithm=self.algorithm,
            jku=self.jku,
        )
        return {"Authorization": f"Bearer {token}"}


def _signer(args: argparse.Namespace) -> JwtSigner:
    if args.jwt and args.jwt_key:
        raise CliError("give either --jwt or --jwt-key, not both", EXIT_USAGE)
    if args.jwt_key and not (args.jwt_iss and args.jwt_kid):
        raise CliError(
            "--jwt-key needs --jwt-iss (your client's issuer URL) and --jwt-kid "
            "(the key's id in your JWK Set)",
            EXIT_USAGE,
        )
    key = load_private_key(args.jwt_key) if args.jwt_key else None
    return JwtSigner(key, args.jwt_iss, args.jwt_kid, args.jwt_alg, args.jwt_jku, args.jwt)


# ----------------------------------------------------------------------- talking to services


def discover(
    target: ServiceTarget,
    session: requests.Session,
    signer: JwtSigner,
    timeout: float,
    progress: Progress,
) -> list[dict[str, Any]]:
    """GET {base}/cds-services; the services array, or an error that says what went wrong."""
    url = target.services_url
    with progress.step(f"GET {url}") as step:
        try:
            response = session.get(
                url, headers={"Accept": "application/json", **signer.headers(url)}, timeout=timeout
            )
        except requests.Timeout as exc:
            raise CliError(f"The CDS service at {url} did not answer within {timeout:g} s") from exc
        except requests.ConnectionError as exc:
            raise CliError(
                f"Cannot reach the CDS service at {url}: {_connection_reason(exc)}. Is it "
                "running (voclosporin-cds serve), and is --service-url right?"
            ) from exc
        step["result"] = f"HTTP {response.status_code}"
    body = _json_or_none(response)
    if not response.ok:
        raise CliError(
            f"Discovery {url} answered HTTP {response.status_code}: "
            f"{_service_error_text(body, response)}. Is --service-url a CDS Hooks "
            "service (its discovery endpoint is {base}/cds-services)?",
            EXIT_HTTP_ERROR,
        )
    services = body.get("services") if isinstance(body, dict) else None
    if not isinstance(services, list):
        raise CliError(
            f"{url} is not a CDS Hooks discovery endpoint (no 'services' array); "
            "check --service-url",
            EXIT_HTTP_ERROR,
        )
    return [s for s in services if isinstance(s, dict)]


def choose_service(
    services: Sequence[Mapping[str, Any]], service_id: str | None, hook: str | None, url: str
) -> Mapping[str, Any]:
    listed = ", ".join(f"{s.get('id')} ({s.get('hook')})" for s in services) or "none"
    if service_id:
        matches = [s for s in services if s.get("id") == service_id]
        if hook and len(matches) > 1:  # #update-stale-guidance: one id may serve several hooks
            matches = [s for s in matches if s.get("hook") == hook] or matches
        if not matches:
            raise CliError(f"{url} lists no service '{service_id}'. Services: {listed}", EXIT_USAGE)
        return matches[0]
    matches = [s for s in services if hook is None or s.get("hook") == hook]
    if len(matches) != 1:
        raise CliError(
            f"Cannot tell which service to call at {url}: give --service-id, or a "
            f"--service-url ending in /cds-services/{{id}}. Services: {listed}",
            EXIT_USAGE,
        )
    return matches[0]


def _service_error_text(body: Any, response: requests.Response) -> str:
    """Our error body, a FHIR OperationOutcome (3.0 style), or the start of the text."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        text = str(error.get("title") or "")
        if error.get("detail"):
            text += f": {error['detail']}"
        for field, problems in (error.get("fields") or {}).items():
            text += f"\n  {field}: {problems}"
        return text
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return _fhir_error_text(body, response)
    return _excerpt(response.text) or response.reason or "(empty body)"


_STATUS_HINTS = {
    401: "The service wants a client JWT: sign one with --jwt-key PEM --jwt-iss ISS --jwt-kid "
    "KID (the service must trust that iss and key), or pass --jwt TOKEN.",
    404: "No such service: check the id in --service-url against GET {services}.",
    412: "The service lacks chart data and could not fetch it. Add --prefetch, or pass "
    "--fhir-token, or (sandbox only) let it query the FHIR server without a token: "
    "CDS_ALLOW_UNAUTHENTICATED_FHIR=true and the server in CDS_FHIR_ALLOWED_SERVERS.",
}


def send_hook(
    target: ServiceTarget,
    request: Mapping[str, Any],
    session: requests.Session,
    signer: JwtSigner,
    timeout: float,
    progress: Progress,
) -> tuple[requests.Response, float]:
    url = target.url
    started = time.monotonic()
    with progress.step(f"POST {url}") as step:
        try:
            response = session.post(
                url,
                data=json.dumps(request),
                headers={
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    **signer.headers(url),
                },
                timeout=timeout,
            )
        except requests.Timeout as exc:
            raise CliError(
                f"The CDS service {url} did not answer within {timeout:g} s (--timeout)"
            ) from exc
        except requests.ConnectionError as exc:
            raise CliError(
                f"Cannot reach the CDS service at {url}: {_connection_reason(exc)}. Is it "
                "running (voclosporin-cds serve), and is --service-url right?"
            ) from exc
        step["result"] = f"HTTP {response.status_code}"
    return response, time.monotonic() - started


# -------------------------------------------------------------------------------- commands


def cmd_hook(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    progress = Progress(err, enabled=not args.quiet)
    target = parse_service_target(args.service_url, args.service_id)
    patient_id = normalise_patient_id(args.patient)
    signer = _signer(args)
    if (args.dose_mg is not None and args.dose_mg <= 0) or args.per_day < 1:
        raise CliError("--dose-mg and --per-day must be positive", EXIT_USAGE)
    if args.order and (args.drug or args.rxnorm or args.dose_mg is not None):
        raise CliError(
            "--order takes the whole order from the file: drop --drug, --rxnorm and --dose-mg",
            EXIT_USAGE,
        )
    if args.order:
        orders = load_orders(args.order, patient_id)
    else:
        if not ((args.drug or "").strip() or (args.rxnorm or "").strip()):
            raise CliError(
                "say what is ordered: --drug NAME, --rxnorm CODE or --order FILE", EXIT_USAGE
            )
        orders = [
            draft_medication_request(
                patient_id,
                drug=args.drug,
                rxnorm=args.rxnorm,
                dose_mg=args.dose_mg,
                per_day=args.per_day,
            )
        ]
    with requests.Session() as session:
        hook = args.hook
        templates: Mapping[str, Any] = {}
        if args.prefetch or target.service_id is None or hook is None:
            services = discover(target, session, signer, args.timeout, progress)
            service = choose_service(services, target.service_id, hook, target.services_url)
            target = ServiceTarget(target.services_url, str(service.get("id")))
            if hook is None:
                hook = str(service.get("hook"))
            elif service.get("hook") != hook:
                progress.say(
                    f"warning: service '{target.service_id}' is registered for "
                    f"{service.get('hook')}, not {hook}"
                )
            raw_templates = service.get("prefetch")
            templates = raw_templates if isinstance(raw_templates, dict) else {}
        if hook not in HOOKS:
            raise CliError(
                f"this command builds {', '.join(HOOKS)} requests; the service "
                f"is registered for {hook!r} (give --hook)",
                EXIT_USAGE,
            )
        fhir = FhirReader(args.fhir_server, args.fhir_token, session, args.timeout, progress)
        fhir.read_patient(patient_id)
        request = build_hook_request(
            hook,
            patient_id,
            orders,
            user_id=args.user,
            encounter_id=args.encounter,
            fhir_server=fhir.base,
            fhir_token=args.fhir_token,
        )
        if args.prefetch:
            request["prefetch"] = fill_prefetch(templates, request["context"], fhir)
        own_errors = [v for v in CHECKERS["request"](request) if v.severity == "error"]
        if own_errors:  # a bad --order file; the service will say so too, but name it here
            progress.say("warning: the request breaks CDS Hooks 2.0 rules:")
            print_violations(own_errors, err, "  ")
        if args.dry_run:
            print(json.dumps(request, indent=2), file=out)
            return EXIT_OK
        response, seconds = send_hook(target, request, session, signer, args.timeout, progress)
    return _report(response, seconds, target, args, out, err)


def _report(
    response: requests.Response,
    seconds: float,
    target: ServiceTarget,
    args: argparse.Namespace,
    out: IO[str],
    err: IO[str],
) -> int:
    body = _json_or_none(response)
    if not response.ok:
        print(
            f"error: {target.url} answered HTTP {response.status_code}: "
            f"{_service_error_text(body, response)}",
            file=err,
        )
        hint = _STATUS_HINTS.get(response.status_code)
        if hint:
            print("hint: " + hint.format(services=target.services_url), file=err)
        if args.json and body is not None:
            print(json.dumps(body, indent=2), file=out)
        return EXIT_HTTP_ERROR
    if not isinstance(body, dict):
        print(
            f"error: {target.url} answered HTTP {response.status_code} but not with a JSON "
            f"object: {_excerpt(response.text)}",
            file=err,
        )
        return EXIT_HTTP_ERROR
    violations = CHECKERS["response"](body)
    if violations and not args.quiet:
        print(f"The response breaks {len(violations)} CDS Hooks 2.0 rule(s):", file=err)
        print_violations(violations, err, "  ")
    if args.json:
        print(json.dumps(body, indent=2), file=out)
        return EXIT_OK
    cards = body.get("cards")
    count = len(cards) if isinstance(cards, list) else 0
    print(
        f"{target.service_id}: HTTP {response.status_code} in {seconds:.2f} s, {count} card(s)",
        file=out,
    )
    render_cards(body, out, color=_color_enabled(out))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    out = sys.stdout
    document = _read_json_file(args.file)
    kind = args.kind or detect_kind(document)
    if kind is None:
        raise CliError(
            f"{args.file}: cannot tell whether this is a request, response, "
            "discovery or feedback document; pass --kind",
            EXIT_USAGE,
        )
    violations = CHECKERS[kind](document)
    errors = sum(v.severity == "error" for v in violations)
    warnings = len(violations) - errors
    if args.json:
        print(
            json.dumps(
                {
                    "file": args.file,
                    "kind": kind,
                    "errors": errors,
                    "warnings": warnings,
                    "violations": [
                        {"severity": v.severity, "path": v.path, "message": v.message}
                        for v in violations
                    ],
                },
                indent=2,
            ),
            file=out,
        )
    else:
        print_violations(violations, out)
        verdict = "breaks CDS Hooks 2.0" if errors else "follows CDS Hooks 2.0"
        print(f"{args.file}: {kind} {verdict}: {errors} error(s), {warnings} warning(s)", file=out)
    failed = errors > 0 or (args.strict and warnings > 0)
    return EXIT_HTTP_ERROR if failed else EXIT_OK


def gunicorn_command(host: str, port: int, workers: int) -> str:
    """The production command: gunicorn workers around the same app factory."""
    return shlex.join(
        [
            "gunicorn",
            "--bind",
            f"{host}:{port}",
            "--workers",
            str(workers),
            "--timeout",
            "30",
            "--access-logfile",
            "-",
            "cds_service:create_app()",
        ]
    )


def cmd_serve(args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.production:
        print(gunicorn_command(args.host, args.port, args.workers), file=out)
        print(
            "# Set CDS_PUBLIC_BASE_URL, CDS_JWT_ISSUERS, CDS_REDIS_URL, CDS_DATABASE_URL and "
            "CDS_AUDIT_HASH_KEY first (README: Configuration); terminate TLS in front of it.",
            file=out,
        )
        return EXIT_OK
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: the development server on {args.host} is reachable from other "
            "machines; use --production for real traffic",
            file=sys.stderr,
        )
    app = create_app()
    print(
        f"Serving on http://{args.host}:{args.port}  (discovery: /cds-services, API docs: "
        "/docs; Ctrl-C stops)",
        file=out,
        flush=True,
    )
    try:
        app.run(host=args.host, port=args.port, debug=args.debug, use_reloader=False)
    finally:
        close_app(app)
    return EXIT_OK


def cmd_jwks(args: argparse.Namespace) -> int:
    """Print the public JWK Set for a key, the file a service's CDS_JWT_ISSUERS can point at."""
    try:
        data = Path(args.key).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.key}: {exc.strerror}", EXIT_USAGE) from exc
    public: Any
    try:
        public = serialization.load_pem_private_key(data, password=None).public_key()
    except (ValueError, TypeError):
        try:
            public = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise CliError(f"{args.key} is not a PEM key", EXIT_USAGE) from exc
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        alg = args.alg or "RS384"
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        alg = args.alg or {"secp256r1": "ES256", "secp521r1": "ES512"}.get(
            public.curve.name, "ES384"
        )
    else:
        raise CliError(f"{args.key}: only RSA and EC keys can sign CDS Hooks JWTs", EXIT_USAGE)
    print(
        json.dumps({"keys": [{**jwk, "kid": args.kid, "alg": alg, "use": "sig"}]}, indent=2),
        file=sys.stdout,
    )
    return EXIT_OK


def _read_json_file(path: str) -> Any:
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


# ------------------------------------------------------------------------------------- argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voclosporin-cds",
        description="Voclosporin (LUPKYNIS) CDS Hooks service: run it, call it, check JSON.",
        epilog="Exit codes: 0 ok, 1 HTTP error or invalid document, 2 usage, 3 unreachable.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the service (development server)",
        description="Run the development server, or print the "
        "gunicorn command for production (--production).",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--debug",
        action="store_true",
        help="Flask debug mode (never in production: it exposes a debugger)",
    )
    serve.add_argument(
        "--production", action="store_true", help="print the gunicorn command instead of serving"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=(os.cpu_count() or 1) * 2 + 1,
        help="gunicorn workers for --production (default 2 x CPUs + 1)",
    )
    serve.set_defaults(run=cmd_serve)

    hook = commands.add_parser(
        "hook",
        help="send a hook request like an EHR and show the cards",
        description="Build a CDS Hooks 2.0 request for a patient on a FHIR server and a "
        "proposed order, send it to a CDS service and print the cards.",
    )
    where = hook.add_argument_group("where")
    where.add_argument(
        "--service-url",
        required=True,
        metavar="URL",
        help="{base}/cds-services/{id}, or a base URL with --service-id "
        "(or with --hook, to pick the service from discovery)",
    )
    where.add_argument("--service-id", metavar="ID")
    where.add_argument(
        "--hook", choices=HOOKS, help="default: the hook the service is registered for (discovery)"
    )
    where.add_argument(
        "--fhir-server",
        required=True,
        metavar="URL",
        help="FHIR base URL of the patient's chart (sent as fhirServer)",
    )
    where.add_argument("--patient", required=True, metavar="ID", help="Patient.id on that server")
    where.add_argument(
        "--user",
        default=DEFAULT_USER,
        metavar="REF",
        help=f"context.userId (default {DEFAULT_USER})",
    )
    where.add_argument("--encounter", metavar="ID", help="context.encounterId")
    what = hook.add_argument_group("the proposed order: --drug and/or --rxnorm, or --order")
    what.add_argument(
        "--drug",
        metavar="NAME",
        help="medication by name, e.g. 'LUPKYNIS (voclosporin) 7.9 mg oral capsule'",
    )
    what.add_argument(
        "--rxnorm",
        metavar="CODE",
        help="medication by RxNorm code (with --drug, the name is the order's text)",
    )
    what.add_argument("--order", metavar="FILE", help="a MedicationRequest (or Bundle) JSON file")
    what.add_argument(
        "--dose-mg",
        type=float,
        metavar="MG",
        help="dose per administration for --drug/--rxnorm, e.g. 23.7",
    )
    what.add_argument(
        "--per-day",
        type=int,
        default=2,
        metavar="N",
        help="administrations per day with --dose-mg (default 2)",
    )
    data = hook.add_argument_group("data and security")
    data.add_argument(
        "--prefetch",
        action="store_true",
        help="fill prefetch from the service's discovery templates, as an EHR does",
    )
    data.add_argument(
        "--fhir-token",
        metavar="TOKEN",
        help="bearer token for the FHIR server; also sent as fhirAuthorization",
    )
    data.add_argument("--jwt-key", metavar="PEM", help="private key to sign the client JWT")
    data.add_argument("--jwt-iss", metavar="URL", help="JWT iss: your client's identifier")
    data.add_argument("--jwt-kid", metavar="KID", help="JWT kid: the key's id in your JWK Set")
    data.add_argument(
        "--jwt-alg",
        choices=("ES384", "RS384", "ES256", "ES512", "RS256", "RS512"),
        help="default from the key: RS384 for RSA, ES384 for P-384",
    )
    data.add_argument("--jwt-jku", metavar="URL", help="JWT jku header (your JWK Set URL)")
    data.add_argument("--jwt", metavar="TOKEN", help="a ready-made JWT to send as Bearer")
    output = hook.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the response JSON")
    output.add_argument(
        "--dry-run", action="store_true", help="print the request JSON instead of sending it"
    )
    output.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"seconds per HTTP request (default {DEFAULT_TIMEOUT_S:g})",
    )
    output.add_argument("--quiet", action="store_true", help="no progress on stderr")
    hook.set_defaults(run=cmd_hook)

    validate = commands.add_parser(
        "validate",
        help="check a CDS Hooks JSON document against the 2.0 rules",
        description="Check a hook request, response, discovery or feedback document; each "
        "violation is printed with its path. Exit 1 when there are errors.",
    )
    validate.add_argument("file", metavar="FILE", help="JSON file, or - for stdin")
    validate.add_argument("--kind", choices=tuple(CHECKERS), help="default: guessed from keys")
    validate.add_argument("--strict", action="store_true", help="fail on warnings too")
    validate.add_argument("--json", action="store_true", help="print the result as JSON")
    validate.set_defaults(run=cmd_validate)

    jwks = commands.add_parser(
        "jwks",
        help="print the public JWK Set of a signing key",
        description="Print the JWK Set for a PEM key, for a service's "
        "CDS_JWT_ISSUERS file: location.",
    )
    jwks.add_argument("key", metavar="PEM", help="private or public key, PEM")
    jwks.add_argument("--kid", required=True, help="key id, as the client puts in the JWT header")
    jwks.add_argument("--alg", help="default: RS384 for RSA, ES384 for P-384")
    jwks.set_defaults(run=cmd_jwks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors become one readable line on stderr and an exit code."""
    args = build_parser().parse_args(argv)
    if getattr(args, "timeout", 1.0) <= 0:
        print("error: --timeout must be positive", file=sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.run(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (piped into head): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
