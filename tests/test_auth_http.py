"""Client JWTs over HTTP (issue 3): the app refuses every bad token with a bare 401 and lets
valid tokens of each EHR shape through; discovery, health and CORS preflights stay open.

``tests/test_auth.py`` pins ``ClientAuthenticator`` itself; this file pins the wiring (the
``before_request`` hook, the audience per endpoint, the error body, CORS) through the Flask test
client, and the replay cache across processes: gunicorn with two workers sharing Redis, where a
token replayed to the *other* worker must still be refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask
from flask.testing import FlaskClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service import close_app
from cds_service.config import from_environment
from tests.charts.lupus import ln_initiation_clean, voclosporin_draft_order
from tests.conftest import FIXED_NOW, make_app
from tests.support.gunicorn import Gunicorn, free_port, two_workers
from tests.support.hooks import chart_resources, hook_request, prefetch_for

REDIS_URL = "redis://127.0.0.1:6379/0"
REPLAY_PREFIX = "cds:jti:"  # RedisReplayCache's default prefix (the app does not set another)
PUBLIC_BASE = "http://localhost"
SIGN_PATH = "/cds-services/voclosporin-order-sign"
SELECT_PATH = "/cds-services/voclosporin-order-select"
FEEDBACK_PATH = f"{SIGN_PATH}/feedback"
SANDBOX_ORIGIN = "https://sandbox.cds-hooks.org"

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
EPIC_ISS = "https://fhir.epic.example.org/interconnect-fhir-oauth"
EPIC_JKU = f"{EPIC_ISS}/api/epic/2019/Security/Open/PublicKeys/530005/CDSHooks"
ORACLE_ISS = "https://authorization.oracle-health.example/tenants/ec2458f2"
BARE_401 = {"error": {"status": 401, "title": "Unauthorized"}}
PATIENT_ID = "ln-initiation-clean"
TODAY = FIXED_NOW.date()


# --------------------------------------------------------------------------- keys and tokens


@dataclass(frozen=True)
class Key:
    """A client's private key with the kid and alg it signs with."""

    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    kid: str
    alg: str

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    """One key per client shape, plus an attacker key that reuses Epic's kid."""
    return {
        "sandbox-es256": Key(ec.generate_private_key(ec.SECP256R1()), "sb-256", "ES256"),
        "sandbox-es384": Key(ec.generate_private_key(ec.SECP384R1()), "sb-384", "ES384"),
        "epic-rs384": Key(rsa.generate_private_key(65537, 2048), "epic-cds-2024", "RS384"),
        "oracle-rs384": Key(rsa.generate_private_key(65537, 2048), "oracle-rsa", "RS384"),
        "oracle-es384": Key(ec.generate_private_key(ec.SECP384R1()), "oracle-ec", "ES384"),
        "attacker": Key(rsa.generate_private_key(65537, 2048), "epic-cds-2024", "RS384"),
    }


ISSUER_OF = {
    "sandbox-es256": (SANDBOX_ISS, SANDBOX_JKU),
    "sandbox-es384": (SANDBOX_ISS, SANDBOX_JKU),
    "epic-rs384": (EPIC_ISS, EPIC_JKU),
    "oracle-rs384": (ORACLE_ISS, None),
    "oracle-es384": (ORACLE_ISS, None),
}


def sign(
    key: Key,
    iss: str,
    aud: str,
    *,
    jku: str | None = None,
    lifetime: int = 300,
    iat_offset: int = 0,
    claims: dict[str, Any] | None = None,
    headers: dict[str, Any] | None = None,
    alg: str | None = None,
) -> str:
    """Sign a CDS client JWT as an EHR does; the knobs break one thing at a time."""
    now = int(time.time()) + iat_offset
    payload = {
        "iss": iss,
        "aud": aud,
        "iat": now,
        "exp": now + lifetime,
        "jti": f"test-{uuid.uuid4()}",
        **(claims or {}),
    }
    header = {"kid": key.kid, "typ": "JWT", **(headers or {})}
    if jku:
        header["jku"] = jku
    return jwt.encode(payload, key.private, algorithm=alg or key.alg, headers=header)


