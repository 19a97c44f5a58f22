"""The ``voclosporin-cds`` command line, run in-process against real servers.

The service runs in a werkzeug server thread on 127.0.0.1 and the charts live on the session's
sekmet-fhir server, so every ``hook`` test crosses real HTTP twice, as an EHR integration does.
The service clock is the real time because the CLI dates its draft orders today, as an EHR does,
and the lupus charts are loaded dated relative to today.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from werkzeug.serving import make_server

from cds_service import cli, close_app
from cds_service.cli.exit_codes import EXIT_HTTP_ERROR, EXIT_UNREACHABLE, EXIT_USAGE
from cds_service.cli.hook_requests import fill_template
from cds_service.cli.rendering import render_cards
from cds_service.cli.service_calls import choose_service, parse_service_target
from cds_service.contract import ORDERS_SERVICE_ID
from cds_service.errors import CliError
from cds_service.spec_check import check_request, check_response
from tests.charts.lupus import CHARTS, VOCLOSPORIN_TEXT, voclosporin_draft_order
from tests.conftest import make_app
from tests.support.fhir_server import FhirServer, free_port

HIGH_BP = "ln-initiation-low-egfr-high-bp"  # BP 170/95, eGFR 42, K 5.6: three gates fail
ON_VOCLOSPORIN = "ln-on-voclosporin-interactions"  # on LUPKYNIS and ketoconazole
ORDERS = ORDERS_SERVICE_ID  # order-select and order-sign at one id (#update-stale-guidance)
SIGN = "voclosporin-order-sign"  # the per-hook id: answers, not listed in discovery
HOOKS = ("order-select", "order-sign", "medication-prescribe")
JWT_ISS = "https://ehr.example.org/cds-client"
JWT_KID = "cli-test-1"

Run = Callable[..., tuple[int, str, str]]


# --------------------------------------------------------------------------- servers


class LiveService:
    """The app behind a real werkzeug server thread; ``app`` may be set after the port is known."""

    def __init__(self) -> None:
        self.app: Flask | None = None
        self.server = make_server("127.0.0.1", 0, self._dispatch, threaded=True)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _dispatch(self, environ: dict[str, Any], start_response: Any) -> Any:
        assert self.app is not None
        return self.app(environ, start_response)

    def service_url(self, service_id: str = ORDERS) -> str:
        return f"{self.base_url}/cds-services/{service_id}"

    def start(self, app: Flask) -> LiveService:
        self.app = app
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join()
        self.server.server_close()
        if self.app is not None:
            close_app(self.app)


@pytest.fixture(scope="module")
def charts(fhir_server: FhirServer) -> FhirServer:
    """Load the lupus charts these tests use, dated relative to today (PUT: idempotent)."""
    for chart_id in (HIGH_BP, ON_VOCLOSPORIN):
        fhir_server.load_bundle(CHARTS[chart_id](date.today()))
    return fhir_server


def _service(tmp_path: Path, fhir: FhirServer, **config: Any) -> LiveService:
    app = make_app(
        tmp_path,
        CDS_FHIR_ALLOWED_SERVERS=fhir.base_url,
        CDS_CLOCK=lambda: datetime.now(UTC),
        CDS_REQUEST_DEADLINE_MS=20_000,  # compare answers, not latency, on a busy 2-core box
        **config,
    )
    return LiveService().start(app)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, charts: FhirServer) -> Iterator[LiveService]:
    """The service as shipped: prefetch, or fetching only with a token (spec #fhir-resource)."""
    live = _service(tmp_path_factory.mktemp("cli-service"), charts)
    yield live
    live.stop()


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``main(argv)`` and return (exit code, stdout, stderr)."""

    def invoke(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def hook_args(service: LiveService, fhir: FhirServer, patient: str, *extra: str) -> list[str]:
    return [
        "hook",
        "--service-url",
        service.service_url(),
        "--hook",
        "order-sign",
        "--fhir-server",
        fhir.base_url,
        "--patient",
        patient,
        *extra,
    ]


def topic_codes(response: dict[str, Any]) -> list[str]:
    return [card["source"]["topic"]["code"] for card in response["cards"]]


LUPKYNIS = ("--drug", VOCLOSPORIN_TEXT, "--dose-mg", "23.7", "--per-day", "2")

pytestmark = pytest.mark.fhir_server


# --------------------------------------------------------------------------- hook


def test_hook_with_prefetch_prints_cards(
    run: Run, service: LiveService, charts: FhirServer
) -> None:
    """--prefetch fills every template from the FHIR server and the critical BP card is shown."""
    code, out, err = run(*hook_args(service, charts, HIGH_BP, *LUPKYNIS, "--prefetch"))
    assert code == 0, err
    assert f"{ORDERS}: HTTP 200" in out
    assert "CRITICAL BP 170/95 is above 165/105: do not start voclosporin" in out
    assert "suggestions (selectionBehavior: at-most-one):" in out
    assert "delete MedicationRequest/draft-" in out
    assert "WARNING  Baseline eGFR 42 is <= 45" in out
    assert "prefetch egfr: HTTP 200, 1 resource(s)" in err
    assert "prefetch patient: HTTP 200, Patient" in err


def test_prefetch_follows_discovery_templates(
    run: Run, service: LiveService, charts: FhirServer
) -> None:
    """--dry-run shows a spec-valid request whose prefetch answers every discovery template."""
    code, out, _ = run(*hook_args(service, charts, HIGH_BP, *LUPKYNIS, "--prefetch", "--dry-run"))
    assert code == 0
    request = json.loads(out)
    assert check_request(request) == []
    templates = requests.get(f"{service.base_url}/cds-services", timeout=10).json()["services"][0]
    assert set(request["prefetch"]) == set(templates["prefetch"])
    assert request["prefetch"]["patient"]["id"] == HIGH_BP
    egfr_ids = [e["resource"]["id"] for e in request["prefetch"]["egfr"]["entry"]]
    assert egfr_ids == [f"{HIGH_BP}-egfr-1"]
    assert request["prefetch"]["creatinine"].get("entry") is None  # none on file: empty Bundle
    order = request["context"]["draftOrders"]["entry"][0]["resource"]
    assert order["status"] == "draft"
    assert order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 23.7
    assert "fhirAuthorization" not in request


def test_service_fetching_and_prefetch_give_same_cards(
    run: Run, service: LiveService, charts: FhirServer
) -> None:
    """With --fhir-token the service fetches the chart itself and reaches the same cards."""
    code, out, err = run(*hook_args(service, charts, HIGH_BP, *LUPKYNIS, "--prefetch", "--json"))
    assert code == 0, err
    prefetched = json.loads(out)
    code, out, err = run(
        *hook_args(service, charts, HIGH_BP, *LUPKYNIS, "--json", "--fhir-token", "sandbox-token")
    )
    assert code == 0, err
    fetched = json.loads(out)
    assert topic_codes(fetched) == topic_codes(prefetched)
    assert topic_codes(fetched)[:3] == ["blood-pressure-high", "egfr-baseline-low", "hyperkalemia"]


def test_json_output_is_the_response(run: Run, service: LiveService, charts: FhirServer) -> None:
    """--json prints only the response JSON on stdout, and it keeps the CDS Hooks rules."""
    code, out, err = run(*hook_args(service, charts, HIGH_BP, *LUPKYNIS, "--prefetch", "--json"))
    assert code == 0, err
    response = json.loads(out)
    assert check_response(response) == []
    assert response["cards"][0]["indicator"] == "critical"
    assert "breaks" not in err


@pytest.mark.parametrize("hook", HOOKS)
def test_each_hook_is_built_and_answered(
    run: Run, service: LiveService, charts: FhirServer, hook: str
) -> None:
    """A base URL plus --hook picks the service from discovery; each hook's context is right."""
    base = [
        "hook",
        "--service-url",
        service.base_url,
        "--hook",
        hook,
        "--fhir-server",
        charts.base_url,
        "--patient",
        HIGH_BP,
        *LUPKYNIS,
        "--prefetch",
        "--quiet",
    ]
    code, out, _ = run(*base, "--dry-run")
    assert code == 0
    request = json.loads(out)
    assert request["hook"] == hook
    assert [v for v in check_request(request) if v.severity == "error"] == []
    context = request["context"]
    if hook == "order-select":
        order_id = context["draftOrders"]["entry"][0]["resource"]["id"]
        assert context["selections"] == [f"MedicationRequest/{order_id}"]
    assert ("medications" in context) == (hook == "medication-prescribe")
    code, out, err = run(*base, "--json")
    assert code == 0, err
    assert topic_codes(json.loads(out))[0] == "blood-pressure-high"
    listed_id = "voclosporin-medication-prescribe" if hook == "medication-prescribe" else ORDERS
    code, out, err = run(*base)
    assert code == 0, err
    assert out.startswith(f"{listed_id}: HTTP 200")


def test_order_by_rxnorm_code(run: Run, service: LiveService, charts: FhirServer) -> None:
    """--rxnorm 3002 (cyclophosphamide) for a patient on LUPKYNIS gets the cyclophosphamide card."""
    code, out, err = run(
        *hook_args(
            service,
            charts,
            ON_VOCLOSPORIN,
            "--rxnorm",
            "3002",
            "--drug",
            "cyclophosphamide 500 MG Injection",
            "--prefetch",
        )
    )
    assert code == 0, err
    assert "Voclosporin with cyclophosphamide is not recommended" in out
    assert "cyclophosphamide 500 MG Injection" in out


def test_order_from_file(
    run: Run, service: LiveService, charts: FhirServer, tmp_path: Path
) -> None:
    """--order FILE sends that MedicationRequest as the draft order, id and all."""
    order_file = tmp_path / "order.json"
    order_file.write_text(json.dumps(voclosporin_draft_order(HIGH_BP, date.today(), "mine-1")))
    code, out, _ = run(
        *hook_args(
            service,
            charts,
            HIGH_BP,
            "--order",
            str(order_file),
            "--prefetch",
            "--dry-run",
            "--quiet",
        )
    )
    assert code == 0
    draft = json.loads(out)["context"]["draftOrders"]["entry"][0]["resource"]
    assert draft["id"] == "mine-1"
    code, out, err = run(
        *hook_args(service, charts, HIGH_BP, "--order", str(order_file), "--prefetch")
    )
    assert code == 0, err
    assert "delete MedicationRequest/mine-1" in out


def test_without_prefetch_or_token_explains_412(
    run: Run, service: LiveService, charts: FhirServer
) -> None:
    """No prefetch and no token: the service answers 412; exit 1 and say how to fix it."""
    code, out, err = run(*hook_args(service, charts, HIGH_BP, *LUPKYNIS))
    assert code == EXIT_HTTP_ERROR
    assert out == ""
    assert "answered HTTP 412: Precondition Failed" in err
    assert "hint:" in err
    assert "--prefetch" in err


def test_client_jwt_signed_and_refused(run: Run, tmp_path: Path, charts: FhirServer) -> None:
    """--jwt-key signs an ES384 JWT the service accepts; without it the 401 comes with a hint."""
    key_file = tmp_path / "client-key.pem"
    key_file.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    code, jwks, _ = run("jwks", str(key_file), "--kid", JWT_KID)
    assert code == 0
    assert json.loads(jwks)["keys"][0]["alg"] == "ES384"
    (tmp_path / "jwks.json").write_text(jwks)
    live = LiveService()
    app = make_app(
        tmp_path,
        CDS_FHIR_ALLOWED_SERVERS=charts.base_url,
        CDS_CLOCK=lambda: datetime.now(UTC),
        CDS_JWT_ISSUERS={JWT_ISS: f"file:{tmp_path / 'jwks.json'}"},
        CDS_PUBLIC_BASE_URL=live.base_url,
    )
    live.start(app)
    try:
        args = hook_args(live, charts, HIGH_BP, *LUPKYNIS, "--prefetch", "--quiet")
        code, out, err = run(
            *args, "--jwt-key", str(key_file), "--jwt-iss", JWT_ISS, "--jwt-kid", JWT_KID
        )
        assert code == 0, err
        assert "CRITICAL BP 170/95" in out
        code, out, err = run(*args)
        assert code == EXIT_HTTP_ERROR
        assert "answered HTTP 401" in err
        assert "--jwt-key" in err
        code, _, err = run(*args, "--jwt-key", str(key_file))
        assert code == EXIT_USAGE
        assert "--jwt-iss" in err
    finally:
        live.stop()


# --------------------------------------------------------------------------- helpful errors


def test_unreachable_service(run: Run, charts: FhirServer) -> None:
    """Nothing listening at --service-url: exit 3 with what to check."""
    url = f"http://127.0.0.1:{free_port()}/cds-services/{SIGN}"
    code, out, err = run(
        "hook",
        "--service-url",
        url,
        "--fhir-server",
        charts.base_url,
        "--patient",
        HIGH_BP,
        *LUPKYNIS,
        "--prefetch",
    )
    assert code == EXIT_UNREACHABLE
    assert out == ""
    assert f"error: Cannot reach the CDS service at {url.rsplit('/', 1)[0]}" in err
    assert "connection refused" in err


def test_unreachable_fhir_server(run: Run, service: LiveService) -> None:
    """Nothing listening at --fhir-server: exit 3 naming the FHIR server."""
    fhir = f"http://127.0.0.1:{free_port()}/fhir"
    code, _, err = run(
        "hook",
        "--service-url",
        service.service_url(),
        "--hook",
        "order-sign",
        "--fhir-server",
        fhir,
        "--patient",
        HIGH_BP,
        *LUPKYNIS,
    )
    assert code == EXIT_UNREACHABLE
    assert f"error: Cannot reach the FHIR server at {fhir}: connection refused" in err


def test_unknown_patient_id(run: Run, service: LiveService, charts: FhirServer) -> None:
    """A patient id the server does not know: exit 3, say so and list ids that exist."""
    code, _, err = run(*hook_args(service, charts, "ln-nobody", *LUPKYNIS))
    assert code == EXIT_UNREACHABLE
    assert "Patient 'ln-nobody' was not found on the FHIR server" in err
    assert "(HTTP 404)" in err
    assert "Patients on this server include: " in err


def test_malformed_patient_id(run: Run, service: LiveService, charts: FhirServer) -> None:
    """A name instead of an id is refused before any request (exit 2); Patient/x is accepted."""
    code, _, err = run(*hook_args(service, charts, "Jane Doe", *LUPKYNIS))
    assert code == EXIT_USAGE
    assert "is not a FHIR id" in err
    code, out, _ = run(
        *hook_args(service, charts, f"Patient/{HIGH_BP}", *LUPKYNIS, "--dry-run", "--quiet")
    )
    assert code == 0
    assert json.loads(out)["context"]["patientId"] == HIGH_BP


def test_not_a_cds_service(run: Run, charts: FhirServer) -> None:
    """A --service-url that is not a CDS service (here the FHIR server) is named as such."""
    code, _, err = run(
        "hook",
        "--service-url",
        f"{charts.base_url}/cds-services/x",
        "--prefetch",
        "--fhir-server",
        charts.base_url,
        "--patient",
        HIGH_BP,
        *LUPKYNIS,
    )
    assert code == EXIT_HTTP_ERROR
    assert f"error: Discovery {charts.base_url}/cds-services answered HTTP 404" in err
    assert "Is --service-url a CDS Hooks service" in err


def test_unknown_service_id_lists_services(
    run: Run, service: LiveService, charts: FhirServer
) -> None:
    """An id discovery does not list: exit 2 and list the ids that exist."""
    code, _, err = run(
        "hook",
        "--service-url",
        service.service_url("voclosporin-typo"),
        "--prefetch",
        "--fhir-server",
        charts.base_url,
        "--patient",
        HIGH_BP,
        *LUPKYNIS,
    )
    assert code == EXIT_USAGE
    assert "lists no service 'voclosporin-typo'" in err
    assert f"{ORDERS} (order-select), {ORDERS} (order-sign)" in err


def test_shared_id_without_hook_asks_for_it(
    run: Run, service: LiveService, charts: FhirServer
) -> None:
    """The shared id serves two hooks: without --hook the CLI says so (exit 2), sends nothing."""
    args = hook_args(service, charts, HIGH_BP, *LUPKYNIS, "--prefetch")
    hook_at = args.index("--hook")
    del args[hook_at : hook_at + 2]
    code, out, err = run(*args)
    assert code == EXIT_USAGE
    assert out == ""
    assert f"Service '{ORDERS}' serves order-select, order-sign: give --hook" in err
    assert "POST" not in err


def test_per_hook_id_still_answers_without_discovery(
    run: Run, service: LiveService, charts: FhirServer
) -> None:
    """The unlisted per-hook id answers when called with --hook (no discovery needed); with
    --prefetch the CLI needs its templates from discovery and says how to call it instead."""
    args = hook_args(service, charts, HIGH_BP, *LUPKYNIS, "--fhir-token", "sandbox-token")
    args[args.index(service.service_url())] = service.service_url(SIGN)
    code, out, err = run(*args)
    assert code == 0, err
    assert out.startswith(f"{SIGN}: HTTP 200")
    assert "GET " + service.base_url + "/cds-services:" not in err
    assert "CRITICAL BP 170/95" in out
    code, _, err = run(*args, "--prefetch")
    assert code == EXIT_USAGE
    assert f"lists no service '{SIGN}'" in err
    assert "with --hook and without --prefetch" in err


def entry(service_id: str, hook: str) -> dict[str, Any]:
    return {"id": service_id, "hook": hook, "description": "d"}


BOTH_LISTED = [
    entry("voclosporin-order-select", "order-select"),
    entry(ORDERS, "order-select"),
    entry(ORDERS, "order-sign"),
    entry("voclosporin-order-sign", "order-sign"),
    entry("voclosporin-medication-prescribe", "medication-prescribe"),
]


@pytest.mark.parametrize(
    ("service_id", "hook", "expected"),
    [
        pytest.param(None, "order-select", (ORDERS, "order-select"), id="hook-prefers-shared"),
        pytest.param(None, "order-sign", (ORDERS, "order-sign"), id="sign-prefers-shared"),
        pytest.param(
            None,
            "medication-prescribe",
            ("voclosporin-medication-prescribe", "medication-prescribe"),
            id="single-entry-hook",
        ),
        pytest.param(ORDERS, "order-sign", (ORDERS, "order-sign"), id="shared-id-and-hook"),
        pytest.param(
            "voclosporin-order-select",
            "order-select",
            ("voclosporin-order-select", "order-select"),
            id="per-hook-id-when-asked",
        ),
        pytest.param(
            "voclosporin-order-sign",
            None,
            ("voclosporin-order-sign", "order-sign"),
            id="per-hook-id-gives-its-hook",
        ),
    ],
)
def test_choose_service_prefers_the_shared_id(
    service_id: str | None, hook: str | None, expected: tuple[str, str]
) -> None:
    """A discovery listing a hook under several ids: --hook alone picks the id that serves
    several hooks (a client doing update stale guidance); an explicit id always wins."""
    chosen = choose_service(BOTH_LISTED, service_id, hook, "http://h/cds-services")
    assert (chosen["id"], chosen["hook"]) == expected


@pytest.mark.parametrize(
    ("services", "service_id", "hook", "message"),
    [
        pytest.param(
            [
                *BOTH_LISTED,
                entry("other-orders", "order-select"),
                entry("other-orders", "order-sign"),
            ],
            None,
            "order-select",
            "Cannot tell which service to call",
            id="two-shared-ids-for-the-hook",
        ),
        pytest.param(BOTH_LISTED, ORDERS, None, "serves order-select, order-sign", id="no-hook"),
        pytest.param(BOTH_LISTED, None, None, "Cannot tell which service", id="nothing-given"),
    ],
)
def test_choose_service_refuses_to_guess(
    services: list[dict[str, Any]], service_id: str | None, hook: str | None, message: str
) -> None:
    """When discovery leaves more than one candidate, the CLI asks rather than guesses."""
    with pytest.raises(CliError, match=message) as raised:
        choose_service(services, service_id, hook, "http://h/cds-services")
    assert raised.value.exit_code == EXIT_USAGE


def test_slow_fhir_server_shows_progress_then_times_out(run: Run, service: LiveService) -> None:
    """A FHIR server that accepts but never answers: "still waiting" lines, then exit 3."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nobody ever answers
        fhir = f"http://127.0.0.1:{silent.getsockname()[1]}/fhir"
        code, _, err = run(
            "hook",
            "--service-url",
            service.service_url(),
            "--hook",
            "order-sign",
            "--fhir-server",
            fhir,
            "--patient",
            HIGH_BP,
            *LUPKYNIS,
            "--timeout",
            "2.5",
        )
    assert code == EXIT_UNREACHABLE
    assert f"... still waiting for GET Patient/{HIGH_BP} (1 s)" in err
    assert f"... still waiting for GET Patient/{HIGH_BP} (2 s)" in err
    assert f"error: The FHIR server {fhir} did not answer within 2.5 s" in err


def test_quiet_silences_progress(run: Run, service: LiveService, charts: FhirServer) -> None:
    """--quiet leaves stderr empty on success; the cards still print."""
    code, out, err = run(*hook_args(service, charts, HIGH_BP, *LUPKYNIS, "--prefetch", "--quiet"))
    assert code == 0
    assert err == ""
    assert "CRITICAL" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param((), "say what is ordered", id="no-order"),
        pytest.param(
            ("--drug", "x", "--order", "o.json"),
            "--order takes the whole order",
            id="order-and-drug",
        ),
        pytest.param(("--drug", "x", "--dose-mg", "-1"), "must be positive", id="negative-dose"),
        pytest.param(
            ("--drug", "x", "--jwt", "t", "--jwt-key", "k.pem"), "either --jwt or", id="two-jwts"
        ),
    ],
)
def test_usage_errors(run: Run, extra: tuple[str, ...], message: str) -> None:
    """Contradictory or missing options exit 2 before any network traffic."""
    code, _, err = run(
        "hook",
        "--service-url",
        "http://127.0.0.1:9/cds-services/x",
        "--fhir-server",
        "http://127.0.0.1:9/fhir",
        "--patient",
        "p1",
        *extra,
    )
    assert code == EXIT_USAGE
    assert message in err


# --------------------------------------------------------------------------- validate


BAD_RESPONSE = {
    "cards": [
        {
            "uuid": "4f8d9f5a-5b7e-4f0e-9d43-9a5a3c1d2e10",
            "summary": "x" * 150,
            "detail": None,
            "indicator": "warning",
            "source": {"label": "Example"},
            "suggestions": [{"label": "Stop", "uuid": "7b1c2d3e-0000-4000-8000-000000000001"}],
            "overrideReasons": [{"system": "http://example.org", "code": "no-display"}],
            "links": [],
        }
    ],
}


def test_validate_good_response(run: Run, tmp_path: Path) -> None:
    """A response that keeps the rules: exit 0 and a one-line verdict."""
    good = {
        "cards": [
            {
                "uuid": "4f8d9f5a-5b7e-4f0e-9d43-9a5a3c1d2e10",
                "summary": "Check potassium",
                "indicator": "info",
                "source": {"label": "Example"},
            }
        ]
    }
    path = tmp_path / "good.json"
    path.write_text(json.dumps(good))
    code, out, _ = run("validate", str(path))
    assert code == 0
    assert out.strip() == f"{path}: response follows CDS Hooks 2.0: 0 error(s), 0 warning(s)"


def test_validate_bad_response_names_each_path(run: Run, tmp_path: Path) -> None:
    """Each broken rule is printed with its path; errors exit 1."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(BAD_RESPONSE))
    code, out, _ = run("validate", str(path))
    assert code == EXIT_HTTP_ERROR
    for line in (
        "error: cards[0].summary: must be under 140 characters, has 150",
        "error: cards[0].detail: must not be null",
        "error: cards[0].selectionBehavior: is required when suggestions are present",
        "error: cards[0].overrideReasons[0].display: is required",
        "error: cards[0].links: must not be an empty array",
    ):
        assert line in out
    assert "response breaks CDS Hooks 2.0: 5 error(s)" in out


def test_validate_json_output_and_strict(run: Run, tmp_path: Path) -> None:
    """--json gives machine-readable violations; --strict fails on warnings alone."""
    path = tmp_path / "warn.json"
    path.write_text(
        json.dumps(
            {
                "cards": [
                    {
                        "summary": "No uuid, so no feedback",
                        "indicator": "info",
                        "source": {"label": "x"},
                    }
                ]
            }
        )
    )
    code, out, _ = run("validate", str(path), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["kind"] == "response"
    assert result["errors"] == 0
    assert result["warnings"] >= 1
    assert {"severity", "path", "message"} <= set(result["violations"][0])
    code, _, _ = run("validate", str(path), "--strict")
    assert code == EXIT_HTTP_ERROR


def test_validate_request_file(run: Run, tmp_path: Path) -> None:
    """A request with a null prefetch key passes; a reference as patientId is an error."""
    request = {
        "hook": "order-sign",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {
            "userId": "Practitioner/1",
            "patientId": "Patient/1",
            "draftOrders": {"resourceType": "Bundle", "type": "collection"},
        },
        "prefetch": {"egfr": None},
    }
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    code, out, _ = run("validate", str(path))
    assert code == EXIT_HTTP_ERROR
    assert "error: context.patientId: must be a bare FHIR id, not a reference" in out
    assert "prefetch" not in out


def _order_sign_request(draft: dict[str, Any], prefetch: dict[str, Any]) -> dict[str, Any]:
    request: dict[str, Any] = {
        "hook": "order-sign",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {
            "userId": "Practitioner/1",
            "patientId": "pat-1",
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": draft}],
            },
        },
    }
    if prefetch:
        request["prefetch"] = prefetch
    return request


def test_validate_request_reports_invalid_r4_draft_with_its_path(run: Run, tmp_path: Path) -> None:
    """A draft with `category` as an object (as the Sandbox sends; invalid R4) errs at its path."""
    draft = voclosporin_draft_order("pat-1", date(2026, 12, 1), order_id="request-123")
    draft["category"] = {"coding": [{"code": "outpatient"}]}  # R4: a list of CodeableConcept
    path = tmp_path / "request.json"
    path.write_text(json.dumps(_order_sign_request(draft, {})))

    code, out, _ = run("validate", str(path), "--json")

    assert code == EXIT_HTTP_ERROR
    result = json.loads(out)
    assert result["errors"] == 1, result
    (violation,) = result["violations"]
    assert violation["severity"] == "error"
    assert violation["path"] == "context.draftOrders.entry[0].resource"
    assert "invalid FHIR R4 MedicationRequest" in violation["message"]
    assert "category" in violation["message"]


def test_validate_request_checks_prefetch_resources(run: Run, tmp_path: Path) -> None:
    """Prefetch resources and Bundle entries are validated too; a valid request has 0 errors."""
    draft = voclosporin_draft_order("pat-1", date(2026, 12, 1))
    patient = {"resourceType": "Patient", "id": "pat-1", "gender": "female"}
    labs = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "ok",
                    "status": "final",
                    "code": {"text": "eGFR"},
                }
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "bad",
                    "status": "final",
                    "code": {"text": "eGFR"},
                    "valueQuantity": {"value": "high"},
                }
            },
        ],
    }
    valid = tmp_path / "valid.json"
    valid.write_text(json.dumps(_order_sign_request(draft, {"patient": patient, "egfr": None})))
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps(_order_sign_request(draft, {"patient": patient, "egfr": labs})))

    code, out, _ = run("validate", str(valid))
    assert code == 0, out
    assert "0 error(s)" in out
    code, out, _ = run("validate", str(invalid))
    assert code == EXIT_HTTP_ERROR
    assert "error: prefetch.egfr.entry[1].resource: invalid FHIR R4 Observation" in out
    assert "entry[0]" not in out
    assert "1 error(s)" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            '{"cards": [',
            "is not valid JSON: Expecting value at line 1 column 12",
            id="broken-json",
        ),
        pytest.param('{"whatever": 1}', "pass --kind", id="unknown-kind"),
    ],
)
def test_validate_unusable_file(run: Run, tmp_path: Path, content: str, message: str) -> None:
    """A file that is not JSON, or not a CDS Hooks document, exits 2 and says why."""
    path = tmp_path / "file.json"
    path.write_text(content)
    code, _, err = run("validate", str(path))
    assert code == EXIT_USAGE
    assert message in err


