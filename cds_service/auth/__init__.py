"""Trusting CDS clients (CDS Hooks 2.0 "Trusting CDS Clients"): Flask-free JWT verification.

Modules, one job each: ``config`` (trusted issuers, audiences, the bearer token, limits),
``replay`` (the jti replay caches), ``keys`` (the issuers' JWK Sets) and ``verifier``
(``ClientAuthenticator``, which checks a token; its docstring lists the checks). The errors
it raises live in ``cds_service.errors`` and are re-exported here.
"""

from cds_service.errors import (
    AuthenticationError,
    AuthUnavailable,
    KeySetUnavailable,
    ReplayCacheUnavailable,
)

from .config import (
    ALLOWED_ALGORITHMS,
    IssuerKeys,
    bearer_token,
    endpoint_audience,
    issuer_key_sources,
    parse_issuers,
    validate_key_location,
)
from .keys import KeyStore
from .replay import MemoryReplayCache, RedisReplayCache, ReplayCache
from .verifier import ClientAuthenticator

__all__ = [
    "ALLOWED_ALGORITHMS",
    "AuthUnavailable",
    "AuthenticationError",
    "ClientAuthenticator",
    "IssuerKeys",
    "KeySetUnavailable",
    "KeyStore",
    "MemoryReplayCache",
    "RedisReplayCache",
    "ReplayCache",
    "ReplayCacheUnavailable",
    "bearer_token",
    "endpoint_audience",
    "issuer_key_sources",
    "parse_issuers",
    "validate_key_location",
]
