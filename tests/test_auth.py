"""Tests for cds_service.auth: CDS client JWT verification, key store and replay caches."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

from cds_service.auth import (
    AuthenticationError,
    AuthUnavailable,
    ClientAuthenticator,
    IssuerKeys,
    KeySetUnavailable,
    KeyStore,
    MemoryReplayCache,
    RedisReplayCache,
    ReplayCacheUnavailable,
    bearer_token,
    endpoint_audience,
    parse_issuers,
)
from cds_service.auth.config import JWKS_MIN_REFETCH_SECONDS

REDIS_URL = "redis://127.0.0.1:6379/0"
AUDIENCE = "https://cds.example.org/cds-services/voclosporin-safety"

# CDS Hooks Sandbox (cds-hooks/sandbox src/retrieve-data-helpers/jwt-generator.js): iss is the
# sandbox origin, header carries kid + jku, payload adds a `sub`; exp = iat + 300.
SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SANDBOX_KID = "d9cd3c4f-eb08-4304-b973-44f352fd2ca2"
# Epic ("CDS Hooks Tutorial"): RS384, jku under /api/epic/2019/Security/Open/PublicKeys/,
# extra `sub` (client id) and `nbf` about five minutes before iat.
EPIC_ISS = "https://fhir.epic.example.org/interconnect-fhir-oauth"
EPIC_JKU = (
    "https://fhir.epic.example.org/interconnect-fhir-oauth"
    "/api/epic/2019/Security/Open/PublicKeys/530005/CDSHooks"
)
EPIC_KID = "epic-cds-2024"
# Oracle Health: kid but no jku, so the JWK Set is exchanged out of band (file: location).
ORACLE_ISS = "https://authorization.oracle-health.example/tenants/ec2458f2"
ORACLE_KID = "oracle-cds-1"
ORACLE_TENANT = "ec2458f2-1e24-41c8-b71b-0e701af7583d"


# --------------------------------------------------------------------------- key material


@dataclass(frozen=True)
class SigningKey:
    """A private key plus the public JWK a client would publish for it."""

    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    kid: str
    alg: str

    def jwk(self, *, kid: str | None = None, **extra: Any) -> dict[str, Any]:
        """Return the public JWK, as a client's JWK Set would list it."""
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": kid or self.kid, "use": "sig", **extra}

    def public_pem(self) -> bytes:
        """Return the SubjectPublicKeyInfo PEM (what a confused verifier might use as HMAC key)."""
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="session")
def keys() -> dict[str, SigningKey]:
    """Generate each client's key pair once per run (RSA generation is the slow part)."""
    return {
        "sandbox_es256": SigningKey(ec.generate_private_key(ec.SECP256R1()), SANDBOX_KID, "ES256"),
        "sandbox_es384": SigningKey(ec.generate_private_key(ec.SECP384R1()), "sb-384", "ES384"),
        "epic": SigningKey(rsa.generate_private_key(65537, 2048), EPIC_KID, "RS384"),
        "epic_next": SigningKey(rsa.generate_private_key(65537, 2048), "epic-cds-2025", "RS384"),
        "oracle_rsa": SigningKey(rsa.generate_private_key(65537, 2048), ORACLE_KID, "RS384"),
        "oracle_ec": SigningKey(ec.generate_private_key(ec.SECP384R1()), ORACLE_KID, "ES384"),
        "attacker": SigningKey(rsa.generate_private_key(65537, 2048), EPIC_KID, "RS384"),
    }


def make_token(
    key: SigningKey,
    iss: str,
    *,
    aud: str | list[str] = AUDIENCE,
    jku: str | None = None,
    kid: str | None = None,
    alg: str | None = None,
    lifetime: int = 300,
    iat_offset: int = 0,
    extra_claims: dict[str, Any] | None = None,
    drop_claims: tuple[str, ...] = (),
    extra_headers: dict[str, Any] | None = None,
) -> str:
    """Sign a CDS client JWT the way an EHR does; knobs let each test break one thing."""
    now = int(time.time()) + iat_offset
    claims: dict[str, Any] = {
        "iss": iss,
        "aud": aud,
        "iat": now,
        "exp": now + lifetime,
        "jti": str(uuid.uuid4()),
        **(extra_claims or {}),
    }
    for name in drop_claims:
        claims.pop(name, None)
    headers: dict[str, Any] = {"kid": kid or key.kid, "typ": "JWT", **(extra_headers or {})}
    if jku is not None:
        headers["jku"] = jku
    return jwt.encode(claims, key.private, algorithm=alg or key.alg, headers=headers)


def b64url(data: bytes) -> str:
    """Encode like JWS compact serialisation (no padding)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made_token(
    header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """Build a JWS by hand, for tokens PyJWT refuses to create (alg none, HS256 with a PEM)."""
    signing_input = (
        f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}".encode()
    )
    return f"{signing_input.decode()}.{b64url(sign(signing_input))}"


def fresh_claims(iss: str) -> dict[str, Any]:
    """Return otherwise-valid claims for hand-made tokens."""
    now = int(time.time())
    return {"iss": iss, "aud": AUDIENCE, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    """Serve JWK Sets without network; unregistered URLs raise ConnectionError."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def oracle_jwks_file(tmp_path: Path, keys: dict[str, SigningKey]) -> Path:
    """Write the Oracle Health JWK Set that was exchanged out of band (RSA and EC keys)."""
    path = tmp_path / "oracle-jwks.json"
    path.write_text(
        json.dumps(
            {"keys": [keys["oracle_rsa"].jwk(alg="RS384"), keys["oracle_ec"].jwk(alg="ES384")]}
        )
    )
    return path


@pytest.fixture
def issuers(oracle_jwks_file: Path) -> dict[str, str]:
    """Trust the sandbox, Epic (jku URLs) and Oracle Health (file: keys)."""
    return {
        SANDBOX_ISS: SANDBOX_JKU,
        EPIC_ISS: EPIC_JKU,
        ORACLE_ISS: f"file:{oracle_jwks_file}",
    }


@pytest.fixture
def served(mocked: responses.RequestsMock, keys: dict[str, SigningKey]) -> dict[str, Any]:
    """Publish the sandbox and Epic JWK Sets at their jku URLs; return the mock responses."""
    return {
        "sandbox": mocked.add(
            responses.GET,
            SANDBOX_JKU,
            json={"keys": [keys["sandbox_es256"].jwk(), keys["sandbox_es384"].jwk()]},
        ),
        "epic": mocked.add(responses.GET, EPIC_JKU, json={"keys": [keys["epic"].jwk()]}),
    }