# --------------------------------------------------------------------------- serve and units


def test_console_script_is_registered() -> None:
    """pyproject's voclosporin-cds entry point resolves to cli.main."""
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "voclosporin-cds"]
    assert script.load() is cli.main


def test_serve_production_prints_gunicorn(run: Run) -> None:
    """serve --production --print-command prints the README's recipe and runs nothing."""
    code, out, _ = run(
        "serve", "--production", "--print-command", "--host", "0.0.0.0", "--port", "9000"
    )
    assert code == 0
    command, note = out.splitlines()
    assert command == (
        "gunicorn -c python:cds_service.gunicorn_conf --bind 0.0.0.0:9000 "
        "'cds_service:create_app()'"
    )
    assert "2 gthread workers x 4 threads" in note
    assert note.endswith("README.md#production.")


def test_serve_production_workers_override_the_config(run: Run) -> None:
    """--workers is passed on after the config file, so it overrides the config's 2."""
    code, out, _ = run(
        "serve", "--production", "--print-command", "--port", "9000", "--workers", "5"
    )
    assert code == 0
    assert out.splitlines()[0] == (
        "gunicorn -c python:cds_service.gunicorn_conf --bind 127.0.0.1:9000 "
        "--workers 5 'cds_service:create_app()'"
    )


def test_packaged_gunicorn_config_is_the_recipe() -> None:
    """The module the command names holds the README's 2 x 4 gthread settings and the GC hook;
    the top-level gunicorn.conf.py only re-exports it."""
    from cds_service import gunicorn_conf

    assert (gunicorn_conf.workers, gunicorn_conf.threads) == (2, 4)
    assert gunicorn_conf.worker_class == "gthread"
    assert callable(gunicorn_conf.post_worker_init)
    # gunicorn's header limit sits above the app's, so a long header gets the JSON 431.
    from cds_service.app import MAX_HEADER_FIELD_BYTES

    assert gunicorn_conf.limit_request_field_size > MAX_HEADER_FIELD_BYTES
    top = (Path(__file__).resolve().parents[1] / "gunicorn.conf.py").read_text(encoding="utf-8")
    assert "\nfrom cds_service.gunicorn_conf import *" in top