def token_for(keys: dict[str, Key], shape: str, aud: str, **kwargs: Any) -> str:
    """A valid token of one EHR shape (Epic adds sub and an nbf five minutes back)."""
    iss, jku = ISSUER_OF[shape]
    claims: dict[str, Any] = {}
    if shape.startswith("epic"):
        claims = {"sub": "epic-client-id", "nbf": int(time.time()) - 300}
    elif shape.startswith("sandbox"):
        claims = {"sub": "48163c5e-88b5-4cb3-92d3-23b800caa927"}
    else:
        claims = {"tenant": "ec2458f2-1e24-41c8-b71b-0e701af7583d"}
    claims.update(kwargs.pop("claims", {}))
    return sign(keys[shape], iss, aud, jku=jku, claims=claims, **kwargs)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(
    header: dict[str, Any], payload: dict[str, Any], signer: Callable[[bytes], bytes]
) -> str:
    """A JWS PyJWT refuses to make (alg none, HMAC keyed with a public key)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(signer(signing_input.encode()))}"


def _claims(iss: str, aud: str) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": iss, "aud": aud, "iat": now, "exp": now + 300, "jti": f"test-{uuid.uuid4()}"}


# --------------------------------------------------------------------------- the app


@pytest.fixture
def jwks_served(keys: dict[str, Key]) -> Iterator[responses.RequestsMock]:
    """Publish the sandbox and Epic JWK Sets at their jku URLs (no network)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(
            responses.GET,
            SANDBOX_JKU,
            json={"keys": [keys["sandbox-es256"].jwk(), keys["sandbox-es384"].jwk()]},
        )
        mock.add(responses.GET, EPIC_JKU, json={"keys": [keys["epic-rs384"].jwk()]})
        yield mock


@pytest.fixture
def oracle_jwks(tmp_path: Path, keys: dict[str, Key]) -> Path:
    """The Oracle Health key set, exchanged out of band and configured as a file: location."""
    path = tmp_path / "oracle-jwks.json"
    path.write_text(json.dumps({"keys": [keys["oracle-rs384"].jwk(), keys["oracle-es384"].jwk()]}))
    return path


@pytest.fixture
def app(tmp_path: Path, oracle_jwks: Path, jwks_served: responses.RequestsMock) -> Iterator[Flask]:
    """The service with JWTs required, Redis as replay cache and CORS for the sandbox."""
    application = make_app(
        tmp_path,
        CDS_JWT_ISSUERS={
            SANDBOX_ISS: SANDBOX_JKU,
            EPIC_ISS: EPIC_JKU,
            ORACLE_ISS: f"file:{oracle_jwks}",
        },
        CDS_PUBLIC_BASE_URL=PUBLIC_BASE,
        CDS_REDIS_URL=REDIS_URL,
        CDS_CORS_ORIGINS=SANDBOX_ORIGIN,
    )
    yield application
    close_app(application)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def hook_body(app: Flask) -> dict[str, Any]:
    """A complete order-sign request (full prefetch), so an accepted call is a 200."""
    templates = app.extensions["cds_service"].services["voclosporin-order-sign"].prefetch
    resources = chart_resources(ln_initiation_clean(TODAY))
    prefetch = prefetch_for(resources, PATIENT_ID, templates)
    return hook_request(
        "order-sign", PATIENT_ID, [voclosporin_draft_order(PATIENT_ID, TODAY)], prefetch
    )


def post(client: FlaskClient, path: str, body: Any, token: str | None, **headers: str) -> Any:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.post(path, json=body, headers=headers)


def assert_bare_401(response: Any, *secrets: str) -> None:
    """401 with the fixed body, a Bearer challenge, and nothing about why."""
    assert response.status_code == 401, response.get_data(as_text=True)[:300]
    assert response.get_json() == BARE_401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    text = response.get_data(as_text=True)
    for secret in secrets:
        assert secret not in text


@pytest.fixture(autouse=True)
def _forget_replay_keys() -> Iterator[None]:
    """Delete the replay-cache entries of the tokens this test marked with ``remember``."""
    yield
    if not _ISSUED:
        return
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.delete(*_ISSUED)
    finally:
        client.close()
        _ISSUED.clear()


_ISSUED: set[bytes] = set()


def remember(token: str) -> str:
    """Record a token's replay-cache key so the fixture above can delete it."""
    claims = jwt.decode(token, options={"verify_signature": False})
    digest = hashlib.sha256(f"{claims['iss']}\x00{claims['jti']}".encode()).hexdigest()
    _ISSUED.add(f"{REPLAY_PREFIX}{digest}".encode())
    return token


# --------------------------------------------------------------------------- accepted tokens