@pytest.fixture
def make_authenticator(
    issuers: dict[str, str],
) -> Iterator[Callable[..., ClientAuthenticator]]:
    """Build authenticators (memory replay cache by default) and close their sessions."""
    created: list[ClientAuthenticator] = []

    def build(**kwargs: Any) -> ClientAuthenticator:
        kwargs.setdefault("issuers", issuers)
        kwargs.setdefault("replay_cache", MemoryReplayCache())
        authenticator = ClientAuthenticator(**kwargs)
        created.append(authenticator)
        return authenticator

    yield build
    for authenticator in created:
        authenticator.close()


@pytest.fixture
def authenticator(
    served: dict[str, Any], make_authenticator: Callable[..., ClientAuthenticator]
) -> ClientAuthenticator:
    """An authenticator trusting the three client shapes, with JWK Sets served."""
    return make_authenticator()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """Give each test its own key prefix in the shared Redis and delete its keys afterwards."""
    prefix = f"test:cds:jti:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        leftovers = list(client.scan_iter(match=prefix + "*"))
        if leftovers:
            client.delete(*leftovers)
    finally:
        client.close()


@pytest.fixture
def redis_caches(redis_prefix: str) -> Iterator[Callable[[], RedisReplayCache]]:
    """Open RedisReplayCache instances on the test prefix, closing them afterwards."""
    opened: list[RedisReplayCache] = []

    def open_cache() -> RedisReplayCache:
        cache = RedisReplayCache(REDIS_URL, prefix=redis_prefix)
        opened.append(cache)
        return cache

    yield open_cache
    for cache in opened:
        cache.close()


# --------------------------------------------------------------------------- real client shapes


@pytest.mark.parametrize(
    "key_name", ["sandbox_es256", "sandbox_es384"], ids=["ES256-as-sandbox-code", "ES384"]
)
def test_sandbox_shaped_token_passes(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey], key_name: str
) -> None:
    """A CDS Hooks Sandbox token (EC key, kid + jku header, extra sub) is accepted."""
    token = make_token(
        keys[key_name], SANDBOX_ISS, jku=SANDBOX_JKU, extra_claims={"sub": "48163c5e-88b5"}
    )

    claims = authenticator.verify(token, AUDIENCE)

    assert claims["iss"] == SANDBOX_ISS
    assert claims["sub"] == "48163c5e-88b5"


def test_epic_shaped_token_passes(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey], served: dict[str, Any]
) -> None:
    """An Epic token (RS384, jku, extra sub and nbf five minutes before iat) is accepted."""
    now = int(time.time())
    token = make_token(
        keys["epic"],
        EPIC_ISS,
        jku=EPIC_JKU,
        extra_claims={"sub": "d3d2c1b8-epic-client-id", "nbf": now - 300},
    )

    claims = authenticator.verify(token, AUDIENCE)

    assert claims["sub"] == "d3d2c1b8-epic-client-id"
    assert served["epic"].call_count == 1


@pytest.mark.parametrize("key_name", ["oracle_rsa", "oracle_ec"], ids=["RS384", "ES384"])
def test_oracle_shaped_token_passes_with_file_keys(
    authenticator: ClientAuthenticator,
    keys: dict[str, SigningKey],
    mocked: responses.RequestsMock,
    key_name: str,
) -> None:
    """An Oracle Health token (kid, no jku, tenant) verifies against out-of-band file: keys."""
    token = make_token(keys[key_name], ORACLE_ISS, extra_claims={"tenant": ORACLE_TENANT})

    claims = authenticator.verify(token, AUDIENCE)

    assert claims["tenant"] == ORACLE_TENANT
    assert len(mocked.calls) == 0


def test_audience_as_array_passes(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey]
) -> None:
    """An aud array that contains the endpoint URL is accepted (RFC 7519, spec example)."""
    token = make_token(keys["epic"], EPIC_ISS, aud=[AUDIENCE], jku=EPIC_JKU)

    assert authenticator.verify(token, AUDIENCE)["aud"] == [AUDIENCE]


def test_keys_are_cached_between_calls(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey], served: dict[str, Any]
) -> None:
    """The JWK Set is fetched once, not on every hook call."""
    for _ in range(3):
        authenticator.verify(make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU), AUDIENCE)

    assert served["epic"].call_count == 1


# --------------------------------------------------------------------------- refusals


def test_forged_signature_refused(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey]
) -> None:
    """A token with Epic's iss, kid and jku but signed by another key is refused."""
    token = make_token(keys["attacker"], EPIC_ISS, jku=EPIC_JKU)

    with pytest.raises(AuthenticationError, match="InvalidSignatureError"):
        authenticator.verify(token, AUDIENCE)


def test_tampered_payload_refused(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey]
) -> None:
    """Swapping in another payload under a genuine signature breaks the signature."""
    header, _, signature = make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU).split(".")
    other_audience = "https://cds.example.org/cds-services/other"
    payload = make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU, aud=other_audience).split(".")[1]

    with pytest.raises(AuthenticationError, match="InvalidSignatureError"):
        authenticator.verify(f"{header}.{payload}.{signature}", other_audience)


@pytest.mark.parametrize(
    ("iat_offset", "lifetime", "accepted"),
    [
        pytest.param(-400, 300, False, id="expired-100s-ago"),
        pytest.param(-310, 300, True, id="expired-10s-ago-within-leeway"),
        pytest.param(0, 300, True, id="valid"),
    ],
)
def test_expiry_with_leeway(
    authenticator: ClientAuthenticator,
    keys: dict[str, SigningKey],
    iat_offset: int,
    lifetime: int,
    accepted: bool,
) -> None:
    """exp is enforced with 30 s leeway for clock skew between EHR and service."""
    token = make_token(
        keys["epic"], EPIC_ISS, jku=EPIC_JKU, iat_offset=iat_offset, lifetime=lifetime
    )

    if accepted:
        authenticator.verify(token, AUDIENCE)
    else:
        with pytest.raises(AuthenticationError, match="ExpiredSignatureError"):
            authenticator.verify(token, AUDIENCE)


def test_not_yet_valid_nbf_refused(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey]
) -> None:
    """A token whose nbf is five minutes ahead is refused."""
    token = make_token(
        keys["epic"], EPIC_ISS, jku=EPIC_JKU, extra_claims={"nbf": int(time.time()) + 300}
    )

    with pytest.raises(AuthenticationError, match="ImmatureSignatureError"):
        authenticator.verify(token, AUDIENCE)