def test_serve_runs_the_dev_server(tmp_path: Path) -> None:
    """serve starts the service on the given port; /healthz answers until it is stopped."""
    port = free_port()
    env = {**os.environ, "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.sqlite3'}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cds_service.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        health = None
        deadline = time.monotonic() + 30
        with requests.Session() as session:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    health = session.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    break
                except requests.ConnectionError:
                    time.sleep(0.1)
        assert health is not None, "the dev server never answered"
        assert health.json()["status"] == "ok"
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    assert f"Serving on http://127.0.0.1:{port}" in output


@pytest.mark.parametrize(
    ("url", "service_id", "expected"),
    [
        pytest.param(
            "http://h:1/cds-services/voclosporin-order-sign",
            None,
            ("http://h:1/cds-services", "voclosporin-order-sign"),
            id="full-url",
        ),
        pytest.param(
            "http://h:1/cds", "abc", ("http://h:1/cds/cds-services", "abc"), id="prefix-and-id"
        ),
        pytest.param(
            "http://h:1/cds-services/",
            "abc",
            ("http://h:1/cds-services", "abc"),
            id="discovery-and-id",
        ),
        pytest.param("http://h:1", None, ("http://h:1/cds-services", None), id="base-only"),
    ],
)
def test_service_url_forms(url: str, service_id: str | None, expected: tuple[str, Any]) -> None:
    """The service URL may be the endpoint itself, or a base with --service-id or --hook."""
    target = parse_service_target(url, service_id)
    assert (target.services_url, target.service_id) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        pytest.param("Patient/{{context.patientId}}", "Patient/p1", id="patient"),
        pytest.param("Practitioner/{{userPractitionerId}}", "Practitioner/u1", id="user-token"),
        pytest.param("Encounter/{{context.encounterId}}", None, id="absent-field"),
        pytest.param("PractitionerRole/{{userPractitionerRoleId}}", None, id="wrong-user-type"),
        pytest.param("Bundle?x={{context.draftOrders}}", None, id="not-primitive"),
    ],
)
def test_fill_template(template: str, expected: str | None) -> None:
    """Tokens fill from the context; an unfillable template is skipped (spec: omit the key)."""
    context = {"patientId": "p1", "userId": "Practitioner/u1", "draftOrders": {"a": 1}}
    assert fill_template(template, context) == expected


