"""Verify the JWT a CDS client sends with every call (CDS Hooks 2.0, "Trusting CDS Clients").

Flask-agnostic: the app passes the bearer token and the public URL of the endpoint being called,
and gets back the verified claims or one of these errors of ``cds_service.errors``:

    AuthenticationError          401  token not acceptable; ``reason`` is for logs only
    AuthUnavailable              503  cannot decide now, so the token is never let through
     ├── ReplayCacheUnavailable  503  the shared replay cache (Redis) cannot be reached
     └── KeySetUnavailable       503  the issuer's JWK Set cannot be fetched or read

Checks follow the spec (#trusting-cds-clients, #jwt-signing-algorithm) and cds-hooks.org
best practices: asymmetric ``alg`` only, ``kid`` required, ``iss`` on an allowlist before any key
is fetched, ``jku`` only if it is the configured key location, signature, ``aud`` equal to the
endpoint URL, ``exp``/``iat`` (and ``nbf`` if present) with leeway, lifetime at most an hour, and
``jti`` claimed once in a replay cache shared by all workers. Extra claims (Epic's ``sub`` and
``nbf``, ``tenant``) are tolerated. The token itself is never logged; ``iss``/``kid``/``jti`` are.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry

from cds_service.errors import (
    AuthenticationError,
    AuthUnavailable,
    KeySetUnavailable,
    ReplayCacheUnavailable,
)

__all__ = [
    "ALLOWED_ALGORITHMS",
    "AuthUnavailable",
    "AuthenticationError",
    "ClientAuthenticator",
    "KeySetUnavailable",
    "KeyStore",
    "MemoryReplayCache",
    "RedisReplayCache",
    "ReplayCache",
    "ReplayCacheUnavailable",
    "bearer_token",
    "endpoint_audience",
    "parse_issuers",
    "validate_key_location",
]

logger = logging.getLogger(__name__)

# Spec #jwt-signing-algorithm: never `none`, never symmetric (HS*); ES384/RS384 are recommended.
ALLOWED_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384"}
)
# Real client tokens are about 1 KB; the cap keeps a hostile header from costing us CPU.
MAX_TOKEN_LENGTH = 16_384
MAX_JTI_LENGTH = 256
MAX_KID_LENGTH = 256
# A JWK Set holds a handful of public keys; anything bigger is not one.
MAX_JWKS_BYTES = 1_048_576
# (connect, read) seconds: a slow EHR key endpoint must not stall a hook call.
JWKS_TIMEOUT: tuple[float, float] = (2.0, 3.0)


# --------------------------------------------------------------------------- configuration


def parse_issuers(env_value: str) -> dict[str, str]:
    """Parse ``CDS_JWT_ISSUERS`` (JSON ``{iss: key location}``) so bad config stops start-up.

    A key location is the https URL of the issuer's JWK Set, or ``file:/abs/path/jwks.json`` for
    keys exchanged out of band (air-gapped sites, clients that send no ``jku``).
    """
    try:
        parsed = json.loads(env_value)
    except json.JSONDecodeError as exc:
        raise ValueError(
            "CDS_JWT_ISSUERS must be a JSON object mapping each trusted iss to its JWK Set "
            f'location, e.g. {{"https://ehr.example.org": "https://ehr.example.org/jwks"}}: {exc}'
        ) from exc
    if not isinstance(parsed, dict):
        raise ValueError(
            f"CDS_JWT_ISSUERS must be a JSON object, not a JSON {type(parsed).__name__}"
        )
    if not parsed:
        raise ValueError("CDS_JWT_ISSUERS names no issuer, so every client would be refused")
    issuers: dict[str, str] = {}
    for iss, location in parsed.items():
        if not iss.strip():
            raise ValueError("CDS_JWT_ISSUERS has an empty issuer name")
        if not isinstance(location, str):
            raise ValueError(
                f"CDS_JWT_ISSUERS[{iss!r}] must be a string (JWK Set URL or file: path)"
            )
        validate_key_location(location, iss=iss)
        issuers[iss] = location
    return issuers


def validate_key_location(location: str, *, iss: str = "?") -> None:
    """Refuse key locations other than an https URL or an absolute ``file:`` path."""
    parts = urlsplit(location)
    if parts.scheme == "https":
        if not parts.hostname:
            raise ValueError(f"key location for {iss!r} has no host: {location!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"key location for {iss!r} must not carry credentials")
        if parts.fragment:
            raise ValueError(f"key location for {iss!r} must not have a #fragment")
        return
    if parts.scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(
                f"key location for {iss!r} must be file:/absolute/path.json, got {location!r}"
            )
        return
    raise ValueError(
        f"key location for {iss!r} must be an https URL or a file: path, got {location!r}"
    )


def endpoint_audience(public_base_url: str, path: str) -> str:
    """Build the ``aud`` we expect: the public URL of the endpoint, never the Host header.

    ``public_base_url`` is the configured external base including any mount prefix
    (``https://cds.example.org`` or ``https://host/cds``); ``path`` is the request path relative
    to the app (Flask ``request.path``, e.g. ``/cds-services/voclosporin-safety``).
    """
    return public_base_url.rstrip("/") + "/" + path.lstrip("/")


def bearer_token(authorization_header: str | None) -> str:
    """Extract the token from ``Authorization: Bearer <JWT>`` (scheme is case-insensitive)."""
    if not authorization_header:
        raise AuthenticationError("no Authorization header")
    scheme, _, token = authorization_header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("Authorization header is not a Bearer token")
    return token


# --------------------------------------------------------------------------- replay cache


class ReplayCache(Protocol):
    """Remembers each (iss, jti) for the token's lifetime, shared by every worker that verifies."""

    def claim(self, jti: str, iss: str, ttl_seconds: int) -> bool:
        """Record the jti; True only the first time it is seen within ``ttl_seconds``."""
        ...


def _replay_key(prefix: str, iss: str, jti: str) -> str:
    """Hash iss and jti so client-chosen strings give bounded, unambiguous cache keys."""
    digest = hashlib.sha256(f"{iss}\x00{jti}".encode()).hexdigest()
    return prefix + digest


class RedisReplayCache:
    """Replay cache in Redis: ``SET key NX EX ttl`` is atomic across workers, hosts and restarts.

    When Redis is unreachable ``claim`` raises ``ReplayCacheUnavailable`` (answer 503): failing
    open would let a captured token be replayed, failing closed costs only availability.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "cds:jti:",
        *,
        socket_timeout_seconds: float = 0.5,
    ) -> None:
        self.prefix = prefix
        # One quick retry (a pooled connection may be stale after a Redis restart), no backoff:
        # a hook call must answer in about 500 ms, so Redis trouble must surface fast.
        self._client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=socket_timeout_seconds,
            socket_timeout=socket_timeout_seconds,
            retry=Retry(NoBackoff(), 1),
        )

    def claim(self, jti: str, iss: str, ttl_seconds: int) -> bool:
        """Set the key only if absent; True means this is the first sighting of the jti."""
        key = _replay_key(self.prefix, iss, jti)
        try:
            created = self._client.set(key, "1", nx=True, ex=max(1, ttl_seconds))
        except redis.RedisError as exc:
            raise ReplayCacheUnavailable(
                f"replay cache (Redis) unavailable: {type(exc).__name__}"
            ) from exc
        return bool(created)

    def close(self) -> None:
        """Release pooled connections (tests run with ResourceWarning as error)."""
        self._client.close()


class MemoryReplayCache:
    """In-process replay cache for single-process development; useless across gunicorn workers."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def claim(self, jti: str, iss: str, ttl_seconds: int) -> bool:
        """Record the jti unless an unexpired entry exists; expired entries are purged first."""
        key = _replay_key("", iss, jti)
        with self._lock:
            now = self._clock()
            self._purge(now)
            if key in self._expiry:
                return False
            expires_at = now + max(1, ttl_seconds)
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return True

    def __len__(self) -> int:
        with self._lock:
            self._purge(self._clock())
            return len(self._expiry)

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            expires_at, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == expires_at:
                del self._expiry[key]


# --------------------------------------------------------------------------- key store


@dataclass
class _CachedKeySet:
    """One issuer's keys as last loaded, indexed by kid; keys per alg are built lazily."""

    loaded_at: float
    jwks_by_kid: dict[str, list[dict[str, Any]]]
    prepared: dict[tuple[str, str], jwt.PyJWK] = field(default_factory=dict)


@dataclass
class _IssuerState:
    location: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    cached: _CachedKeySet | None = None
    last_attempt: float | None = None


class KeyStore:
    """Public keys per trusted issuer, loaded from an https JWK Set URL or a ``file:`` path.

    Keys are cached for ``max_age_seconds``. An unknown ``kid`` triggers one reload (the client
    rotated its key), but loads per issuer are spaced at least ``refetch_interval_seconds`` apart,
    so tokens with made-up kids cannot make us hammer the EHR's key endpoint.
    """

    def __init__(
        self,
        locations: Mapping[str, str],
        *,
        http_session: requests.Session | None = None,
        refetch_interval_seconds: float = 30.0,
        max_age_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for iss, location in locations.items():
            validate_key_location(location, iss=iss)
        self._issuers = {iss: _IssuerState(location) for iss, location in locations.items()}
        self._owns_session = http_session is None
        self._session = http_session if http_session is not None else requests.Session()
        self._refetch_interval = refetch_interval_seconds
        self._max_age = max_age_seconds
        self._clock = clock

    def location(self, iss: str) -> str | None:
        """Return the configured key location of a trusted issuer, None if it is not trusted."""
        state = self._issuers.get(iss)
        return state.location if state is not None else None

    def get_key(self, iss: str, kid: str, algorithm: str) -> jwt.PyJWK:
        """Return the issuer's key ``kid`` bound to ``algorithm``, reloading once if kid is new."""
        state = self._issuers.get(iss)
        if state is None:
            raise AuthenticationError("issuer not trusted", iss=iss, kid=kid)
        with state.lock:
            now = self._clock()
            loaded_now = False
            if state.cached is None or now - state.cached.loaded_at >= self._max_age:
                loaded_now = self._reload(iss, state, now)
            cached = state.cached
            if cached is None:
                raise KeySetUnavailable(
                    f"no keys for {iss}: last load failed, next attempt allowed "
                    f"{self._refetch_interval:.0f} s after it"
                )
            if kid not in cached.jwks_by_kid and not loaded_now:
                logger.info("unknown kid for iss=%s kid=%r; reloading keys once", iss, kid)
                self._reload(iss, state, now)
                cached = state.cached
                assert cached is not None  # _reload never drops an existing cache
            return self._prepared_key(cached, iss, kid, algorithm)

    def close(self) -> None:
        """Close the HTTP session if this store created it."""
        if self._owns_session:
            self._session.close()

    def _reload(self, iss: str, state: _IssuerState, now: float) -> bool:
        """Load the key set if the rate limit allows; on failure keep any older keys."""
        if state.last_attempt is not None and now - state.last_attempt < self._refetch_interval:
            logger.info("key reload for iss=%s skipped: rate limited", iss)
            return False
        state.last_attempt = now
        try:
            jwks_by_kid = self._load(state.location)
        except KeySetUnavailable:
            if state.cached is None:
                raise
            logger.warning("key reload for iss=%s failed; keeping cached keys", iss, exc_info=True)
            return False
        state.cached = _CachedKeySet(loaded_at=now, jwks_by_kid=jwks_by_kid)
        logger.info("loaded %d signing keys for iss=%s", len(jwks_by_kid), iss)
        return True

    def _load(self, location: str) -> dict[str, list[dict[str, Any]]]:
        """Read and parse one JWK Set; any failure is ``KeySetUnavailable``."""
        body = self._read_file(location) if location.startswith("file:") else self._fetch(location)
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise KeySetUnavailable(f"JWK Set at {location} is not JSON") from exc
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise KeySetUnavailable(f"JWK Set at {location} has no 'keys' array")
        try:
            jwt.PyJWKSet.from_dict(document)  # refuses a set with no usable key at all
        except jwt.PyJWTError as exc:
            raise KeySetUnavailable(f"JWK Set at {location}: {exc}") from exc
        jwks_by_kid: dict[str, list[dict[str, Any]]] = {}
        for jwk in document["keys"]:
            if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
                continue  # spec: kid is how a token names its key, so a key without one is unusable
            if jwk.get("use", "sig") != "sig":
                continue
            if "d" in jwk:
                # A published private key is compromised; trusting it would trust anyone.
                logger.error(
                    "JWK Set at %s publishes private key kid=%s; ignored", location, jwk["kid"]
                )
                continue
            jwks_by_kid.setdefault(jwk["kid"], []).append(jwk)
        return jwks_by_kid

    def _fetch(self, url: str) -> bytes:
        try:
            with self._session.get(
                url, timeout=JWKS_TIMEOUT, stream=True, headers={"Accept": "application/json"}
            ) as response:
                if response.status_code != 200:
                    raise KeySetUnavailable(
                        f"JWK Set at {url} answered HTTP {response.status_code}"
                    )
                if not response.url.startswith("https://"):
                    raise KeySetUnavailable(f"JWK Set at {url} redirected off https")
                body = bytearray()
                for chunk in response.iter_content(chunk_size=65_536):
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise KeySetUnavailable(f"JWK Set at {url} exceeds {MAX_JWKS_BYTES} bytes")
                return bytes(body)
        except requests.RequestException as exc:
            raise KeySetUnavailable(f"JWK Set at {url} unreachable: {type(exc).__name__}") from exc

    @staticmethod
    def _read_file(location: str) -> bytes:
        path = urlsplit(location).path
        try:
            with open(path, "rb") as handle:
                body = handle.read(MAX_JWKS_BYTES + 1)
        except OSError as exc:
            raise KeySetUnavailable(f"JWK Set file {path} unreadable: {exc.strerror}") from exc
        if len(body) > MAX_JWKS_BYTES:
            raise KeySetUnavailable(f"JWK Set file {path} exceeds {MAX_JWKS_BYTES} bytes")
        return body

    @staticmethod
    def _prepared_key(cached: _CachedKeySet, iss: str, kid: str, algorithm: str) -> jwt.PyJWK:
        """Bind the JWK to the token's alg; refuse a key of another type, curve or declared alg."""
        prepared = cached.prepared.get((kid, algorithm))
        if prepared is not None:
            return prepared
        candidates = cached.jwks_by_kid.get(kid)
        if not candidates:
            raise AuthenticationError("unknown kid", iss=iss, kid=kid)
        for jwk in candidates:
            if jwk.get("alg", algorithm) != algorithm:
                continue
            try:
                # PyJWK would default an RSA key without "alg" to RS256; the header's alg
                # (already on our allowlist) decides, and from_jwk refuses a mismatched kty/crv.
                prepared = jwt.PyJWK(jwk, algorithm=algorithm)
            except jwt.PyJWTError:
                continue
            cached.prepared[(kid, algorithm)] = prepared
            return prepared
        raise AuthenticationError(f"key {kid} cannot verify {algorithm}", iss=iss, kid=kid)


# --------------------------------------------------------------------------- authenticator


class ClientAuthenticator:
    """Verify CDS client JWTs against an allowlist of issuers and a shared replay cache."""

    def __init__(
        self,
        issuers: Mapping[str, str],
        replay_cache: ReplayCache,
        leeway_seconds: int = 30,
        max_lifetime_seconds: int = 3600,
        http_session: requests.Session | None = None,
        *,
        key_refetch_interval_seconds: float = 30.0,
        key_max_age_seconds: float = 3600.0,
    ) -> None:
        if leeway_seconds < 0 or max_lifetime_seconds <= 0:
            raise ValueError("leeway must be >= 0 and max lifetime > 0 seconds")
        self._keys = KeyStore(
            issuers,
            http_session=http_session,
            refetch_interval_seconds=key_refetch_interval_seconds,
            max_age_seconds=key_max_age_seconds,
        )
        self._replay_cache = replay_cache
        self._leeway = leeway_seconds
        self._max_lifetime = max_lifetime_seconds

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        """Return the claims of a valid, first-seen token whose ``aud`` is ``audience``.

        Raises ``AuthenticationError`` (401) or ``AuthUnavailable`` (503).
        """
        try:
            return self._verify(token, audience)
        except AuthenticationError as exc:
            logger.warning(
                "CDS client JWT refused: %s (iss=%s kid=%s jti=%s)",
                _loggable(exc.reason, quote=False),
                _loggable(exc.iss),
                _loggable(exc.kid),
                _loggable(exc.jti),
            )
            raise

    def close(self) -> None:
        """Close the HTTP session used for JWK Sets if the authenticator created it."""
        self._keys.close()

    def _verify(self, token: str, audience: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthenticationError("token too long")
        header = self._checked_header(token)
        alg: str = header["alg"]
        kid: str = header["kid"]

        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"malformed payload: {exc}", kid=kid) from exc
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise AuthenticationError("iss missing", kid=kid)
        location = self._keys.location(iss)
        if location is None:  # before any key fetch: an unknown iss costs us nothing
            raise AuthenticationError("issuer not trusted", iss=iss, kid=kid)
        jku = header.get("jku")
        if jku is not None and jku != location:
            # Never fetch a token-supplied URL: the key would come from whoever minted the token.
            raise AuthenticationError(
                f"jku {jku!r} is not the configured key location", iss=iss, kid=kid
            )

        try:
            key = self._keys.get_key(iss, kid, alg)
        except AuthenticationError as exc:
            exc.jti = _str_or_none(unverified, "jti")
            raise
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audience,
                issuer=iss,
                leeway=self._leeway,
                options={
                    "require": ["iss", "aud", "exp", "iat", "jti"],
                    "verify_signature": True,
                    "verify_aud": True,
                    "verify_exp": True,
                    "verify_iat": True,
                    "verify_iss": True,
                    "verify_nbf": True,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(
                f"{type(exc).__name__}: {exc}",
                iss=iss,
                kid=kid,
                jti=_str_or_none(unverified, "jti"),
            ) from exc

        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
            raise AuthenticationError("jti must be a non-empty string", iss=iss, kid=kid)
        exp, iat = float(claims["exp"]), float(claims["iat"])
        now = time.time()
        if iat > now + self._leeway:  # PyJWT < 2.10 only checks that iat is a number
            raise AuthenticationError("iat is in the future", iss=iss, kid=kid, jti=jti)
        if exp - iat > self._max_lifetime:
            # Best practice keeps a jti "no more than an hour"; a longer-lived token could
            # outlive its replay-cache entry and be replayed.
            raise AuthenticationError(
                f"token lifetime {exp - iat:.0f} s exceeds {self._max_lifetime} s",
                iss=iss,
                kid=kid,
                jti=jti,
            )
        # iat <= now + leeway and exp - iat <= max, so the cap below never shortens the
        # memory of a token that is still acceptable.
        remaining = exp - now + self._leeway
        ttl = max(1, math.ceil(min(remaining, self._max_lifetime + 2 * self._leeway)))
        if not self._replay_cache.claim(jti, iss, ttl):
            raise AuthenticationError("jti replayed", iss=iss, kid=kid, jti=jti)
        logger.info(
            "CDS client JWT accepted (iss=%s kid=%s jti=%s tenant=%s)",
            _loggable(iss),
            _loggable(kid),
            _loggable(jti),
            _loggable(_str_or_none(claims, "tenant")),
        )
        return claims

    @staticmethod
    def _checked_header(token: str) -> dict[str, Any]:
        """Refuse tokens whose header is malformed or names an algorithm we do not trust."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"malformed header: {exc}") from exc
        kid = header.get("kid")
        kid_for_log = kid if isinstance(kid, str) and len(kid) <= MAX_KID_LENGTH else None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise AuthenticationError(f"alg {alg!r} not allowed", kid=kid_for_log)
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise AuthenticationError(f"typ {typ!r} is not JWT", kid=kid_for_log)
        if kid_for_log is None or not kid_for_log:
            raise AuthenticationError("kid missing or invalid")
        if "crit" in header:
            raise AuthenticationError("crit header extensions not supported", kid=kid_for_log)
        jku = header.get("jku")
        if jku is not None and not isinstance(jku, str):
            raise AuthenticationError("jku is not a string", kid=kid_for_log)
        return header


def _loggable(value: str | None, *, quote: bool = True, limit: int = 200) -> str:
    """Render a client-chosen string for a log line: escaped (no forged lines) and bounded."""
    if value is None:
        return "-"
    text = repr(value) if quote else value.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


def _str_or_none(mapping: Mapping[str, Any], name: str) -> str | None:
    value = mapping.get(name)
    return value if isinstance(value, str) else None