def test_iat_in_future_refused(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey]
) -> None:
    """A token issued five minutes in the future is refused (it would outlive its jti memory)."""
    token = make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU, iat_offset=300)

    with pytest.raises(AuthenticationError, match="ImmatureSignatureError"):
        authenticator.verify(token, AUDIENCE)


def test_lifetime_over_an_hour_refused(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey]
) -> None:
    """A token valid for two hours is refused: replay memory is kept at most an hour."""
    token = make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU, lifetime=7200)

    with pytest.raises(AuthenticationError, match="lifetime"):
        authenticator.verify(token, AUDIENCE)


@pytest.mark.parametrize(
    "token_audience",
    [
        "https://cds.example.org/cds-services/another-service",
        "https://cds.example.org/cds-services",
        "https://evil.example.org/cds-services/voclosporin-safety",
        "http://cds.example.org/cds-services/voclosporin-safety",
        AUDIENCE + "/feedback",
    ],
    ids=["other-service", "discovery", "other-host", "http", "feedback"],
)
def test_wrong_audience_refused(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey], token_audience: str
) -> None:
    """A token minted for another endpoint cannot be used on this one."""
    token = make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU, aud=token_audience)

    with pytest.raises(AuthenticationError, match="InvalidAudienceError"):
        authenticator.verify(token, AUDIENCE)


def test_wrong_issuer_refused_before_any_fetch(
    authenticator: ClientAuthenticator,
    keys: dict[str, SigningKey],
    mocked: responses.RequestsMock,
) -> None:
    """An iss outside the allowlist is refused without fetching anything (even its jku)."""
    token = make_token(
        keys["attacker"], "https://evil.example", jku="https://evil.example/jwks.json"
    )

    with pytest.raises(AuthenticationError, match="issuer not trusted"):
        authenticator.verify(token, AUDIENCE)
    assert len(mocked.calls) == 0


def test_replayed_jti_refused(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey]
) -> None:
    """The same token presented twice is refused the second time."""
    token = make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU)
    authenticator.verify(token, AUDIENCE)

    with pytest.raises(AuthenticationError, match="jti replayed"):
        authenticator.verify(token, AUDIENCE)


def test_same_jti_from_two_issuers_is_not_a_replay(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey]
) -> None:
    """jti uniqueness is per issuer, so two EHRs cannot block each other."""
    shared = {"jti": "not-so-random"}
    authenticator.verify(
        make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU, extra_claims=shared), AUDIENCE
    )

    authenticator.verify(make_token(keys["oracle_rsa"], ORACLE_ISS, extra_claims=shared), AUDIENCE)


@pytest.mark.parametrize("claim", ["jti", "exp", "iat", "aud", "iss"])
def test_missing_required_claim_refused(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey], claim: str
) -> None:
    """Each claim the spec makes REQUIRED must be present."""
    token = make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU, drop_claims=(claim,))

    with pytest.raises(AuthenticationError):
        authenticator.verify(token, AUDIENCE)


@pytest.mark.parametrize("jti", ["", 42, "x" * 257], ids=["empty", "number", "too-long"])
def test_unusable_jti_refused(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey], jti: Any
) -> None:
    """A jti that is empty, not a string, or absurdly long is refused."""
    token = make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU, extra_claims={"jti": jti})

    with pytest.raises(AuthenticationError):
        authenticator.verify(token, AUDIENCE)


def test_alg_none_refused(authenticator: ClientAuthenticator) -> None:
    """An unsigned token (alg none) is refused, spec #jwt-signing-algorithm."""
    token = hand_made_token(
        {"alg": "none", "typ": "JWT", "kid": EPIC_KID, "jku": EPIC_JKU},
        fresh_claims(EPIC_ISS),
        lambda _: b"",
    )

    with pytest.raises(AuthenticationError, match="alg 'none' not allowed"):
        authenticator.verify(token, AUDIENCE)


def test_hs256_signed_with_public_key_refused(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey]
) -> None:
    """HS256 keyed with the client's public PEM (key-confusion attack) is refused."""
    public_pem = keys["epic"].public_pem()
    token = hand_made_token(
        {"alg": "HS256", "typ": "JWT", "kid": EPIC_KID, "jku": EPIC_JKU},
        fresh_claims(EPIC_ISS),
        lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
    )

    with pytest.raises(AuthenticationError, match="alg 'HS256' not allowed"):
        authenticator.verify(token, AUDIENCE)


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        pytest.param({"kid": None}, "kid missing", id="no-kid"),
        pytest.param({"kid": ""}, "kid missing", id="empty-kid"),
        pytest.param({"typ": "at+jwt"}, "typ", id="typ-not-jwt"),
        pytest.param({"crit": ["exp"]}, "crit", id="crit"),
        pytest.param({"jku": 7}, "jku", id="jku-not-string"),
    ],
)
def test_bad_header_refused(
    authenticator: ClientAuthenticator,
    keys: dict[str, SigningKey],
    headers: dict[str, Any],
    match: str,
) -> None:
    """Header fields the spec requires or we cannot honour make the token unacceptable."""
    header = {"alg": "RS384", "typ": "JWT", "kid": EPIC_KID, **headers}
    header = {name: value for name, value in header.items() if value is not None}
    signing_key = keys["epic"].private
    assert isinstance(signing_key, rsa.RSAPrivateKey)
    token = hand_made_token(
        header,
        fresh_claims(EPIC_ISS),
        lambda data: RSAAlgorithm(RSAAlgorithm.SHA384).sign(data, signing_key),
    )

    with pytest.raises(AuthenticationError, match=match):
        authenticator.verify(token, AUDIENCE)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 20_000])
def test_garbage_token_refused(authenticator: ClientAuthenticator, garbage: str) -> None:
    """Anything that is not a JWS is a plain authentication failure, never a crash."""
    with pytest.raises(AuthenticationError):
        authenticator.verify(garbage, AUDIENCE)


def test_unknown_kid_refused_after_one_refetch(
    make_authenticator: Callable[..., ClientAuthenticator],
    served: dict[str, Any],
    keys: dict[str, SigningKey],
) -> None:
    """An unknown kid triggers exactly one JWK Set reload, then the token is refused."""
    authenticator = make_authenticator(key_refetch_interval_seconds=0)
    authenticator.verify(make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU), AUDIENCE)
    token = make_token(keys["attacker"], EPIC_ISS, jku=EPIC_JKU, kid="no-such-kid")

    with pytest.raises(AuthenticationError, match="unknown kid"):
        authenticator.verify(token, AUDIENCE)
    assert served["epic"].call_count == 2