def test_render_cards_shows_every_part() -> None:
    """Indicator, summary, source, detail, suggestions with actions, override reasons, links."""
    import io

    out = io.StringIO()
    render_cards(
        {
            "cards": [
                {
                    "summary": "Reduce the dose",
                    "indicator": "warning",
                    "source": {"label": "Label 2.4", "url": "https://example.org/label"},
                    "detail": "eGFR fell **32%**.\n\n- from 80\n- to 54",
                    "selectionBehavior": "at-most-one",
                    "suggestions": [
                        {
                            "label": "Use 15.8 mg",
                            "isRecommended": True,
                            "actions": [
                                {
                                    "type": "update",
                                    "description": "Change the dose",
                                    "resource": {"resourceType": "MedicationRequest", "id": "d1"},
                                }
                            ],
                        }
                    ],
                    "overrideReasons": [{"system": "s", "code": "c", "display": "Will monitor"}],
                    "links": [
                        {
                            "label": "Calculator",
                            "url": "https://example.org/calc",
                            "type": "absolute",
                        }
                    ],
                }
            ]
        },
        out,
    )
    text = out.getvalue()
    assert "1. WARNING  Reduce the dose" in text
    assert "source: Label 2.4 <https://example.org/label>" in text
    assert "   - from 80" in text
    assert "     - Use 15.8 mg [recommended]" in text
    assert "update MedicationRequest/d1: Change the dose" in text
    assert "override reasons: Will monitor" in text
    assert "link: Calculator <https://example.org/calc> (absolute)" in text