@pytest.mark.parametrize("shape", list(ISSUER_OF))
def test_valid_token_of_each_ehr_shape_is_accepted(
    client: FlaskClient, keys: dict[str, Key], hook_body: dict[str, Any], shape: str
) -> None:
    """Sandbox (ES256/ES384 + jku), Epic (RS384 + jku, sub, nbf) and Oracle (file: keys) pass."""
    token = remember(token_for(keys, shape, PUBLIC_BASE + SIGN_PATH))
    response = post(client, SIGN_PATH, hook_body, token)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json()["cards"]


def test_jwks_is_fetched_once_for_many_calls(
    client: FlaskClient,
    keys: dict[str, Key],
    hook_body: dict[str, Any],
    jwks_served: responses.RequestsMock,
) -> None:
    """Keys are cached: three Epic calls cost one JWK Set fetch."""
    for _ in range(3):
        token = remember(token_for(keys, "epic-rs384", PUBLIC_BASE + SIGN_PATH))
        assert post(client, SIGN_PATH, hook_body, token).status_code == 200
    fetches = [c for c in jwks_served.calls if c.request.url == EPIC_JKU]
    assert len(fetches) == 1


# --------------------------------------------------------------------------- refused tokens


def _forged(keys: dict[str, Key]) -> str:
    return sign(keys["attacker"], EPIC_ISS, PUBLIC_BASE + SIGN_PATH, jku=EPIC_JKU)


def _expired(keys: dict[str, Key]) -> str:
    return token_for(keys, "oracle-rs384", PUBLIC_BASE + SIGN_PATH, iat_offset=-400, lifetime=300)


def _other_service_audience(keys: dict[str, Key]) -> str:
    return token_for(keys, "oracle-es384", PUBLIC_BASE + SELECT_PATH)


def _other_host_audience(keys: dict[str, Key]) -> str:
    return token_for(keys, "oracle-es384", "https://other-cds.example.org" + SIGN_PATH)


def _wrong_issuer(keys: dict[str, Key]) -> str:
    return sign(keys["oracle-rs384"], "https://untrusted.example.org", PUBLIC_BASE + SIGN_PATH)


def _alg_none(keys: dict[str, Key]) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": keys["oracle-rs384"].kid}
    return hand_made(header, _claims(ORACLE_ISS, PUBLIC_BASE + SIGN_PATH), lambda _: b"")


def _hmac_with_public_key(keys: dict[str, Key]) -> str:
    key = keys["oracle-rs384"]
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    secret = key.public_pem()
    return hand_made(
        header,
        _claims(ORACLE_ISS, PUBLIC_BASE + SIGN_PATH),
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )


def _unknown_kid(keys: dict[str, Key]) -> str:
    return token_for(keys, "oracle-rs384", PUBLIC_BASE + SIGN_PATH, headers={"kid": "no-such-key"})


def _foreign_jku(keys: dict[str, Key]) -> str:
    return sign(
        keys["attacker"],
        EPIC_ISS,
        PUBLIC_BASE + SIGN_PATH,
        jku="https://attacker.example.org/jwks.json",
    )


def _too_long_lived(keys: dict[str, Key]) -> str:
    return token_for(keys, "oracle-rs384", PUBLIC_BASE + SIGN_PATH, lifetime=7200)


def _not_yet_valid(keys: dict[str, Key]) -> str:
    return token_for(
        keys, "epic-rs384", PUBLIC_BASE + SIGN_PATH, claims={"nbf": int(time.time()) + 600}
    )


def _no_jti(keys: dict[str, Key]) -> str:
    key = keys["oracle-rs384"]
    claims = _claims(ORACLE_ISS, PUBLIC_BASE + SIGN_PATH)
    del claims["jti"]
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid})


def _tampered_payload(keys: dict[str, Key]) -> str:
    header, _, signature = token_for(keys, "oracle-rs384", PUBLIC_BASE + SELECT_PATH).split(".")
    payload = _b64(json.dumps(_claims(ORACLE_ISS, PUBLIC_BASE + SIGN_PATH)).encode())
    return f"{header}.{payload}.{signature}"