def test_forged_kids_cannot_hammer_the_ehr(
    mocked: responses.RequestsMock, keys: dict[str, SigningKey]
) -> None:
    """Reloads for unknown kids are rate-limited to one per issuer per interval."""
    now = [1000.0]
    served = mocked.add(responses.GET, EPIC_JKU, json={"keys": [keys["epic"].jwk()]})
    store = KeyStore({EPIC_ISS: EPIC_JKU}, refetch_interval_seconds=30, clock=lambda: now[0])
    try:
        for attempt in range(20):
            with pytest.raises(AuthenticationError, match="unknown kid"):
                store.get_key(EPIC_ISS, f"forged-{attempt}", "RS384")
        assert served.call_count == 1

        now[0] += 31
        with pytest.raises(AuthenticationError, match="unknown kid"):
            store.get_key(EPIC_ISS, "forged-late", "RS384")
        with pytest.raises(AuthenticationError, match="unknown kid"):
            store.get_key(EPIC_ISS, "forged-later", "RS384")
        assert served.call_count == 2
    finally:
        store.close()


@pytest.mark.parametrize(
    "jku",
    [
        "https://evil.example/jwks.json",
        EPIC_JKU + "?x=1",
        EPIC_JKU.replace("https://", "http://"),
        SANDBOX_JKU,
    ],
    ids=["other-host", "extra-query", "http", "other-issuers-jku"],
)
def test_jku_pointing_elsewhere_refused(
    authenticator: ClientAuthenticator,
    keys: dict[str, SigningKey],
    mocked: responses.RequestsMock,
    jku: str,
) -> None:
    """A jku that is not the configured location for the iss is refused and never fetched."""
    token = make_token(keys["attacker"], EPIC_ISS, jku=jku)

    with pytest.raises(AuthenticationError, match="jku"):
        authenticator.verify(token, AUDIENCE)
    assert len(mocked.calls) == 0


def test_jku_for_out_of_band_issuer_refused(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey]
) -> None:
    """An issuer configured with file: keys cannot redirect us with a jku header."""
    token = make_token(keys["oracle_rsa"], ORACLE_ISS, jku="https://evil.example/jwks.json")

    with pytest.raises(AuthenticationError, match="jku"):
        authenticator.verify(token, AUDIENCE)


def test_key_type_must_match_alg(
    make_authenticator: Callable[..., ClientAuthenticator],
    mocked: responses.RequestsMock,
    keys: dict[str, SigningKey],
) -> None:
    """A token whose alg does not fit the JWK (type, curve or declared alg) is refused."""
    mocked.add(
        responses.GET,
        EPIC_JKU,
        json={
            "keys": [
                keys["epic"].jwk(kid="rsa-key"),
                keys["sandbox_es256"].jwk(kid="p256-key"),
                keys["epic_next"].jwk(kid="declared-rs256", alg="RS256"),
            ]
        },
    )
    authenticator = make_authenticator()
    wrong = [
        make_token(keys["sandbox_es384"], EPIC_ISS, jku=EPIC_JKU, kid="rsa-key"),
        make_token(keys["sandbox_es384"], EPIC_ISS, jku=EPIC_JKU, kid="p256-key"),
        make_token(keys["epic_next"], EPIC_ISS, jku=EPIC_JKU, kid="declared-rs256"),
    ]

    for token in wrong:
        with pytest.raises(AuthenticationError, match=r"cannot verify|expected curve"):
            authenticator.verify(token, AUDIENCE)


def test_short_rsa_key_refused(
    make_authenticator: Callable[..., ClientAuthenticator], mocked: responses.RequestsMock
) -> None:
    """RSA keys under 2048 bits are refused outright rather than warned about."""
    weak = SigningKey(rsa.generate_private_key(65537, 1024), EPIC_KID, "RS384")
    mocked.add(responses.GET, EPIC_JKU, json={"keys": [weak.jwk()]})
    authenticator = make_authenticator()
    with pytest.warns(InsecureKeyLengthWarning):  # PyJWT only warns when *signing* with it
        token = make_token(weak, EPIC_ISS, jku=EPIC_JKU)

    with pytest.raises(AuthenticationError, match="InvalidKeyError"):
        authenticator.verify(token, AUDIENCE)


def test_published_private_key_ignored(
    make_authenticator: Callable[..., ClientAuthenticator],
    mocked: responses.RequestsMock,
    keys: dict[str, SigningKey],
) -> None:
    """A JWK Set that leaks a private key ('d') does not get that key trusted."""
    private = keys["epic"].private
    assert isinstance(private, rsa.RSAPrivateKey)
    leaked = RSAAlgorithm.to_jwk(private, as_dict=True)
    mocked.add(
        responses.GET,
        EPIC_JKU,
        json={"keys": [{**leaked, "kid": EPIC_KID}, keys["epic_next"].jwk()]},
    )
    authenticator = make_authenticator()

    with pytest.raises(AuthenticationError, match="unknown kid"):
        authenticator.verify(make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU), AUDIENCE)


# --------------------------------------------------------------------------- key rotation


def test_key_rotation_new_kid_verifies_after_refetch(
    make_authenticator: Callable[..., ClientAuthenticator],
    mocked: responses.RequestsMock,
    keys: dict[str, SigningKey],
) -> None:
    """After the EHR rotates its JWK Set, a token with the new kid verifies after one reload."""
    served = mocked.add(responses.GET, EPIC_JKU, json={"keys": [keys["epic"].jwk()]})
    authenticator = make_authenticator(key_refetch_interval_seconds=0)
    authenticator.verify(make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU), AUDIENCE)

    served.body = json.dumps({"keys": [keys["epic_next"].jwk()]}).encode()
    authenticator.verify(make_token(keys["epic_next"], EPIC_ISS, jku=EPIC_JKU), AUDIENCE)

    assert served.call_count == 2
    with pytest.raises(AuthenticationError, match="unknown kid"):
        authenticator.verify(make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU), AUDIENCE)


def test_file_keys_rotate_when_file_is_replaced(
    make_authenticator: Callable[..., ClientAuthenticator],
    oracle_jwks_file: Path,
    keys: dict[str, SigningKey],
) -> None:
    """An air-gapped site rotates by replacing the file; the new kid is picked up."""
    authenticator = make_authenticator(key_refetch_interval_seconds=0)
    authenticator.verify(make_token(keys["oracle_rsa"], ORACLE_ISS), AUDIENCE)
    oracle_jwks_file.write_text(json.dumps({"keys": [keys["epic_next"].jwk(kid="oracle-2")]}))

    authenticator.verify(make_token(keys["epic_next"], ORACLE_ISS, kid="oracle-2"), AUDIENCE)


