"""Tests for cds_service.fhir_policy: which fhirServer URLs may be contacted (SSRF guard)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cds_service.errors import FhirServerNotAllowed
from cds_service.fhir_policy import (
    FhirServerPolicy,
    parse_allowed_servers,
    safe_next_link,
)

EHR_BASE = "https://ehr.example.com/fhir/r4"
LOCAL_BASE = "http://127.0.0.1:8080/fhir"


def fixed_resolver(*addresses: str) -> Callable[[str, int], Iterable[str]]:
    """Resolve every host to the given addresses, so no test needs real DNS."""

    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


def failing_resolver(host: str, port: int) -> list[str]:
    """Stand in for a name that does not resolve (or a resolver that must not be used)."""
    raise OSError(f"cannot resolve {host}")


PUBLIC = fixed_resolver("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")


# --------------------------------------------------------------------------- allowlist mode


@pytest.fixture
def allowlist() -> FhirServerPolicy:
    """Policy with an https EHR and the local test FHIR server; DNS must never be consulted."""
    return FhirServerPolicy([EHR_BASE, LOCAL_BASE], resolver=failing_resolver)


@pytest.mark.parametrize(
    "url",
    [
        EHR_BASE,
        EHR_BASE + "/",
        "HTTPS://EHR.Example.COM/fhir/r4",
        "https://ehr.example.com:443/fhir/r4",
        "https://ehr.example.com./fhir/r4",
        EHR_BASE + "/Patient/123",
        EHR_BASE + "/Observation?patient=123&code=http://loinc.org|33914-3",
        LOCAL_BASE,
        LOCAL_BASE + "/MedicationRequest?patient=p1",
        "http://127.0.0.1:8080/fhir/",
    ],
    ids=[
        "exact",
        "trailing-slash",
        "case",
        "explicit-default-port",
        "trailing-dot-host",
        "resource",
        "search",
        "loopback-http",
        "loopback-search",
        "loopback-slash",
    ],
)
def test_allowlist_accepts_base_and_below(allowlist: FhirServerPolicy, url: str) -> None:
    """URLs equal to or under an allowed base pass, including http on loopback."""
    allowlist.check(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://ehr.example.com.evil.com/fhir/r4",
        "https://evil.com/ehr.example.com/fhir/r4",
        "https://ehr.example.com@evil.com/fhir/r4",
        "https://user:pw@ehr.example.com/fhir/r4",
        "https://ehr.example.com%40evil.com/fhir/r4",
        "https://ehr.example.com/fhir/r4-evil",
        "https://ehr.example.com/fhir/r",
        "https://ehr.example.com/fhir",
        "https://ehr.example.com/fhir/r4/../../admin",
        "https://ehr.example.com/fhir/r4/%2e%2e/%2E%2E/admin",
        "https://ehr.example.com/fhir/r4/..%2f..%2fadmin",
        "https://ehr.example.com\\@evil.com/fhir/r4",
        "https://ehr.example.com:8443/fhir/r4",
        "http://ehr.example.com/fhir/r4",
        "https://evil.com#@ehr.example.com/fhir/r4",
        "https://ehr.example.com/FHIR/r4",
        "http://127.0.0.1:8081/fhir",
        "http://localhost:8080/fhir",
        "ftp://ehr.example.com/fhir/r4",
        "/fhir/r4/Patient",
        "https://ehr.example.com/fhir/r4\n/Patient",
        "https://ehr.exämple.com/fhir/r4",
    ],
    ids=[
        "host-suffix-trick",
        "host-in-path",
        "userinfo-trick",
        "credentials",
        "encoded-at",
        "path-prefix-trick",
        "shorter-path",
        "parent-path",
        "dot-segments",
        "encoded-dot-segments",
        "encoded-slashes",
        "backslash",
        "other-port",
        "http-downgrade",
        "fragment-trick",
        "path-case",
        "loopback-other-port",
        "localhost-not-listed",
        "ftp",
        "relative",
        "newline",
        "non-ascii-host",
    ],
)
def test_allowlist_refuses_everything_else(allowlist: FhirServerPolicy, url: str) -> None:
    """Look-alike hosts, userinfo, path prefixes, dot segments and other ports are refused."""
    with pytest.raises(FhirServerNotAllowed):
        allowlist.check(url)


def test_allowlist_with_ipv6_loopback() -> None:
    """An IPv6 loopback base is matched in any spelling of the address."""
    policy = FhirServerPolicy(["http://[::1]:8080/fhir"], resolver=failing_resolver)

    policy.check("http://[0:0:0:0:0:0:0:1]:8080/fhir/Patient")
    with pytest.raises(FhirServerNotAllowed):
        policy.check("http://[::2]:8080/fhir/Patient")


@given(
    st.lists(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-_", min_size=1),
        max_size=5,
    )
)
def test_any_path_below_an_allowed_base_passes(segments: list[str]) -> None:
    """Property: every plain path below the base is allowed."""
    policy = FhirServerPolicy([EHR_BASE], resolver=failing_resolver)

    policy.check("/".join([EHR_BASE, *segments]))


@given(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True))
def test_any_lookalike_host_is_refused(label: str) -> None:
    """Property: prefixing or suffixing the allowed host with a label never matches it."""
    policy = FhirServerPolicy([EHR_BASE], resolver=failing_resolver)

    for host in (f"ehr.example.com.{label}", f"{label}.ehr.example.com", f"{label}ehr.example.com"):
        with pytest.raises(FhirServerNotAllowed):
            policy.check(f"https://{host}/fhir/r4")


@pytest.mark.parametrize(
    "base",
    [
        "ehr.example.com/fhir",
        "https://",
        "https://user@ehr.example.com/fhir",
        "https://ehr.example.com/fhir?_format=json",
        "https://ehr.example.com:99999/fhir",
    ],
    ids=["no-scheme", "no-host", "userinfo", "query", "bad-port"],
)
def test_bad_allowlist_entry_is_a_config_error(base: str) -> None:
    """An unusable allowlist entry stops start-up with a ValueError naming it."""
    with pytest.raises(ValueError, match="allowed FHIR server"):
        FhirServerPolicy([base])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="unset"),
        pytest.param("", None, id="empty"),
        pytest.param("  ", None, id="blank"),
        pytest.param(f"{EHR_BASE}, {LOCAL_BASE},", [EHR_BASE, LOCAL_BASE], id="comma-separated"),
    ],
)
def test_parse_allowed_servers(value: str | None, expected: list[str] | None) -> None:
    """CDS_FHIR_ALLOWED_SERVERS is comma-separated; unset or empty means no allowlist."""
    assert parse_allowed_servers(value) == expected


def test_parse_allowed_servers_rejects_bad_entry() -> None:
    """A bad entry in CDS_FHIR_ALLOWED_SERVERS is reported, not silently dropped."""
    with pytest.raises(ValueError, match="ftp://ehr"):
        parse_allowed_servers(f"{EHR_BASE},ftp://ehr.example.com/fhir")


# --------------------------------------------------------------------------- no allowlist


@pytest.fixture
def open_policy() -> FhirServerPolicy:
    """Policy without allowlist; hostnames resolve to public addresses unless a test says not."""
    return FhirServerPolicy(None, resolver=PUBLIC)


def test_default_mode_accepts_public_https_host(open_policy: FhirServerPolicy) -> None:
    """An https host that resolves only to public addresses is allowed."""
    assert not open_policy.uses_allowlist
    open_policy.check("https://fhir.public-ehr.example/r4/Patient/1")


@pytest.mark.parametrize(
    "url",
    ["https://93.184.215.14/fhir", "https://[2606:4700:4700::1111]/fhir"],
    ids=["ipv4", "ipv6"],
)
def test_default_mode_accepts_public_ip_literal(open_policy: FhirServerPolicy, url: str) -> None:
    """Public IP literals are allowed without consulting DNS."""
    open_policy.check(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://fhir.public-ehr.example/r4", "https"),
        ("https://127.0.0.1/fhir", "loopback"),
        ("https://127.1.2.3:8443/fhir", "loopback"),
        ("https://localhost/fhir", "loopback"),
        ("https://api.localhost/fhir", "loopback"),
        ("https://10.0.0.5/fhir", "private"),
        ("https://172.16.0.1/fhir", "private"),
        ("https://172.31.255.254/fhir", "private"),
        ("https://192.168.1.10/fhir", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[::1]/fhir", "loopback"),
        ("https://[::ffff:127.0.0.1]/fhir", "loopback"),
        ("https://[::ffff:10.0.0.1]/fhir", "private"),
        ("https://[::ffff:169.254.169.254]/fhir", "link-local"),
        ("https://100.64.0.1/fhir", "non-global"),
        ("https://100.127.255.254/fhir", "non-global"),
        ("https://0.0.0.0/fhir", "unspecified"),
        ("https://[::]/fhir", "unspecified"),
        ("https://224.0.0.1/fhir", "multicast"),
        ("https://240.0.0.1/fhir", "reserved"),
        ("https://[fe80::1]/fhir", "link-local"),
        ("https://[fc00::1]/fhir", "private"),
        ("https://[64:ff9b::a00:1]/fhir", "private"),
        ("https://[2002:a00:1::]/fhir", "private"),
    ],
    ids=[
        "http",
        "127.0.0.1",
        "127-block",
        "localhost",
        "dot-localhost",
        "10.x",
        "172.16.x",
        "172.31.x",
        "192.168.x",
        "cloud-metadata",
        "::1",
        "mapped-loopback",
        "mapped-private",
        "mapped-metadata",
        "cgnat-100.64",
        "cgnat-top",
        "unspecified-v4",
        "unspecified-v6",
        "multicast",
        "reserved-240",
        "ipv6-link-local",
        "ipv6-unique-local",
        "nat64-of-10.x",
        "6to4-of-10.x",
    ],
)
def test_default_mode_refuses_non_public(
    open_policy: FhirServerPolicy, url: str, reason: str
) -> None:
    """Without an allowlist, http and every non-public address are refused, with the reason."""
    with pytest.raises(FhirServerNotAllowed, match=reason):
        open_policy.check(url)


@pytest.mark.parametrize(
    "addresses",
    [
        ("10.1.2.3",),
        ("93.184.215.14", "192.168.0.7"),
        ("::ffff:127.0.0.1",),
        ("fe80::1%eth0",),
        ("100.64.12.1",),
    ],
    ids=["private", "one-of-several-private", "mapped-loopback", "scoped-link-local", "cgnat"],
)
def test_hostname_resolving_to_non_public_refused(addresses: tuple[str, ...]) -> None:
    """A public-looking name is refused if any of its addresses is not public."""
    policy = FhirServerPolicy(None, resolver=fixed_resolver(*addresses))

    with pytest.raises(FhirServerNotAllowed, match=r"fhir\.rebind\.example resolves to") as caught:
        policy.check("https://fhir.rebind.example/r4")
    assert all(address not in str(caught.value) for address in addresses)


@pytest.mark.parametrize(
    ("resolver", "match"),
    [(failing_resolver, "could not be resolved"), (fixed_resolver(), "no address")],
    ids=["nxdomain", "empty"],
)
def test_unresolvable_host_refused(
    resolver: Callable[[str, int], Iterable[str]], match: str
) -> None:
    """A name that does not resolve is refused rather than tried."""
    with pytest.raises(FhirServerNotAllowed, match=match):
        FhirServerPolicy(None, resolver=resolver).check("https://nowhere.example/fhir")


def test_resolver_gets_host_and_effective_port() -> None:
    """The resolver sees the normalised host and the port the client will connect to."""
    seen: list[tuple[str, int]] = []

    def recording(host: str, port: int) -> list[str]:
        seen.append((host, port))
        return ["93.184.215.14"]

    FhirServerPolicy(None, resolver=recording).check("https://FHIR.Example.org:8443/r4")
    FhirServerPolicy(None, resolver=recording).check("https://fhir.example.org/r4")

    assert seen == [("fhir.example.org", 8443), ("fhir.example.org", 443)]


def test_default_resolver_refuses_numeric_loopback_spelling() -> None:
    """The system resolver turns '2130706433' into 127.0.0.1, which is refused (no DNS used)."""
    with pytest.raises(FhirServerNotAllowed, match="loopback"):
        FhirServerPolicy(None).check("https://2130706433/fhir")


# --------------------------------------------------------------------------- paging links


@pytest.mark.parametrize(
    ("next_url", "safe"),
    [
        (EHR_BASE + "/Observation?patient=1&_getpages=abc&_page=2", True),
        (EHR_BASE + "?_getpages=abc", True),
        ("https://EHR.example.com:443/fhir/r4/Observation?page=2", True),
        ("https://other.example.com/fhir/r4/Observation?page=2", False),
        ("https://ehr.example.com.evil.com/fhir/r4/Observation", False),
        ("http://ehr.example.com/fhir/r4/Observation?page=2", False),
        ("https://ehr.example.com:8443/fhir/r4/Observation", False),
        ("https://ehr.example.com/fhir/r4-other/Observation", False),
        ("https://ehr.example.com/admin?page=2", False),
        ("https://ehr.example.com/fhir/r4/../../admin", False),
        ("https://ehr.example.com@evil.com/fhir/r4/Observation", False),
        ("/fhir/r4/Observation?page=2", False),
        ("", False),
    ],
    ids=[
        "same-base",
        "base-with-query",
        "spelled-differently",
        "other-host",
        "lookalike-host",
        "http-downgrade",
        "other-port",
        "sibling-path",
        "outside-base",
        "dot-segments",
        "userinfo",
        "relative",
        "empty",
    ],
)
def test_safe_next_link(next_url: str, safe: bool) -> None:
    """A Bundle next link is followed only if it stays under the fhirServer base."""
    assert safe_next_link(EHR_BASE, next_url) is safe


def test_safe_next_link_with_bad_base() -> None:
    """A base that is not itself a usable URL makes every next link unsafe."""
    assert safe_next_link("not a url", EHR_BASE) is False