REFUSED: dict[str, Callable[[dict[str, Key]], str]] = {
    "forged-signature": _forged,
    "expired": _expired,
    "audience-of-another-service": _other_service_audience,
    "audience-of-another-host": _other_host_audience,
    "untrusted-issuer": _wrong_issuer,
    "alg-none": _alg_none,
    "hmac-keyed-with-public-key": _hmac_with_public_key,
    "unknown-kid": _unknown_kid,
    "jku-elsewhere": _foreign_jku,
    "lifetime-over-an-hour": _too_long_lived,
    "nbf-in-the-future": _not_yet_valid,
    "no-jti": _no_jti,
    "tampered-payload": _tampered_payload,
    "not-a-jwt": lambda _: "not.a.jwt",
    "garbage": lambda _: "%%%",
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_token_is_a_bare_401(
    client: FlaskClient, keys: dict[str, Key], hook_body: dict[str, Any], case: str
) -> None:
    """Each forged, expired, misdirected or malformed token gets the same bare 401."""
    token = REFUSED[case](keys)
    assert_bare_401(post(client, SIGN_PATH, hook_body, token), token)


def test_replayed_token_is_refused(
    client: FlaskClient, keys: dict[str, Key], hook_body: dict[str, Any]
) -> None:
    """A token is good once: the same jti again is a bare 401, even moments later."""
    token = remember(token_for(keys, "sandbox-es256", PUBLIC_BASE + SIGN_PATH))
    assert post(client, SIGN_PATH, hook_body, token).status_code == 200
    assert_bare_401(post(client, SIGN_PATH, hook_body, token), token)


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc", "bearer"],
)
def test_missing_or_non_bearer_authorization_is_a_bare_401(
    client: FlaskClient, hook_body: dict[str, Any], authorization: str
) -> None:
    """No usable Authorization header gives the same bare 401."""
    headers = {"Authorization": authorization} if authorization else {}
    assert_bare_401(client.post(SIGN_PATH, json=hook_body, headers=headers))


def test_refusal_comes_before_the_body_is_read(client: FlaskClient) -> None:
    """Without a JWT even a broken body gets 401 (nothing is parsed for strangers)."""
    response = client.post(SIGN_PATH, data="{", content_type="application/json")
    assert_bare_401(response)


# --------------------------------------------------------------------------- open endpoints


@pytest.mark.parametrize("path", ["/cds-services", "/healthz", "/openapi.yaml"])
def test_discovery_health_and_contract_need_no_jwt(client: FlaskClient, path: str) -> None:
    """Discovery, health and the OpenAPI contract answer without a token."""
    assert client.get(path).status_code == 200


def test_health_says_authentication_is_on(client: FlaskClient) -> None:
    """/healthz tells the operator that client authentication is enforced."""
    assert client.get("/healthz").get_json()["clientAuthentication"].startswith("on")


# --------------------------------------------------------------------------- CORS