def test_stale_keys_refreshed_after_max_age(
    mocked: responses.RequestsMock, keys: dict[str, SigningKey]
) -> None:
    """Keys older than max age are reloaded, so a key removed by the EHR stops verifying."""
    now = [0.0]
    served = mocked.add(responses.GET, EPIC_JKU, json={"keys": [keys["epic"].jwk()]})
    store = KeyStore({EPIC_ISS: EPIC_JKU}, max_age_seconds=3600, clock=lambda: now[0])
    try:
        store.get_key(EPIC_ISS, EPIC_KID, "RS384")
        served.body = json.dumps({"keys": [keys["epic_next"].jwk()]}).encode()
        now[0] += 3601

        with pytest.raises(AuthenticationError, match="unknown kid"):
            store.get_key(EPIC_ISS, EPIC_KID, "RS384")
        assert served.call_count == 2
    finally:
        store.close()


def test_failed_refresh_keeps_cached_keys(
    mocked: responses.RequestsMock, keys: dict[str, SigningKey]
) -> None:
    """If the EHR key endpoint is down at refresh time, the cached keys keep working."""
    now = [0.0]
    served = mocked.add(responses.GET, EPIC_JKU, json={"keys": [keys["epic"].jwk()]})
    store = KeyStore({EPIC_ISS: EPIC_JKU}, max_age_seconds=3600, clock=lambda: now[0])
    try:
        store.get_key(EPIC_ISS, EPIC_KID, "RS384")
        served.status = 503
        now[0] += 3601

        assert store.get_key(EPIC_ISS, EPIC_KID, "RS384").key_id == EPIC_KID
        assert served.call_count == 2
    finally:
        store.close()


# --------------------------------------------------------------------------- key source failures


@pytest.mark.parametrize(
    "response_kwargs",
    [
        pytest.param({"status": 500}, id="http-500"),
        pytest.param({"body": "<html>"}, id="not-json"),
        pytest.param({"json": {"no": "keys"}}, id="no-keys-array"),
        pytest.param({"json": {"keys": []}}, id="empty-set"),
        pytest.param({"body": "x" * 1_100_000}, id="too-large"),
        pytest.param({"body": requests.ConnectionError("refused")}, id="unreachable"),
    ],
)
def test_unusable_key_source_is_unavailable(
    make_authenticator: Callable[..., ClientAuthenticator],
    mocked: responses.RequestsMock,
    keys: dict[str, SigningKey],
    response_kwargs: dict[str, Any],
) -> None:
    """A JWK Set that cannot be loaded is a 503 (KeySetUnavailable), never a pass."""
    mocked.add(responses.GET, EPIC_JKU, **response_kwargs)
    authenticator = make_authenticator()

    with pytest.raises(KeySetUnavailable) as caught:
        authenticator.verify(make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU), AUDIENCE)
    assert caught.value.status == 503


def test_missing_key_file_is_unavailable(
    make_authenticator: Callable[..., ClientAuthenticator], keys: dict[str, SigningKey]
) -> None:
    """A file: key location that does not exist is a 503 with the path in the reason."""
    authenticator = make_authenticator(issuers={ORACLE_ISS: "file:/nonexistent/jwks.json"})

    with pytest.raises(KeySetUnavailable, match=r"/nonexistent/jwks\.json"):
        authenticator.verify(make_token(keys["oracle_rsa"], ORACLE_ISS), AUDIENCE)


@pytest.fixture
def sandbox_copy(tmp_path: Path, keys: dict[str, SigningKey]) -> dict[str, Any]:
    """The Sandbox's key set kept as a local file standing for its https jku (no internet)."""
    path = tmp_path / "sandbox-jwks.json"
    path.write_text(json.dumps({"keys": [keys["sandbox_es384"].jwk()]}))
    return {SANDBOX_ISS: {"jwks": f"file:{path}", "jku": SANDBOX_JKU}}


def test_file_copy_verifies_a_token_naming_its_jku(
    make_authenticator: Callable[..., ClientAuthenticator],
    mocked: responses.RequestsMock,
    keys: dict[str, SigningKey],
    sandbox_copy: dict[str, Any],
) -> None:
    """A token whose jku is the https location a file: copy stands for verifies; nothing fetched."""
    authenticator = make_authenticator(issuers=sandbox_copy)
    token = make_token(keys["sandbox_es384"], SANDBOX_ISS, jku=SANDBOX_JKU)

    assert authenticator.verify(token, AUDIENCE)["iss"] == SANDBOX_ISS
    assert authenticator.verify(make_token(keys["sandbox_es384"], SANDBOX_ISS), AUDIENCE)
    assert len(mocked.calls) == 0


@pytest.mark.parametrize(
    "jku",
    [
        "https://evil.example/jwks.json",
        SANDBOX_JKU + "?x=1",
        "file:/etc/cds/sandbox.json",
    ],
    ids=["other-host", "extra-query", "the-file-itself"],
)
def test_file_copy_refuses_any_other_jku(
    make_authenticator: Callable[..., ClientAuthenticator],
    mocked: responses.RequestsMock,
    keys: dict[str, SigningKey],
    sandbox_copy: dict[str, Any],
    jku: str,
) -> None:
    """With a file: copy standing for a jku, any other jku is refused and never fetched."""
    authenticator = make_authenticator(issuers=sandbox_copy)

    with pytest.raises(AuthenticationError, match="jku"):
        authenticator.verify(make_token(keys["sandbox_es384"], SANDBOX_ISS, jku=jku), AUDIENCE)
    assert len(mocked.calls) == 0


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param(None, "unreadable", id="missing"),
        pytest.param("{not json", "not JSON", id="not-json"),
        pytest.param('{"keys": "none"}', "no 'keys' array", id="no-keys-array"),
        pytest.param('{"keys": []}', "did not contain any keys", id="empty"),
        pytest.param("no-kid", "no usable signing key", id="no-kid"),
    ],
)
def test_check_key_files_names_issuer_and_path(
    tmp_path: Path, keys: dict[str, SigningKey], content: str | None, match: str
) -> None:
    """A missing or invalid file: key set is a ValueError naming the issuer and the path."""
    path = tmp_path / "jwks.json"
    if content == "no-kid":  # a real key, but a token could never name it
        jwk = {k: v for k, v in keys["oracle_ec"].jwk().items() if k != "kid"}
        content = json.dumps({"keys": [jwk]})
    if content is not None:
        path.write_text(content)
    store = KeyStore({ORACLE_ISS: {"jwks": f"file:{path}", "jku": "https://o.example/jwks"}})
    try:
        with pytest.raises(ValueError, match=match) as caught:
            store.check_key_files()
    finally:
        store.close()
    assert ORACLE_ISS in str(caught.value)
    assert str(path) in str(caught.value)


