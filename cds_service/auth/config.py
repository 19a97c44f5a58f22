"""CDS client authentication settings: the trusted issuers, endpoint audiences, the bearer token.

``parse_issuers`` reads ``CDS_JWT_ISSUERS`` into ``IssuerKeys`` so bad config stops start-up;
``endpoint_audience`` builds the ``aud`` a token must carry; ``bearer_token`` reads the
Authorization header. Also the limits a token and a JWK Set must keep (spec
#jwt-signing-algorithm and best practice).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from cds_service.errors import AuthenticationError

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
# JWK Sets are cached per process for at most JWKS_MAX_AGE_SECONDS; a token naming a kid the
# cache lacks reloads at once, but loads of one key location are spaced at least
# JWKS_MIN_REFETCH_SECONDS apart, so forged kids cannot make us hammer the EHR's key endpoint and
# a newly published key is usable within that many seconds.
JWKS_MAX_AGE_SECONDS = 3600.0
JWKS_MIN_REFETCH_SECONDS = 5.0
# (connect, read) seconds: a slow EHR key endpoint must not stall a hook call; and the whole
# fetch, headers included, ends at JWKS_DEADLINE_SECONDS (the socket is cut).
JWKS_TIMEOUT: tuple[float, float] = (2.0, 3.0)
JWKS_DEADLINE_SECONDS = 5.0


@dataclass(frozen=True)
class IssuerKeys:
    """Where one trusted issuer's JWK Set is read, and the ``jku`` its tokens may name.

    ``jwks`` is an https URL or ``file:/abs/path``. ``jku`` is the https location a local copy
    stands for (a site without internet access keeps the Sandbox's keys in a file); for a plain
    string value it equals ``jwks``. A token with no ``jku`` header is fine either way (spec:
    the key set was then exchanged out of band).
    """

    jwks: str
    jku: str

    @property
    def key_file(self) -> str | None:
        """Return the local path of a ``file:`` key set, None for an https one."""
        return urlsplit(self.jwks).path if self.jwks.startswith("file:") else None


def parse_issuers(env_value: str) -> dict[str, IssuerKeys]:
    """Parse ``CDS_JWT_ISSUERS`` (JSON ``{iss: key location}``) so bad config stops start-up.

    A key location is the https URL of the issuer's JWK Set, ``file:/abs/path/jwks.json`` for
    keys exchanged out of band (clients that send no ``jku``), or
    ``{"jwks": "file:/abs/path", "jku": "https://..."}``: a local copy standing for the https
    location the issuer's tokens name in their ``jku`` header.
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
    return issuer_key_sources(parsed)


def issuer_key_sources(issuers: Mapping[str, object]) -> dict[str, IssuerKeys]:
    """Check each trusted issuer's key location (string, object or ``IssuerKeys``)."""
    if not isinstance(issuers, Mapping):
        raise ValueError(f"CDS_JWT_ISSUERS must be a JSON object, not {type(issuers).__name__}")
    if not issuers:
        raise ValueError("CDS_JWT_ISSUERS names no issuer, so every client would be refused")
    sources: dict[str, IssuerKeys] = {}
    for iss, location in issuers.items():
        if not isinstance(iss, str) or not iss.strip():
            raise ValueError("CDS_JWT_ISSUERS has an empty issuer name")
        sources[iss] = issuer_keys(iss, location)
    return sources


def issuer_keys(iss: str, location: object) -> IssuerKeys:
    """Read one issuer's key location: a string, or ``{"jwks": ..., "jku": "https://..."}``."""
    if isinstance(location, IssuerKeys):
        validate_key_location(location.jwks, iss=iss)
        return location
    if isinstance(location, str):
        validate_key_location(location, iss=iss)
        return IssuerKeys(jwks=location, jku=location)
    if not isinstance(location, Mapping):
        raise ValueError(
            f"CDS_JWT_ISSUERS[{iss!r}] must be a string (JWK Set URL or file: path) or an "
            '{"jwks": "file:/path", "jku": "https://..."} object'
        )
    unknown = sorted(set(location) - {"jwks", "jku"})
    if unknown:
        raise ValueError(f"CDS_JWT_ISSUERS[{iss!r}] has unknown keys {unknown}: use jwks and jku")
    jwks, jku = location.get("jwks"), location.get("jku")
    if not isinstance(jwks, str) or not isinstance(jku, str):
        raise ValueError(
            f"CDS_JWT_ISSUERS[{iss!r}] needs string values for both jwks (where the keys are "
            "read: https URL or file: path) and jku (the https URL tokens name)"
        )
    validate_key_location(jwks, iss=iss)
    validate_key_location(jku, iss=iss)
    if not jku.startswith("https:"):
        raise ValueError(
            f"CDS_JWT_ISSUERS[{iss!r}] jku must be the https URL the issuer's tokens name, "
            f"got {jku!r}"
        )
    return IssuerKeys(jwks=jwks, jku=jku)


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
