"""Decide whether the ``fhirServer`` URL of a hook request may be contacted (SSRF guard).

The URL comes from the caller, and we would send it a bearer token and act on its answer, so a
hostile or mistaken value must not point us at our own network (cloud metadata at
169.254.169.254, Redis, the database, admin ports). Two modes:

* allowlist (``CDS_FHIR_ALLOWED_SERVERS`` set, the production setting): only URLs equal to or
  under a listed base are allowed; http and loopback are then fine because an operator chose them.
* no allowlist: https only, and every address the host resolves to must be public.

Its one error is ``cds_service.errors.FhirServerNotAllowed``: its message names the host and the
rule it broke, never a token or a resolved address. The app decides the status: the call can
still run on prefetch, and 412 applies only if required data is then missing (spec
#http-status-codes).

Resolution is checked when ``check`` runs and the HTTP client resolves again when it connects,
so a DNS-rebinding host could still slip through in the no-allowlist mode: use the allowlist in
production.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

from cds_service.errors import FhirServerNotAllowed

__all__ = [
    "FhirServerPolicy",
    "Resolver",
    "base_url_problem",
    "parse_allowed_servers",
    "resolve_host",
    "safe_next_link",
]

Resolver = Callable[[str, int], Iterable[str]]
"""(host, port) -> IP address strings; ``socket.getaddrinfo`` by default, injectable for tests."""

MAX_URL_LENGTH = 4096
_DEFAULT_PORTS = {"http": 80, "https": 443}
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# RFC 6052 NAT64 prefixes: the IPv4 address in the low 32 bits is the one actually reached.
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")


@dataclass(frozen=True)
class _Origin:
    """A URL reduced to what decides where a request goes: scheme, host, port, path segments."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]

    def contains(self, other: _Origin) -> bool:
        """True if ``other`` is this base or below it, segment by segment (no prefix tricks)."""
        return (self.scheme, self.host, self.port) == (
            other.scheme,
            other.host,
            other.port,
        ) and other.segments[: len(self.segments)] == self.segments