def test_check_key_files_loads_files_and_leaves_urls(
    mocked: responses.RequestsMock, oracle_jwks_file: Path, keys: dict[str, SigningKey]
) -> None:
    """Start-up reads file: key sets (so the first call needs no read) and fetches no URL."""
    store = KeyStore({ORACLE_ISS: f"file:{oracle_jwks_file}", EPIC_ISS: EPIC_JKU})
    try:
        store.check_key_files()
        oracle_jwks_file.unlink()  # already loaded: the first call does not read it again
        assert store.get_key(ORACLE_ISS, keys["oracle_rsa"].kid, "RS384")
    finally:
        store.close()
    assert len(mocked.calls) == 0


def test_failed_first_load_is_rate_limited(
    mocked: responses.RequestsMock, keys: dict[str, SigningKey]
) -> None:
    """While the key endpoint is down, we try it at most once per interval."""
    now = [0.0]
    served = mocked.add(responses.GET, EPIC_JKU, status=502)
    store = KeyStore({EPIC_ISS: EPIC_JKU}, refetch_interval_seconds=30, clock=lambda: now[0])
    try:
        for _ in range(5):
            with pytest.raises(KeySetUnavailable):
                store.get_key(EPIC_ISS, EPIC_KID, "RS384")
        assert served.call_count == 1
    finally:
        store.close()


# --------------------------------------------------------------------------- replay caches


def test_memory_cache_forgets_after_ttl() -> None:
    """A jti can be claimed again once its TTL has passed (the token has expired by then)."""
    now = [0.0]
    cache = MemoryReplayCache(clock=lambda: now[0])

    assert cache.claim("j1", EPIC_ISS, 60) is True
    assert cache.claim("j1", EPIC_ISS, 60) is False
    now[0] += 61
    assert cache.claim("j1", EPIC_ISS, 60) is True
    assert len(cache) == 1


def test_memory_cache_is_thread_safe() -> None:
    """Of many threads racing on one jti, exactly one wins."""
    cache = MemoryReplayCache()
    results: list[bool] = []
    barrier = threading.Barrier(16)

    def race() -> None:
        barrier.wait()
        results.append(cache.claim("same-jti", EPIC_ISS, 60))

    threads = [threading.Thread(target=race) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False] * 15 + [True]


def test_redis_claim_is_atomic(redis_caches: Callable[[], RedisReplayCache]) -> None:
    """Of many threads racing on one jti in Redis (SET NX), exactly one wins."""
    cache = redis_caches()
    results: list[bool] = []
    barrier = threading.Barrier(16)

    def race() -> None:
        barrier.wait()
        results.append(cache.claim("same-jti", EPIC_ISS, 60))

    threads = [threading.Thread(target=race) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False] * 15 + [True]


def test_redis_entry_lives_for_remaining_lifetime(
    make_authenticator: Callable[..., ClientAuthenticator],
    served: dict[str, Any],
    redis_caches: Callable[[], RedisReplayCache],
    redis_prefix: str,
    keys: dict[str, SigningKey],
) -> None:
    """The jti is kept for exp - now + leeway seconds, then Redis forgets it."""
    authenticator = make_authenticator(replay_cache=redis_caches(), leeway_seconds=30)
    authenticator.verify(make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU, lifetime=300), AUDIENCE)

    client = redis.Redis.from_url(REDIS_URL)
    try:
        (key,) = list(client.scan_iter(match=redis_prefix + "*"))
        assert 320 <= client.ttl(key) <= 331
    finally:
        client.close()


def test_replay_refused_across_two_workers(
    make_authenticator: Callable[..., ClientAuthenticator],
    served: dict[str, Any],
    redis_caches: Callable[[], RedisReplayCache],
    keys: dict[str, SigningKey],
) -> None:
    """Two authenticators, each with its own Redis connection, share replay memory."""
    worker_a = make_authenticator(replay_cache=redis_caches())
    worker_b = make_authenticator(replay_cache=redis_caches())
    token = make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU)

    worker_a.verify(token, AUDIENCE)

    with pytest.raises(AuthenticationError, match="jti replayed"):
        worker_b.verify(token, AUDIENCE)


def verify_in_fresh_process(
    issuers: dict[str, str], redis_prefix: str, token: str, audience: str
) -> str:
    """Verify once in a spawned interpreter, as another gunicorn worker would; report outcome."""
    cache = RedisReplayCache(REDIS_URL, prefix=redis_prefix)
    authenticator = ClientAuthenticator(issuers, cache)
    try:
        authenticator.verify(token, audience)
        return "accepted"
    except AuthenticationError as exc:
        return f"refused: {exc.reason}"
    finally:
        authenticator.close()
        cache.close()


def test_replay_refused_across_processes(
    make_authenticator: Callable[..., ClientAuthenticator],
    redis_caches: Callable[[], RedisReplayCache],
    redis_prefix: str,
    issuers: dict[str, str],
    keys: dict[str, SigningKey],
) -> None:
    """A token used in one OS process is refused in another, and vice versa (shared Redis)."""
    here = make_authenticator(replay_cache=redis_caches())
    first_here = make_token(keys["oracle_ec"], ORACLE_ISS)
    first_there = make_token(keys["oracle_rsa"], ORACLE_ISS)
    here.verify(first_here, AUDIENCE)

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        replay_there = pool.submit(
            verify_in_fresh_process, issuers, redis_prefix, first_here, AUDIENCE
        ).result(timeout=60)
        fresh_there = pool.submit(
            verify_in_fresh_process, issuers, redis_prefix, first_there, AUDIENCE
        ).result(timeout=60)

    assert replay_there == "refused: jti replayed"
    assert fresh_there == "accepted"
    with pytest.raises(AuthenticationError, match="jti replayed"):
        here.verify(first_there, AUDIENCE)


