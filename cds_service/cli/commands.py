"""The commands: the argparse parser, one ``cmd_*`` function per command, and ``main``.

Each command returns its exit code (``exit_codes``); a ``CliError`` becomes one line on stderr
and the code it carries.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

import requests

from cds_service.app import close_app, create_app
from cds_service.cli.ehr_client import FhirReader, excerpt, json_or_none
from cds_service.cli.exit_codes import EXIT_HTTP_ERROR, EXIT_OK, EXIT_USAGE
from cds_service.cli.fhir_check import request_resource_violations
from cds_service.cli.hook_requests import (
    DEFAULT_USER,
    HOOKS,
    build_hook_request,
    fill_prefetch,
    load_orders,
    normalise_patient_id,
    read_json_file,
)
from cds_service.cli.rendering import Progress, color_enabled, print_violations, render_cards
from cds_service.cli.service_calls import (
    STATUS_HINTS,
    ServiceTarget,
    choose_service,
    discover,
    parse_service_target,
    send_hook,
    service_error_text,
)
from cds_service.cli.signing import JwtSigner, jwk_set, load_private_key
from cds_service.errors import CliError
from cds_service.spec_check import CHECKERS, detect_kind
from fhir_mappings.codes import RXNORM, Coding, Terminology
from fhir_mappings.knowledge import load_knowledge
from fhir_mappings.orders import draft_medication_request

DEFAULT_TIMEOUT_S = 30.0


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


def cmd_hook(args: argparse.Namespace) -> int:
    """Build a hook request for a patient and an order, send it, and show the cards."""
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
        unknown = unknown_drug_warning(args.drug, args.rxnorm)
        if unknown:
            print(unknown, file=err)
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


def unknown_drug_warning(drug: str | None, rxnorm: str | None) -> str | None:
    """A warning line when --drug/--rxnorm names no drug this installation's knowledge knows.

    A misspelt drug otherwise looks like a safe one ("no cards"). The order is still sent (an
    unknown drug is a valid test: it should get no interaction cards); the exit code does not
    change. Checked against the local knowledge data, which a remote service may not share.
    """
    code, name = (rxnorm or "").strip(), (drug or "").strip()
    codings = [Coding(RXNORM, code)] if code else []
    texts = [name] if name else []
    match = Terminology(load_knowledge()).match_medication(codings, texts)
    if match.ingredients or match.roles:
        return None
    named = " and ".join(
        part
        for part in (
            f"--drug {drug!r}" if texts else "",
            f"--rxnorm {rxnorm!r}" if codings else "",
        )
        if part
    )
    return (
        f"warning: {named} matched no drug the service knows (drugs.csv, brands.csv, "
        "ndc.csv, live-vaccine terms): it is sent as an unlisted drug, so no voclosporin "
        "card can fire for it; check the spelling"
    )


def _report(
    response: requests.Response,
    seconds: float,
    target: ServiceTarget,
    args: argparse.Namespace,
    out: IO[str],
    err: IO[str],
) -> int:
    body = json_or_none(response)
    if not response.ok:
        print(
            f"error: {target.url} answered HTTP {response.status_code}: "
            f"{service_error_text(body, response)}",
            file=err,
        )
        hint = STATUS_HINTS.get(response.status_code)
        if hint:
            print("hint: " + hint.format(services=target.services_url), file=err)
        if args.json and body is not None:
            print(json.dumps(body, indent=2), file=out)
        return EXIT_HTTP_ERROR
    if not isinstance(body, dict):
        print(
            f"error: {target.url} answered HTTP {response.status_code} but not with a JSON "
            f"object: {excerpt(response.text)}",
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
    render_cards(body, out, color=color_enabled(out))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Check one CDS Hooks JSON document; exit 1 on errors (or warnings, with --strict)."""
    out = sys.stdout
    document = read_json_file(args.file)
    kind = args.kind or detect_kind(document)
    if kind is None:
        raise CliError(
            f"{args.file}: cannot tell whether this is a request, response, "
            "discovery or feedback document; pass --kind",
            EXIT_USAGE,
        )
    violations = CHECKERS[kind](document)
    if kind == "request":
        # The envelope checker is stdlib-only; the FHIR inside is checked as the service does.
        violations = [*violations, *request_resource_violations(document)]
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


GUNICORN_CONFIG = "python:cds_service.gunicorn_conf"
"""The packaged gunicorn settings (2 workers x 4 threads), found wherever the package is."""

PRODUCTION_README_SECTION = "README.md#production"
"""Where the production recipe is written down (a test checks the heading exists)."""


def gunicorn_command(host: str, port: int, workers: int | None = None) -> str:
    """The production command: the packaged gunicorn config around the same app factory.

    ``workers`` overrides the config's worker count; None keeps the config's 2 x 4 threads.
    """
    command = ["gunicorn", "-c", GUNICORN_CONFIG, "--bind", f"{host}:{port}"]
    if workers is not None:
        command += ["--workers", str(workers)]
    return shlex.join([*command, "cds_service:create_app()"])


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the development server, or print the gunicorn command (--production)."""
    out = sys.stdout
    if args.production:
        print(gunicorn_command(args.host, args.port, args.workers), file=out)
        print(
            "# Settings from cds_service/gunicorn_conf.py (2 gthread workers x 4 threads). Set "
            "CDS_PUBLIC_BASE_URL, CDS_JWT_ISSUERS, CDS_REDIS_URL, CDS_FHIR_ALLOWED_SERVERS, "
            "CDS_DATABASE_URL, CDS_AUDIT_HASH_KEY and CDS_ANALYTICS_TOKEN first and terminate "
            f"TLS in front of it: {PRODUCTION_README_SECTION}.",
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
    print(json.dumps(jwk_set(args.key, args.kid, args.alg), indent=2), file=sys.stdout)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The ``voclosporin-cds`` parser: one subcommand per ``cmd_*`` function."""
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
    serve.add_argument(
        "--host", default="127.0.0.1", help="listen address (default 127.0.0.1: this machine only)"
    )
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
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
        default=None,
        help="gunicorn workers for --production (default: the packaged config's 2, each with "
        "4 threads)",
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
        "violation is printed with its path. A request's FHIR resources (context Bundles such "
        "as draftOrders, prefetch values) are also validated against FHIR R4, as the service "
        "does. Exit 1 when there are errors.",
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
