"""CDS client authentication settings: the trusted issuers, endpoint audiences, the bearer token.

``parse_issuers`` reads ``CDS_JWT_ISSUERS`` so bad config stops start-up; ``endpoint_audience``
builds the ``aud`` a token must carry; ``bearer_token`` reads the Authorization header. Also
the limits a token and a JWK Set must keep (spec #jwt-signing-algorithm and best practice).
"""

from __future__ import annotations

import json
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
# (connect, read) seconds: a slow EHR key endpoint must not stall a hook call.
JWKS_TIMEOUT: tuple[float, float] = (2.0, 3.0)


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