def test_redis_down_is_unavailable_not_a_pass(
    make_authenticator: Callable[..., ClientAuthenticator],
    served: dict[str, Any],
    keys: dict[str, SigningKey],
) -> None:
    """If Redis cannot be reached, verify raises ReplayCacheUnavailable (503), not success."""
    cache = RedisReplayCache("redis://127.0.0.1:1/0")
    try:
        authenticator = make_authenticator(replay_cache=cache)
        started = time.monotonic()

        with pytest.raises(ReplayCacheUnavailable) as caught:
            authenticator.verify(make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU), AUDIENCE)
        assert isinstance(caught.value, AuthUnavailable)
        assert caught.value.status == 503
        assert time.monotonic() - started < 3
    finally:
        cache.close()


def test_refused_token_never_reaches_replay_cache(
    make_authenticator: Callable[..., ClientAuthenticator],
    served: dict[str, Any],
    keys: dict[str, SigningKey],
) -> None:
    """Forged tokens do not burn jtis: the replay cache is consulted only after the signature."""
    cache = MemoryReplayCache()
    authenticator = make_authenticator(replay_cache=cache)
    jti = {"jti": "victim-jti"}

    with pytest.raises(AuthenticationError):
        authenticator.verify(
            make_token(keys["attacker"], EPIC_ISS, jku=EPIC_JKU, extra_claims=jti), AUDIENCE
        )
    authenticator.verify(
        make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU, extra_claims=jti), AUDIENCE
    )


# --------------------------------------------------------------------------- logging


def test_token_is_never_logged(
    authenticator: ClientAuthenticator,
    keys: dict[str, SigningKey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Logs carry iss/kid/jti for accepted and refused tokens, never the token itself."""
    good = make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU, extra_claims={"jti": "jti-good"})
    bad = make_token(keys["attacker"], EPIC_ISS, jku=EPIC_JKU, extra_claims={"jti": "jti-bad"})
    caplog.set_level(logging.DEBUG, logger="cds_service.auth")

    authenticator.verify(good, AUDIENCE)
    with pytest.raises(AuthenticationError):
        authenticator.verify(bad, AUDIENCE)

    assert "jti-good" in caplog.text
    assert "jti-bad" in caplog.text
    for token in (good, bad):
        for part in token.split("."):
            assert part not in caplog.text


def test_client_strings_cannot_forge_log_lines(
    authenticator: ClientAuthenticator,
    keys: dict[str, SigningKey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A newline in a client-chosen iss or jti is escaped, so it cannot fake a log entry."""
    token = make_token(
        keys["attacker"],
        "https://evil.example\nINFO accepted iss=trusted",
        extra_claims={"jti": "j\r\nforged"},
    )
    caplog.set_level(logging.INFO, logger="cds_service.auth")

    with pytest.raises(AuthenticationError):
        authenticator.verify(token, AUDIENCE)

    assert len(caplog.records) == 1
    assert "\n" not in caplog.text.rstrip("\n")


# --------------------------------------------------------------------------- configuration helpers


def test_parse_issuers_accepts_urls_and_files() -> None:
    """CDS_JWT_ISSUERS maps each trusted iss to an https JWK Set URL or a file: path."""
    value = json.dumps({EPIC_ISS: EPIC_JKU, ORACLE_ISS: "file:/etc/cds/oracle-jwks.json"})

    assert parse_issuers(value) == {
        EPIC_ISS: IssuerKeys(jwks=EPIC_JKU, jku=EPIC_JKU),
        ORACLE_ISS: IssuerKeys(
            jwks="file:/etc/cds/oracle-jwks.json", jku="file:/etc/cds/oracle-jwks.json"
        ),
    }


def test_parse_issuers_accepts_a_file_standing_for_a_jku() -> None:
    """{"jwks": "file:...", "jku": "https://..."}: a local copy of the issuer's https key set."""
    value = json.dumps({SANDBOX_ISS: {"jwks": "file:/etc/cds/sandbox.json", "jku": SANDBOX_JKU}})

    (source,) = parse_issuers(value).values()

    assert source == IssuerKeys(jwks="file:/etc/cds/sandbox.json", jku=SANDBOX_JKU)
    assert source.key_file == "/etc/cds/sandbox.json"


@pytest.mark.parametrize(
    ("value", "match"),
    [
        pytest.param("{not json", "JSON object mapping", id="not-json"),
        pytest.param('["https://a"]', "not a JSON list", id="list"),
        pytest.param("{}", "names no issuer", id="empty"),
        pytest.param('{"https://a": 1}', "must be a string", id="non-string"),
        pytest.param('{"https://a": "http://a/jwks"}', "https URL or a file", id="http"),
        pytest.param('{"https://a": "file:jwks.json"}', "absolute", id="relative-file"),
        pytest.param('{"https://a": "file://host/jwks.json"}', "absolute", id="file-host"),
        pytest.param('{"https://a": "https://u:p@a/jwks"}', "credentials", id="userinfo"),
        pytest.param('{" ": "https://a/jwks"}', "empty issuer", id="blank-iss"),
        pytest.param('{"https://a": {"jwks": "file:/k.json"}}', "both jwks", id="object-no-jku"),
        pytest.param('{"https://a": {"jku": "https://a/k"}}', "both jwks", id="object-no-jwks"),
        pytest.param(
            '{"https://a": {"jwks": "file:/k.json", "jku": "file:/k.json"}}',
            "jku must be the https URL",
            id="object-file-jku",
        ),
        pytest.param(
            '{"https://a": {"jwks": "file:k.json", "jku": "https://a/k"}}',
            "absolute",
            id="object-relative-file",
        ),
        pytest.param(
            '{"https://a": {"jwks": "file:/k.json", "jku": "http://a/k"}}',
            "https URL or a file",
            id="object-http-jku",
        ),
        pytest.param(
            '{"https://a": {"jwks": "file:/k.json", "jku": "https://a/k", "kid": "x"}}',
            "unknown keys",
            id="object-extra-key",
        ),
    ],
)
def test_parse_issuers_rejects_bad_config(value: str, match: str) -> None:
    """Bad CDS_JWT_ISSUERS values fail start-up with a message saying what to fix."""
    with pytest.raises(ValueError, match=match):
        parse_issuers(value)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer  abc.def.ghi ", "abc.def.ghi")],
)
def test_bearer_token_extracted(header: str, expected: str) -> None:
    """The Bearer scheme is matched case-insensitively (RFC 7235)."""
    assert bearer_token(header) == expected


@pytest.mark.parametrize("header", [None, "", "Basic dXNlcg==", "Bearer", "Bearer   "])
def test_bearer_token_missing_refused(header: str | None) -> None:
    """No header, another scheme, or an empty token is an authentication failure."""
    with pytest.raises(AuthenticationError):
        bearer_token(header)


@pytest.mark.parametrize(
    "base", ["https://cds.example.org", "https://cds.example.org/"], ids=["bare", "slash"]
)
def test_endpoint_audience_from_public_base(base: str) -> None:
    """aud is built from the configured public base URL and the request path."""
    assert endpoint_audience(base, "/cds-services/voclosporin-safety") == AUDIENCE


# --------------------------------------------------------------------------- issue 13


@pytest.mark.parametrize(
    ("key_name", "jwk_alg", "token_alg", "accepted"),
    [
        pytest.param("epic", None, "RS384", True, id="rsa-without-alg-RS384"),
        pytest.param("epic", None, "RS256", True, id="rsa-without-alg-RS256"),
        pytest.param("epic", None, "PS256", False, id="rsa-without-alg-refuses-PS256"),
        pytest.param("epic", None, "PS384", False, id="rsa-without-alg-refuses-PS384"),
        pytest.param("epic", "PS256", "PS256", True, id="rsa-declaring-PS256"),
        pytest.param("epic", "PS256", "RS256", False, id="rsa-declaring-PS256-refuses-RS256"),
        pytest.param("epic", "RS384", "PS384", False, id="rsa-declaring-RS384-refuses-PS384"),
        pytest.param("sandbox_es256", None, "ES256", True, id="p256-without-alg-ES256"),
        pytest.param("sandbox_es384", None, "ES384", True, id="p384-without-alg-ES384"),
        pytest.param("sandbox_es384", None, "ES256", False, id="p384-refuses-ES256"),
        pytest.param("epic", None, "ES256", False, id="rsa-refuses-ES256"),
        pytest.param("sandbox_es256", "ES256", "RS256", False, id="ec-refuses-RS256"),
    ],
)
def test_key_type_and_alg_must_match_the_token_alg(
    tmp_path: Path,
    keys: dict[str, SigningKey],
    key_name: str,
    jwk_alg: str | None,
    token_alg: str,
    accepted: bool,
) -> None:
    """One key, one algorithm (RFC 8725 §3.1): a JWK without alg serves only the algorithm its
    kty/crv implies (EC: its curve's ES*, RSA: RS*); PS* needs a JWK that declares it."""
    key = keys[key_name]
    jwk = key.jwk(**({"alg": jwk_alg} if jwk_alg else {}))
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    store = KeyStore({ORACLE_ISS: f"file:{path}"})
    try:
        if accepted:
            assert store.get_key(ORACLE_ISS, key.kid, token_alg) is not None
        else:
            with pytest.raises(AuthenticationError, match=f"cannot verify {token_alg}"):
                store.get_key(ORACLE_ISS, key.kid, token_alg)
    finally:
        store.close()


def test_ps256_token_with_an_rsa_key_without_alg_is_refused(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey]
) -> None:
    """The issue's case end to end: Epic's RSA JWK has no alg, so a PS256 token is a 401."""
    token = make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU, alg="PS256")
    with pytest.raises(AuthenticationError, match="cannot verify PS256"):
        authenticator.verify(token, AUDIENCE)


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        pytest.param("exp", "numeric-string", id="exp-numeric-string"),
        pytest.param("iat", "numeric-string", id="iat-numeric-string"),
        pytest.param("nbf", "numeric-string", id="nbf-numeric-string"),
        pytest.param("exp", True, id="exp-boolean"),
        pytest.param("iat", None, id="iat-null"),
        pytest.param("nbf", [0], id="nbf-array"),
    ],
)
def test_numeric_date_claims_must_be_json_numbers(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey], claim: str, value: Any
) -> None:
    """exp, iat and nbf are NumericDates (RFC 7519 §2): a numeric string is refused."""
    now = int(time.time())
    if value == "numeric-string":
        value = str({"exp": now + 300, "iat": now, "nbf": now}[claim])
    token = make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU, extra_claims={claim: value})
    with pytest.raises(AuthenticationError, match=f"{claim} must be a NumericDate"):
        authenticator.verify(token, AUDIENCE)


