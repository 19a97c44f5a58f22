"""Verify the JWT a CDS client sends with every call (CDS Hooks 2.0, "Trusting CDS Clients").

Flask-agnostic: the app passes the bearer token and the public URL of the endpoint being called,
and gets back the verified claims or one of these errors of ``cds_service.errors``:

    AuthenticationError          401  token not acceptable; ``reason`` is for logs only
    AuthUnavailable              503  cannot decide now, so the token is never let through
     ├── ReplayCacheUnavailable  503  the shared replay cache (Redis) cannot be reached
     └── KeySetUnavailable       503  the issuer's JWK Set cannot be fetched or read

Checks follow the spec (#trusting-cds-clients, #jwt-signing-algorithm) and cds-hooks.org
best practices: asymmetric ``alg`` only, ``kid`` required, ``iss`` on an allowlist before any key
is fetched, ``jku`` only if it is the configured key location (or the https location a configured
``file:`` copy stands for), signature, ``aud`` equal to the endpoint URL, ``exp``/``iat`` (and
``nbf`` if present) with leeway and as JSON numbers (RFC 7519 NumericDate), lifetime at most
an hour, and ``jti`` claimed once in a replay cache shared by all workers. The key must fit
``alg`` (``keys._usable_without_alg``: one key, one algorithm, RFC 8725 §3.1). Extra claims
(Epic's ``sub`` and ``nbf``, ``tenant``) are tolerated.
The token itself is never logged; ``iss``/``kid``/``jti`` are.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import jwt
import requests

from cds_service.errors import AuthenticationError
from cds_service.logs import escape_controls, loggable

from .config import (
    ALLOWED_ALGORITHMS,
    JWKS_MAX_AGE_SECONDS,
    JWKS_MIN_REFETCH_SECONDS,
    MAX_JTI_LENGTH,
    MAX_KID_LENGTH,
    MAX_TOKEN_LENGTH,
)
from .keys import KeyStore
from .replay import ReplayCache

# One logger for the whole auth package: operators filter on "cds_service.auth".
logger = logging.getLogger("cds_service.auth")


class ClientAuthenticator:
    """Verify CDS client JWTs against an allowlist of issuers and a shared replay cache."""

    def __init__(
        self,
        issuers: Mapping[str, object],
        replay_cache: ReplayCache,
        leeway_seconds: int = 30,
        max_lifetime_seconds: int = 3600,
        http_session: requests.Session | None = None,
        *,
        key_refetch_interval_seconds: float = JWKS_MIN_REFETCH_SECONDS,
        key_max_age_seconds: float = JWKS_MAX_AGE_SECONDS,
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

    def check_key_files(self) -> None:
        """Read the ``file:`` key sets now; a bad one is a ``ValueError`` naming issuer and path."""
        self._keys.check_key_files()

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
        source = self._keys.source(iss)
        if source is None:  # before any key fetch: an unknown iss costs us nothing
            raise AuthenticationError("issuer not trusted", iss=iss, kid=kid)
        for name in NUMERIC_DATE_CLAIMS:
            # RFC 7519 §2 NumericDate is a JSON number; PyJWT would take "1767225600" too.
            value = unverified.get(name)
            if name in unverified and (isinstance(value, bool) or not _is_number(value)):
                raise AuthenticationError(
                    f"{name} must be a NumericDate (a JSON number)", iss=iss, kid=kid
                )
        jku = header.get("jku")
        if jku is not None and jku != source.jku:
            # Never fetch a token-supplied URL: the key would come from whoever minted the token.
            # A configured local copy answers only to the https location it stands for.
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
    if not quote and value is not None:
        text = escape_controls(value)
        return text if len(text) <= limit else text[:limit] + "..."
    return loggable(value, limit=limit)


NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")


def _is_number(value: object) -> bool:
    """A finite JSON number (int or float, not bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _str_or_none(mapping: Mapping[str, Any], name: str) -> str | None:
    value = mapping.get(name)
    return value if isinstance(value, str) else None
