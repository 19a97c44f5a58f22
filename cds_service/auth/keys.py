"""The trusted issuers' public keys: JWK Sets fetched (https) or read (``file:``), cached.

Keys are cached per issuer in this process for up to an hour; an unknown ``kid`` triggers an
immediate reload, rate limited per key location (at most one load every few seconds, so a new
key is usable within seconds and forged kids cannot make us hammer the EHR); a failed reload
keeps the older keys; private keys published by mistake are ignored. ``file:`` key sets are
read once at start-up (``check_key_files``) so a missing or broken one stops the service.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests

from cds_service.errors import AuthenticationError, KeySetUnavailable
from cds_service.fhir_client import deadline_scope, deadline_session
from cds_service.logs import loggable

from .config import (
    JWKS_DEADLINE_SECONDS,
    JWKS_MAX_AGE_SECONDS,
    JWKS_MIN_REFETCH_SECONDS,
    JWKS_TIMEOUT,
    MAX_JWKS_BYTES,
    IssuerKeys,
    issuer_key_sources,
)

# One logger for the whole auth package: operators filter on "cds_service.auth".
logger = logging.getLogger("cds_service.auth")

# A JWK without "alg" (RFC 7517 §4.4: optional) is used only with the algorithm its type implies,
# so one key serves one algorithm (RFC 8725 §3.1): an EC key with its curve's ES algorithm
# (RFC 7518 §3.4), an RSA key with RSASSA-PKCS1-v1_5 (RS*, RFC 7518 §3.3). RSASSA-PSS (PS*) is
# accepted only from a JWK that declares it ("alg": "PS256"), never inferred from "kty": "RSA".
_IMPLIED_ALGORITHMS: dict[tuple[str, str | None], frozenset[str]] = {
    ("RSA", None): frozenset({"RS256", "RS384", "RS512"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("EC", "P-521"): frozenset({"ES512"}),
}


def _usable_without_alg(jwk: dict[str, Any], algorithm: str) -> bool:
    """True if the JWK declares ``alg``, or its kty (and crv) implies ``algorithm``."""
    if "alg" in jwk:
        return True
    kty, crv = jwk.get("kty"), jwk.get("crv") if jwk.get("kty") == "EC" else None
    return algorithm in _IMPLIED_ALGORITHMS.get((str(kty), crv), frozenset())


@dataclass
class _CachedKeySet:
    """One issuer's keys as last loaded, indexed by kid; keys per alg are built lazily."""

    loaded_at: float
    jwks_by_kid: dict[str, list[dict[str, Any]]]
    prepared: dict[tuple[str, str], jwt.PyJWK] = field(default_factory=dict)


@dataclass
class _IssuerState:
    source: IssuerKeys
    lock: threading.Lock = field(default_factory=threading.Lock)
    cached: _CachedKeySet | None = None


class KeyStore:
    """Public keys per trusted issuer, loaded from an https JWK Set URL or a ``file:`` path.

    Keys are cached for ``max_age_seconds``. An unknown ``kid`` triggers one reload (the client
    rotated its key), but loads of one key location (jku) are spaced at least
    ``refetch_interval_seconds`` apart, so tokens with made-up kids cannot make us hammer the
    EHR's key endpoint, and a key published just after a load is refused for no longer.
    """

    def __init__(
        self,
        locations: Mapping[str, object],
        *,
        http_session: requests.Session | None = None,
        refetch_interval_seconds: float = JWKS_MIN_REFETCH_SECONDS,
        max_age_seconds: float = JWKS_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        sources = issuer_key_sources(locations)
        self._issuers = {iss: _IssuerState(source) for iss, source in sources.items()}
        self._owns_session = http_session is None
        # Connections whose sockets are cut at the fetch deadline: a key endpoint that trickles
        # its headers must not hold the issuer's lock (and every call of that issuer) for long.
        self._session = http_session if http_session is not None else deadline_session(2)
        self._refetch_interval = refetch_interval_seconds
        self._max_age = max_age_seconds
        self._clock = clock
        # Last load attempt per key location: issuers sharing one JWK Set share its rate limit.
        self._last_load: dict[str, float] = {}
        self._rate_lock = threading.Lock()

    def source(self, iss: str) -> IssuerKeys | None:
        """Return a trusted issuer's key location and the jku it answers to; None if untrusted."""
        state = self._issuers.get(iss)
        return state.source if state is not None else None

    def check_key_files(self) -> None:
        """Read every ``file:`` key set now; raise ``ValueError`` naming the issuer and path.

        Called at start-up: a key file that is missing, unreadable, not a JWK Set or without a
        usable signing key would otherwise surface only as a 503 at the first signed call.
        """
        for iss, state in self._issuers.items():
            path = state.source.key_file
            if path is None:
                continue
            with state.lock:
                try:
                    self._reload(iss, state, self._clock())
                except KeySetUnavailable as exc:
                    raise ValueError(
                        f"CDS_JWT_ISSUERS[{iss!r}]: key file {path} cannot be used: {exc}"
                    ) from exc
                cached = state.cached
                if cached is None or not cached.jwks_by_kid:
                    raise ValueError(
                        f"CDS_JWT_ISSUERS[{iss!r}]: key file {path} has no usable signing key "
                        "(each needs a kid, no use other than sig, and no private part)"
                    )

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
                logger.info(
                    "unknown kid for iss=%s kid=%s; reloading keys once", iss, loggable(kid)
                )
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
        location = state.source.jwks
        with self._rate_lock:
            last = self._last_load.get(location)
            if last is not None and now - last < self._refetch_interval:
                logger.info("key reload for iss=%s skipped: rate limited", iss)
                return False
            self._last_load[location] = now
        try:
            jwks_by_kid = self._load(state.source.jwks)
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
                    "JWK Set at %s publishes private key kid=%s; ignored",
                    location,
                    loggable(jwk["kid"]),
                )
                continue
            jwks_by_kid.setdefault(jwk["kid"], []).append(jwk)
        return jwks_by_kid

    def _fetch(self, url: str) -> bytes:
        deadline = time.monotonic() + JWKS_DEADLINE_SECONDS
        try:
            with (
                deadline_scope(deadline),
                self._session.get(
                    url, timeout=JWKS_TIMEOUT, stream=True, headers={"Accept": "application/json"}
                ) as response,
            ):
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
                if time.monotonic() >= deadline:  # cut at the deadline: the body may be partial
                    raise KeySetUnavailable(
                        f"JWK Set at {url} not read within {JWKS_DEADLINE_SECONDS:.0f} s"
                    )
                return bytes(body)
        except (requests.RequestException, OSError) as exc:
            if time.monotonic() >= deadline:
                raise KeySetUnavailable(
                    f"JWK Set at {url} not read within {JWKS_DEADLINE_SECONDS:.0f} s"
                ) from exc
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
            if jwk.get("alg", algorithm) != algorithm or not _usable_without_alg(jwk, algorithm):
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