def test_float_numeric_dates_are_accepted(
    authenticator: ClientAuthenticator, keys: dict[str, SigningKey]
) -> None:
    """The control: NumericDate may be a non-integer number (RFC 7519 §2)."""
    now = time.time()
    claims = {"iat": now - 0.5, "exp": now + 299.5, "nbf": now - 1.25}
    token = make_token(keys["epic"], EPIC_ISS, jku=EPIC_JKU, extra_claims=claims)
    assert authenticator.verify(token, AUDIENCE)["iss"] == EPIC_ISS


def test_new_key_is_usable_seconds_after_a_load_not_thirty(
    mocked: responses.RequestsMock, keys: dict[str, SigningKey]
) -> None:
    """A key published just after a load verifies once the short per-jku interval has passed."""
    now = [1000.0]
    published = [[keys["epic"].jwk()]]
    served = mocked.add_callback(
        responses.GET, EPIC_JKU, callback=lambda _: (200, {}, json.dumps({"keys": published[0]}))
    )
    store = KeyStore({EPIC_ISS: EPIC_JKU}, clock=lambda: now[0])
    try:
        store.get_key(EPIC_ISS, EPIC_KID, "RS384")
        published[0] = [keys["epic"].jwk(), keys["epic_next"].jwk()]  # the EHR rotates
        now[0] += 1
        with pytest.raises(AuthenticationError, match="unknown kid"):
            store.get_key(EPIC_ISS, "epic-cds-2025", "RS384")  # inside the interval
        now[0] += JWKS_MIN_REFETCH_SECONDS
        assert store.get_key(EPIC_ISS, "epic-cds-2025", "RS384") is not None
        assert served.call_count == 2
        assert JWKS_MIN_REFETCH_SECONDS <= 10
    finally:
        store.close()


def test_refetch_rate_limit_is_per_key_location(
    mocked: responses.RequestsMock, keys: dict[str, SigningKey]
) -> None:
    """Two issuers naming one JWK Set share its rate limit: forged kids fetch it once."""
    served = mocked.add(responses.GET, EPIC_JKU, json={"keys": [keys["epic"].jwk()]})
    store = KeyStore({EPIC_ISS: EPIC_JKU, EPIC_ISS + "/other": EPIC_JKU}, clock=lambda: 1000.0)
    try:
        for iss in (EPIC_ISS, EPIC_ISS + "/other"):
            for attempt in range(5):
                with pytest.raises((AuthenticationError, KeySetUnavailable)):
                    store.get_key(iss, f"forged-{attempt}", "RS384")
        assert served.call_count == 1
    finally:
        store.close()