def test_cors_preflight_needs_no_jwt(client: FlaskClient) -> None:
    """A browser preflight from an allowed origin is a 204 with CORS headers and no token."""
    response = client.options(
        SIGN_PATH,
        headers={
            "Origin": SANDBOX_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == SANDBOX_ORIGIN
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed
    assert "content-type" in allowed
    assert response.headers["Vary"] == "Origin"


def test_cors_preflight_from_another_origin_gets_no_grant(client: FlaskClient) -> None:
    """A preflight from an origin not configured gets no Access-Control-Allow-Origin."""
    response = client.options(
        SIGN_PATH,
        headers={
            "Origin": "https://evil.example.org",
            "Access-Control-Request-Method": "POST",
        },
    )
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_headers_on_answers_and_refusals(
    client: FlaskClient, keys: dict[str, Key], hook_body: dict[str, Any]
) -> None:
    """The sandbox can read both a 200 and a 401 (CORS headers on both)."""
    token = remember(token_for(keys, "sandbox-es384", PUBLIC_BASE + SIGN_PATH))
    accepted = post(client, SIGN_PATH, hook_body, token, Origin=SANDBOX_ORIGIN)
    refused = post(client, SIGN_PATH, hook_body, token, Origin=SANDBOX_ORIGIN)
    assert accepted.status_code == 200
    assert refused.status_code == 401
    for response in (accepted, refused):
        assert response.headers["Access-Control-Allow-Origin"] == SANDBOX_ORIGIN


# --------------------------------------------------------------------------- feedback


def _feedback_body() -> dict[str, Any]:
    return {
        "feedback": [
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "overrideReason": {"userComment": "test"},
                "outcomeTimestamp": "2026-11-01T12:00:00Z",
            }
        ]
    }


def test_feedback_needs_a_jwt(client: FlaskClient) -> None:
    """Feedback without a token is a bare 401."""
    assert_bare_401(client.post(FEEDBACK_PATH, json=_feedback_body()))


def test_feedback_refuses_a_token_meant_for_the_service(
    client: FlaskClient, keys: dict[str, Key]
) -> None:
    """A token whose aud is the service URL does not open the feedback URL (aud per endpoint)."""
    token = token_for(keys, "oracle-rs384", PUBLIC_BASE + SIGN_PATH)
    assert_bare_401(post(client, FEEDBACK_PATH, _feedback_body(), token))


def test_feedback_with_its_own_token_is_let_through(
    client: FlaskClient, keys: dict[str, Key]
) -> None:
    """With a token for the feedback URL the call reaches the handler (404: unknown card)."""
    token = remember(token_for(keys, "oracle-rs384", PUBLIC_BASE + FEEDBACK_PATH))
    response = post(client, FEEDBACK_PATH, _feedback_body(), token)
    assert response.status_code == 404
    assert "unknownCards" in response.get_json()["error"]


# ------------------------------------------------------------------------- Sandbox keys, local copy

# What today's CDS Hooks Sandbox sends: ES384, this kid, a jku header, and iss/aud/exp/iat/jti
# with no `sub` (CDS Hooks 2.0 dropped it).
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"


@pytest.fixture(scope="module")
def sandbox_key() -> Key:
    """A stand-in for the Sandbox's signing key (EC P-384, the Sandbox's kid)."""
    return Key(ec.generate_private_key(ec.SECP384R1()), SANDBOX_KID, "ES384")


def sandbox_token(key: Key, aud: str, jku: str = SANDBOX_JKU) -> str:
    """A token in the Sandbox's exact shape: header alg/kid/typ/jku, claims without sub."""
    now = int(time.time())
    claims = {
        "iss": SANDBOX_ISS,
        "aud": aud,
        "exp": now + 300,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    headers = {"kid": key.kid, "typ": "JWT", "jku": jku}
    return jwt.encode(claims, key.private, algorithm="ES384", headers=headers)


@pytest.fixture
def offline_app(tmp_path: Path, sandbox_key: Key) -> Iterator[Flask]:
    """The Sandbox trusted through a local copy of its key set that stands for its jku."""
    copy = tmp_path / "sandbox-jwks.json"
    copy.write_text(json.dumps({"keys": [sandbox_key.jwk()]}))
    setting = json.dumps({SANDBOX_ISS: {"jwks": f"file:{copy}", "jku": SANDBOX_JKU}})
    with responses.RequestsMock(assert_all_requests_are_fired=False):  # any fetch would fail
        application = make_app(
            tmp_path,
            CDS_JWT_ISSUERS=from_environment({"CDS_JWT_ISSUERS": setting})["CDS_JWT_ISSUERS"],
            CDS_PUBLIC_BASE_URL=PUBLIC_BASE,
            CDS_REDIS_URL=None,
        )
        yield application
        close_app(application)


def _offline_body(app: Flask) -> dict[str, Any]:
    templates = app.extensions["cds_service"].services["voclosporin-order-sign"].prefetch
    prefetch = prefetch_for(chart_resources(ln_initiation_clean(TODAY)), PATIENT_ID, templates)
    return hook_request(
        "order-sign", PATIENT_ID, [voclosporin_draft_order(PATIENT_ID, TODAY)], prefetch
    )


def test_sandbox_token_is_accepted_with_a_local_copy_of_its_keys(
    offline_app: Flask, sandbox_key: Key
) -> None:
    """The Sandbox's token (ES384, jku, no sub) verifies against a file: copy mapped to its jku."""
    token = sandbox_token(sandbox_key, PUBLIC_BASE + SIGN_PATH)
    assert "sub" not in jwt.decode(token, options={"verify_signature": False})

    response = post(offline_app.test_client(), SIGN_PATH, _offline_body(offline_app), token)

    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json()["cards"]


@pytest.mark.parametrize(
    "jku",
    ["https://evil.example/.well-known/jwks.json", SANDBOX_JKU.replace("https:", "http:")],
    ids=["other-host", "http"],
)
def test_sandbox_token_with_another_jku_is_refused(
    offline_app: Flask, sandbox_key: Key, jku: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A jku other than the one the local copy stands for is a bare 401, even if well signed."""
    token = sandbox_token(sandbox_key, PUBLIC_BASE + SIGN_PATH, jku=jku)

    with caplog.at_level(logging.WARNING, logger="cds_service.auth"):
        response = post(offline_app.test_client(), SIGN_PATH, _offline_body(offline_app), token)

    assert_bare_401(response, token)
    assert "is not the configured key location" in caplog.text


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(None, "unreadable", id="missing"),
        pytest.param("{not json", "not JSON", id="not-json"),
        pytest.param('{"keys": []}', "did not contain any keys", id="empty"),
    ],
)
@pytest.mark.parametrize("form", ["string", "object"])
def test_bad_key_file_stops_start_up(
    tmp_path: Path, content: str | None, reason: str, form: str
) -> None:
    """A missing or invalid file: key set stops start-up, naming the issuer and the path."""
    path = tmp_path / "sandbox-jwks.json"
    if content is not None:
        path.write_text(content)
    location: Any = f"file:{path}"
    if form == "object":
        location = {"jwks": location, "jku": SANDBOX_JKU}

    with pytest.raises(RuntimeError, match=reason) as caught:
        make_app(
            tmp_path,
            CDS_JWT_ISSUERS={SANDBOX_ISS: location},
            CDS_PUBLIC_BASE_URL=PUBLIC_BASE,
            CDS_REDIS_URL=None,
        )
    assert SANDBOX_ISS in str(caught.value)
    assert str(path) in str(caught.value)


# --------------------------------------------------------------------------- two workers


@pytest.fixture
def gunicorn(tmp_path: Path, oracle_jwks: Path) -> Iterator[Gunicorn]:
    """gunicorn -w 2 (sync) on 127.0.0.1 with the replay cache in Redis and file: keys."""
    port = free_port()
    database = f"sqlite:///{tmp_path / 'gunicorn.sqlite3'}"
    close_app(make_app(tmp_path, CDS_DATABASE_URL=database))  # migrate once, up front
    settings = {
        "CDS_JWT_ISSUERS": json.dumps({ORACLE_ISS: f"file:{oracle_jwks}"}),
        "CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "CDS_REDIS_URL": REDIS_URL,
        "CDS_DATABASE_URL": database,
        "CDS_AUDIT_HASH_KEY": "gunicorn-test",
    }
    with two_workers(tmp_path, port, settings) as server:
        yield server


def _send(base_url: str, token: str, body: str, probe: str) -> int:
    """POST on a fresh connection (no keep-alive), so either worker may take it."""
    with requests.Session() as session:
        response = session.post(
            f"{base_url}{SIGN_PATH}",
            data=body,
            timeout=20,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Connection": "close",
                "X-Probe": probe,
            },
        )
        return response.status_code


@pytest.mark.slow
def test_replay_to_the_other_worker_is_refused(gunicorn: Gunicorn, keys: dict[str, Key]) -> None:
    """One JWT sent many times to two gunicorn workers: one 200, the rest 401, on both workers."""
    templates = {}
    with requests.Session() as session:
        for service in session.get(f"{gunicorn.base_url}/cds-services", timeout=5).json()[
            "services"
        ]:
            if service["hook"] == "order-sign":  # the per-hook id is not listed; same templates
                templates = service["prefetch"]
    today = datetime.now(UTC).date()  # gunicorn runs on the real clock
    resources = chart_resources(ln_initiation_clean(today))
    body = json.dumps(
        hook_request(
            "order-sign",
            PATIENT_ID,
            [voclosporin_draft_order(PATIENT_ID, today)],
            prefetch_for(resources, PATIENT_ID, templates),
        )
    )
    token = remember(token_for(keys, "oracle-rs384", gunicorn.base_url + SIGN_PATH))

    outcomes: dict[str, tuple[int, int]] = {}
    statuses: list[int] = []
    with ThreadPoolExecutor(max_workers=6) as pool:
        for round_number in range(6):  # stop once a replay has reached the other worker
            probes = [f"r{round_number}-{n}" for n in range(12)]
            statuses += pool.map(lambda p: _send(gunicorn.base_url, token, body, p), probes)
            outcomes.update(gunicorn.wait_for_probes(probes))
            accepted_pids = {pid for pid, status in outcomes.values() if status == 200}
            refused_pids = {pid for pid, status in outcomes.values() if status == 401}
            if accepted_pids and refused_pids - accepted_pids:
                break

    assert statuses.count(200) == 1, statuses
    assert statuses.count(401) == len(statuses) - 1, statuses
    assert len({pid for pid, _ in outcomes.values()}) == 2, "both workers must have served"
    (accepted_pid,) = accepted_pids
    assert refused_pids - {accepted_pid}, "no replay reached the other worker"