def _parse(url: str) -> _Origin:
    """Normalise an absolute http(s) URL, refusing anything a client could read two ways."""
    if len(url) > MAX_URL_LENGTH:
        raise FhirServerNotAllowed("URL is too long")
    if any(ch.isspace() or ord(ch) < 0x20 or ch == "\x7f" or ch == "\\" for ch in url):
        raise FhirServerNotAllowed("URL contains whitespace, control characters or backslashes")
    if not url.isascii():
        raise FhirServerNotAllowed("URL must be ASCII (use punycode for the host)")
    parts: SplitResult = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise FhirServerNotAllowed(f"scheme {scheme or '(none)'!r} is not http or https")
    if "@" in parts.netloc:
        raise FhirServerNotAllowed("URL must not contain user information (user@host)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise FhirServerNotAllowed("URL has no host")
    try:
        port = parts.port if parts.port is not None else _DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise FhirServerNotAllowed("URL has an invalid port") from exc
    with contextlib.suppress(ValueError):
        host = ipaddress.ip_address(host).compressed  # one spelling per IP literal
    segments = parts.path.split("/")[1:] if parts.path else []
    if segments and segments[-1] == "":
        segments.pop()  # trailing slash: "…/fhir/" is the same base as "…/fhir"
    for segment in segments:
        decoded = unquote(segment)
        if decoded in (".", "..") or "/" in decoded or "\\" in decoded:
            # Servers and proxies resolve these, so the path would escape the allowed base.
            raise FhirServerNotAllowed("URL path contains dot segments or encoded slashes")
    return _Origin(scheme, host, port, tuple(segments))


def base_url_problem(url: str) -> str | None:
    """Why ``url`` is not a bare FHIR base URL (no ?query, no #fragment, no user@), or None.

    Queries are built as ``{base}/Type?...``: a base with its own query or fragment swallows
    every search into one URL (the medication list then reads as empty, and a critical card is
    missing without being reported), and user information is a credential in a URL.
    """
    if "?" in url:
        return "must be a bare base URL: remove the ?query"
    if "#" in url:
        return "must be a bare base URL: remove the #fragment"
    if "@" in urlsplit(url).netloc:
        return "must be a bare base URL: remove the user information (user@)"
    return None


def resolve_host(host: str, port: int) -> list[str]:
    """Resolve a host with the system resolver, as the HTTP client later will."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _non_public_reason(address: _IPAddress) -> str | None:
    """Name the reason an address is not public internet, or None if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64_WELL_KNOWN:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address in _NAT64_LOCAL_USE:
            return "NAT64 local-use"
        if embedded is not None:
            reason = _non_public_reason(embedded)
            return f"IPv6-embedded {reason}" if reason else None
    for reason, flagged in (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if flagged:
            return reason
    if not address.is_global:  # e.g. 100.64.0.0/10 carrier-grade NAT, 192.0.0.0/24
        return "non-global"
    return None


class FhirServerPolicy:
    """Decide which FHIR server URLs this service may send requests (and tokens) to."""

    def __init__(
        self,
        allowed_servers: Sequence[str] | None,
        *,
        resolver: Resolver = resolve_host,
    ) -> None:
        self._resolver = resolver
        self._allowed: tuple[_Origin, ...] | None = None
        if allowed_servers is not None:
            self._allowed = tuple(_parse_base(base) for base in allowed_servers)

    @property
    def uses_allowlist(self) -> bool:
        """True when an operator listed the allowed servers (the recommended production mode)."""
        return self._allowed is not None

    def check(self, url: str) -> None:
        """Raise ``FhirServerNotAllowed`` unless ``url`` may be contacted."""
        origin = _parse(url)
        if self._allowed is not None:
            if not any(base.contains(origin) for base in self._allowed):
                raise FhirServerNotAllowed(f"{origin.host} is not under an allowed FHIR server")
            return
        if origin.scheme != "https":
            raise FhirServerNotAllowed("FHIR server must use https")
        if origin.host == "localhost" or origin.host.endswith(".localhost"):
            raise FhirServerNotAllowed(f"{origin.host} is a loopback name")
        try:
            literal: _IPAddress | None = ipaddress.ip_address(origin.host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses: list[_IPAddress] = [literal]
        else:
            try:
                resolved = list(self._resolver(origin.host, origin.port))
            except OSError as exc:
                raise FhirServerNotAllowed(f"{origin.host} could not be resolved") from exc
            if not resolved:
                raise FhirServerNotAllowed(f"{origin.host} resolves to no address")
            try:
                addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolved]
            except ValueError as exc:
                raise FhirServerNotAllowed(f"{origin.host} resolved to a bad address") from exc
        for address in addresses:
            reason = _non_public_reason(address)
            if reason is not None:
                # The address itself stays out of the message: it would tell the caller how
                # names resolve inside our network.
                verb = "is" if literal is not None else "resolves to"
                raise FhirServerNotAllowed(f"{origin.host} {verb} a {reason} address")


def safe_next_link(base_url: str, next_url: str) -> bool:
    """True if a Bundle ``next`` link stays under ``base_url``, so the token goes nowhere else.

    Relative links are refused: FHIR servers send absolute ones, and refusing is the safe way.
    """
    try:
        return _parse(base_url).contains(_parse(next_url))
    except FhirServerNotAllowed:
        return False


def parse_allowed_servers(env_value: str | None) -> list[str] | None:
    """Parse ``CDS_FHIR_ALLOWED_SERVERS`` (comma-separated base URLs); empty or unset is None."""
    if env_value is None or not env_value.strip():
        return None
    servers = [item.strip() for item in env_value.split(",") if item.strip()]
    for server in servers:
        _parse_base(server)
    return servers


def _parse_base(base: str) -> _Origin:
    """Parse an allowlist entry; a bad one is a configuration error that should stop start-up."""
    try:
        origin = _parse(base)
    except FhirServerNotAllowed as exc:
        raise ValueError(f"allowed FHIR server {base!r} is not a usable base URL: {exc}") from exc
    parts = urlsplit(base)
    if parts.query or parts.fragment:
        raise ValueError(f"allowed FHIR server {base!r} must not have a ?query or #fragment")
    return origin
