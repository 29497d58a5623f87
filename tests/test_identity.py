"""Identity: every resolver, the chain's mismatch rule, JWT attacks and build_chain."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from tenantkit.errors import (
    BadRequest,
    ConfigurationError,
    TenantMismatch,
    Unauthorized,
    ValidationError,
)
from tenantkit.identity import (
    RESOLVERS,
    APIKeyResolver,
    HeaderResolver,
    IdentityChain,
    JWTResolver,
    PathResolver,
    Resolver,
    SubdomainResolver,
    bearer_token,
    build_chain,
    encode_token,
)
from tenantkit.settings import JWTSettings, Settings
from tenantkit.types import Identity, RequestInfo

SECRET = "s" * 32
OTHER_SECRET = "o" * 32
NOW = 1_800_000_000.0
LIVE_KEY = "tk_live_" + "A" * 43
TEST_KEY = "tk_test_" + "B" * 43
BAD_TENANT_IDS = ["../x", "a" * 200, "a' OR 1=1--", "ACME", "a", "acme/../b", ""]


def req(path: str = "/", client: str | None = None, **headers: str) -> RequestInfo:
    """Build a request; ``x_api_key="..."`` becomes the ``x-api-key`` header."""
    lowered = {name.replace("_", "-").lower(): value for name, value in headers.items()}
    return RequestInfo(method="GET", path=path, headers=lowered, client=client)


def bearer(token: str) -> RequestInfo:
    return req(authorization=f"Bearer {token}")


@dataclass
class FakeClock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeKeys:
    """A fake ``verify`` for API keys: a dict of key → tenant, recording calls."""

    tenants: dict[str, str] = field(default_factory=lambda: {LIVE_KEY: "acme", TEST_KEY: "globex"})
    calls: list[str] = field(default_factory=list)

    def __call__(self, key: str) -> Identity:
        self.calls.append(key)
        if key not in self.tenants:
            raise Unauthorized("invalid API key")
        return Identity(
            tenant_id=self.tenants[key], source="api_key", authenticated=True, api_key_id="k1"
        )


def _pem_private(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _pem_public(key: Any) -> str:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()


# Generated once per module: RSA key generation is the slow part of this file.
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
WEAK_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _segment(data: Mapping[str, Any]) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")


def forge_hs256(secret: bytes, payload: Mapping[str, Any]) -> str:
    """Sign by hand, since pyjwt refuses a PEM as an HMAC secret (the confusion attack)."""
    signing_input = _segment({"alg": "HS256", "typ": "JWT"}) + b"." + _segment(payload)
    digest = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(digest).rstrip(b"=")).decode()


def unsigned(payload: Mapping[str, Any]) -> str:
    """An ``alg: none`` token."""
    return (_segment({"alg": "none", "typ": "JWT"}) + b"." + _segment(payload) + b".").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "u1", "tenant_id": "acme", "iat": int(NOW), "exp": NOW + 60}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


HS = JWTSettings(secret=SECRET)
HS_AUD_ISS = JWTSettings(secret=SECRET, audience="api", issuer="https://issuer.test")


def hs_resolver(settings: JWTSettings = HS, clock: FakeClock | None = None) -> JWTResolver:
    return JWTResolver(settings, clock=clock or FakeClock())


# --- header -----------------------------------------------------------------


def test_header_resolver_reads_the_tenant_header() -> None:
    """The header resolver returns an unauthenticated identity for a well-formed id."""
    found = HeaderResolver().resolve(req(x_tenant_id=" acme "))
    assert found == Identity(tenant_id="acme", source="header", authenticated=False)


@pytest.mark.parametrize("headers", [{}, {"x_tenant_id": ""}, {"x_tenant_id": "  "}])
def test_header_resolver_finds_nothing_without_a_value(headers: dict[str, str]) -> None:
    """An absent or blank tenant header names no tenant."""
    assert HeaderResolver().resolve(req(**headers)) is None


def test_header_resolver_honours_a_custom_header() -> None:
    """The header name is configurable and matched case-insensitively."""
    assert HeaderResolver("X-Org").resolve(req(x_org="globex")) is not None
    assert HeaderResolver("X-Org").resolve(req(x_tenant_id="globex")) is None


@pytest.mark.parametrize("value", BAD_TENANT_IDS[:-1])
def test_header_resolver_rejects_malformed_ids_with_400(value: str) -> None:
    """A malformed tenant header is a 400 problem, never a lookup."""
    with pytest.raises(BadRequest) as info:
        HeaderResolver().resolve(req(x_tenant_id=value))
    assert info.value.status == 400


# --- subdomain --------------------------------------------------------------

SUBDOMAIN_CASES = [
    ("acme.example.com", "acme"),
    ("ACME.Example.COM", "acme"),
    ("acme.example.com:8443", "acme"),
    ("acme.example.com.", "acme"),
    ("acme.example.com.:443", "acme"),
    ("acme.example.com.evil.io", None),
    ("evilexample.com", None),
    ("acme.evilexample.com", None),
    ("a.b.example.com", None),
    ("example.com", None),
    ("example.com:80", None),
    (".example.com", None),
    ("acme.example.org", None),
    ("[::1]:8000", None),
    ("10.0.0.1:80", None),
    ("", None),
]


@pytest.mark.parametrize(("host", "tenant"), SUBDOMAIN_CASES)
def test_subdomain_resolver_is_label_exact(host: str, tenant: str | None) -> None:
    """Only exactly one label left of the base domain names a tenant."""
    found = SubdomainResolver("example.com").resolve(req(host=host))
    assert (found.tenant_id if found else None) == tenant
    if found:
        assert found.source == "subdomain" and not found.authenticated


def test_subdomain_resolver_without_host_finds_nothing() -> None:
    """A request without a Host header names no tenant."""
    assert SubdomainResolver("example.com").resolve(req()) is None


@pytest.mark.parametrize("host", ["x_y.example.com", "-ab.example.com", "a.example.com"])
def test_subdomain_resolver_rejects_malformed_labels(host: str) -> None:
    """A single label that is no valid tenant id is a 400, never a lookup."""
    with pytest.raises(BadRequest):
        SubdomainResolver("example.com").resolve(req(host=host))


def test_subdomain_base_domain_is_normalised() -> None:
    """Case and surrounding dots in the configured base domain do not matter."""
    found = SubdomainResolver(" .Example.COM. ").resolve(req(host="acme.example.com"))
    assert found is not None and found.tenant_id == "acme"


@pytest.mark.parametrize("base", ["", ".", "example.com:80", "a..b", "https://example.com"])
def test_subdomain_refuses_a_bad_base_domain(base: str) -> None:
    """A base domain that is no domain name fails at construction."""
    with pytest.raises(ConfigurationError):
        SubdomainResolver(base)


FORWARDED_CASES = [
    # trusted proxies, peer address, X-Forwarded-Host, expected tenant
    ((), "10.0.0.1", "globex.example.com", "acme"),
    (("10.0.0.0/8",), "10.1.2.3", "globex.example.com", "globex"),
    (("10.0.0.0/8",), "192.168.1.1", "globex.example.com", "acme"),
    (("10.0.0.0/8",), None, "globex.example.com", "acme"),
    (("10.0.0.0/8",), "not-an-ip", "globex.example.com", "acme"),
    (("127.0.0.1",), "127.0.0.1", "globex.example.com", "globex"),
    (("127.0.0.1",), "::ffff:127.0.0.1", "globex.example.com", "globex"),
    (("::1",), "[::1]", "globex.example.com", "globex"),
    (("10.0.0.0/8",), "10.0.0.1", "evil.example.com, globex.example.com", "globex"),
    (("10.0.0.0/8",), "10.0.0.1", "", "acme"),
]


@pytest.mark.parametrize(("proxies", "client", "forwarded", "tenant"), FORWARDED_CASES)
def test_forwarded_host_counts_only_from_trusted_proxies(
    proxies: tuple[str, ...], client: str | None, forwarded: str, tenant: str
) -> None:
    """X-Forwarded-Host (its last value) replaces Host only when the peer is a trusted proxy."""
    resolver = SubdomainResolver("example.com", trusted_proxies=proxies)
    request = req(client=client, host="acme.example.com", x_forwarded_host=forwarded)
    found = resolver.resolve(request)
    assert found is not None and found.tenant_id == tenant


def test_subdomain_refuses_a_bad_trusted_proxy() -> None:
    """A trusted proxy that is no address or network fails at construction."""
    with pytest.raises(ConfigurationError):
        SubdomainResolver("example.com", trusted_proxies=["proxy.internal"])


# --- path -------------------------------------------------------------------

PATH_CASES = [
    ("/t", "/t/acme/users", ("acme", "/users")),
    ("/t", "/t/acme/users/7", ("acme", "/users/7")),
    ("/t", "/t/acme", ("acme", "/")),
    ("/t", "/t/acme/", ("acme", "/")),
    ("/t", "/tx/acme", None),
    ("/t", "/t", None),
    ("/t", "/t/", None),
    ("/t", "/t//acme", None),
    ("/t", "/", None),
    ("/t", "/api/t/acme", None),
    ("/t/", "/t/acme/users", ("acme", "/users")),
    ("/api/t", "/api/t/acme/x", ("acme", "/x")),
    ("/api/t", "/api/tenant/acme", None),
    ("/", "/acme/users", ("acme", "/users")),
]


@pytest.mark.parametrize(("prefix", "path", "parts"), PATH_CASES)
def test_path_resolver_matches_whole_segments(
    prefix: str, path: str, parts: tuple[str, str] | None
) -> None:
    """The prefix and the tenant are whole path segments; the rest is what the app sees."""
    resolver = PathResolver(prefix)
    assert resolver.split(path) == parts
    found = resolver.resolve(req(path))
    assert (found.tenant_id if found else None) == (parts[0] if parts else None)
    assert resolver.strip_prefix(path) == (parts[1] if parts else path)


@pytest.mark.parametrize("path", ["/t/../x", "/t/ACME/users", "/t/a'%20OR%201=1--/x"])
def test_path_resolver_rejects_malformed_segments(path: str) -> None:
    """A tenant segment that is no valid id is a 400."""
    with pytest.raises(BadRequest):
        PathResolver("/t").resolve(req(path))


@pytest.mark.parametrize("prefix", ["t", "//t", "/a//t"])
def test_path_resolver_refuses_a_bad_prefix(prefix: str) -> None:
    """A prefix must be an absolute path."""
    with pytest.raises(ConfigurationError):
        PathResolver(prefix)


# --- bearer parsing ---------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer\tabc", "abc"),
        ("", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", ""),
        ("Bearer ", ""),
    ],
)
def test_bearer_token_parsing(header: str | None, token: str | None) -> None:
    """Only the Bearer scheme (any case) yields a token."""
    request = req() if header is None else req(authorization=header)
    assert bearer_token(request) == token


# --- JWT --------------------------------------------------------------------


def test_jwt_resolver_returns_the_token_identity() -> None:
    """A valid HS256 token gives tenant, subject, roles, scopes and the claims."""
    token = encode_token(
        HS, tenant_id="acme", subject="u1", roles=["ADMIN"], scopes=["b", "a"], clock=FakeClock()
    )
    found = hs_resolver().resolve(bearer(token))
    assert found is not None
    assert (found.tenant_id, found.source, found.authenticated) == ("acme", "jwt", True)
    assert found.subject == "u1" and found.roles == {"ADMIN"} and found.scopes == {"a", "b"}
    assert found.claims["scope"] == "a b" and found.actor == "user:u1"


@pytest.mark.parametrize(
    ("role", "scope", "roles", "scopes"),
    [
        ("admin", "read write", {"admin"}, {"read", "write"}),
        (["admin", "member"], ["read", "write"], {"admin", "member"}, {"read", "write"}),
        (None, None, set(), set()),
        ([], "", set(), set()),
        ("", "  read  ", set(), {"read"}),
    ],
)
def test_jwt_roles_and_scopes_accept_strings_and_lists(
    role: Any, scope: Any, roles: set[str], scopes: set[str]
) -> None:
    """Roles are a string or list; scopes a space-separated string or list."""
    token = jwt.encode(claims(role=role, scope=scope), SECRET, algorithm="HS256")
    found = hs_resolver().resolve(bearer(token))
    assert found is not None and found.roles == roles and found.scopes == scopes


def test_jwt_claim_names_are_configurable() -> None:
    """tenant_claim, roles_claim and scopes_claim name the claims read."""
    settings = JWTSettings(secret=SECRET, tenant_claim="org", roles_claim="rl", scopes_claim="scp")
    payload = claims(tenant_id=None, org="globex", rl=["owner"], scp="x")
    found = hs_resolver(settings).resolve(bearer(jwt.encode(payload, SECRET, algorithm="HS256")))
    assert found is not None and found.tenant_id == "globex"
    assert found.roles == {"owner"} and found.scopes == {"x"}


@pytest.mark.parametrize(
    "request_",
    [req(), req(authorization="Basic dXNlcjpwYXNz"), bearer(LIVE_KEY), bearer(TEST_KEY)],
    ids=["none", "basic", "live-key", "test-key"],
)
def test_jwt_resolver_ignores_non_jwt_authorization(request_: RequestInfo) -> None:
    """No bearer, another scheme or an API-key-shaped bearer is not the JWT resolver's."""
    assert hs_resolver().resolve(request_) is None


def _tenant_token(tenant: str) -> Callable[[], str]:
    return lambda: jwt.encode(claims(tenant_id=tenant), SECRET, "HS256")


HS_REJECTIONS: list[tuple[str, Callable[[], str], str]] = [
    ("alg-none", lambda: unsigned(claims()), "token algorithm not allowed"),
    ("wrong-key", lambda: jwt.encode(claims(), OTHER_SECRET, "HS256"), "token signature invalid"),
    ("unpinned-alg", lambda: jwt.encode(claims(), SECRET * 2, "HS512"), "algorithm not allowed"),
    ("expired", lambda: jwt.encode(claims(exp=NOW - 1), SECRET, "HS256"), "token expired"),
    ("expires-now", lambda: jwt.encode(claims(exp=NOW), SECRET, "HS256"), "token expired"),
    ("missing-exp", lambda: jwt.encode(claims(exp=None), SECRET, "HS256"), "'exp' claim"),
    ("exp-string", lambda: jwt.encode(claims(exp=str(NOW + 60)), SECRET, "HS256"), "malformed"),
    ("exp-bool", lambda: jwt.encode(claims(exp=True), SECRET, "HS256"), "malformed"),
    ("nbf-future", lambda: jwt.encode(claims(nbf=NOW + 30), SECRET, "HS256"), "not yet valid"),
    ("iat-future", lambda: jwt.encode(claims(iat=NOW + 30), SECRET, "HS256"), "not yet valid"),
    ("no-tenant", lambda: jwt.encode(claims(tenant_id=None), SECRET, "HS256"), "'tenant_id'"),
    ("tenant-int", lambda: jwt.encode(claims(tenant_id=42), SECRET, "HS256"), "malformed"),
    ("sub-int", lambda: jwt.encode(claims(sub=7), SECRET, "HS256"), "subject"),
    ("role-int", lambda: jwt.encode(claims(role=3), SECRET, "HS256"), "'role' claim"),
    ("scope-mixed", lambda: jwt.encode(claims(scope=["a", 1]), SECRET, "HS256"), "'scope'"),
    ("garbage", lambda: "not-a-jwt", "malformed token"),
    ("three-dots", lambda: "a.b.c", "malformed token"),
    ("empty", lambda: "", "empty bearer token"),
    ("huge", lambda: "e" * 9000, "token too large"),
    ("tampered", lambda: _tamper(jwt.encode(claims(), SECRET, "HS256")), "signature invalid"),
    ("aud-unexpected", lambda: jwt.encode(claims(aud="x"), SECRET, "HS256"), "audience"),
] + [(f"tenant-{bad[:12]}", _tenant_token(bad), "claim is malformed") for bad in BAD_TENANT_IDS]


def _tamper(token: str) -> str:
    header, _, rest = token.partition(".")
    _, _, signature = rest.partition(".")
    return f"{header}.{_segment(claims(tenant_id='globex')).decode()}.{signature}"


@pytest.mark.parametrize(
    ("make", "reason"), [c[1:] for c in HS_REJECTIONS], ids=[c[0] for c in HS_REJECTIONS]
)
def test_jwt_rejections_are_401(make: Callable[[], str], reason: str) -> None:
    """Every defective token is a 401 with a short reason, never another exception."""
    with pytest.raises(Unauthorized) as info:
        hs_resolver().resolve(bearer(make()))
    assert info.value.status == 401 and reason in info.value.detail
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer ")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (claims(iss="https://issuer.test"), "'aud' claim"),
        (claims(aud="api"), "'iss' claim"),
        (claims(aud="other", iss="https://issuer.test"), "audience"),
        (claims(aud="api", iss="https://evil.test"), "issuer"),
    ],
)
def test_jwt_audience_and_issuer_are_checked_when_configured(
    payload: dict[str, Any], reason: str
) -> None:
    """A configured aud/iss must be present and equal."""
    token = jwt.encode(payload, SECRET, "HS256")
    with pytest.raises(Unauthorized, match=reason):
        hs_resolver(HS_AUD_ISS).resolve(bearer(token))


def test_jwt_with_configured_audience_and_issuer_passes() -> None:
    """A token carrying the configured aud (in a list) and iss is accepted."""
    token = jwt.encode(claims(aud=["other", "api"], iss="https://issuer.test"), SECRET, "HS256")
    assert hs_resolver(HS_AUD_ISS).resolve(bearer(token)) is not None


@pytest.mark.parametrize(("leeway", "accepted"), [(0, False), (5, False), (6, True), (10, True)])
def test_jwt_leeway_extends_expiry(leeway: int, accepted: bool) -> None:
    """leeway_seconds tolerates clock skew on exp, measured by the injected clock."""
    settings = JWTSettings(secret=SECRET, leeway_seconds=leeway)
    token = jwt.encode(claims(exp=NOW - 5), SECRET, "HS256")
    resolver = hs_resolver(settings)
    if accepted:
        assert resolver.resolve(bearer(token)) is not None
    else:
        with pytest.raises(Unauthorized, match="expired"):
            resolver.resolve(bearer(token))


def test_jwt_expiry_follows_the_clock() -> None:
    """The same token is valid until the clock passes exp."""
    clock = FakeClock()
    resolver = hs_resolver(clock=clock)
    token = encode_token(HS, tenant_id="acme", subject="u1", expires_in=60, clock=clock)
    assert resolver.resolve(bearer(token)) is not None
    clock.now += 61
    with pytest.raises(Unauthorized, match="expired"):
        resolver.resolve(bearer(token))


@given(st.text(max_size=300))
def test_jwt_resolver_never_raises_anything_but_unauthorized(token: str) -> None:
    """Arbitrary bearer text yields None or Unauthorized, never a 500."""
    with contextlib.suppress(Unauthorized):
        hs_resolver().resolve(req(authorization="Bearer " + token))


def rs_settings(key: Any, alg: str = "RS256", **kw: Any) -> JWTSettings:
    return JWTSettings(public_key=_pem_public(key), algorithms=(alg,), **kw)


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_rsa_happy_path(alg: str) -> None:
    """RS256/PS256 tokens signed by the private key verify with the public key."""
    settings = rs_settings(RSA_KEY, alg, audience="api")
    clock = FakeClock()
    token = encode_token(
        settings, tenant_id="acme", subject="u9", private_key=_pem_private(RSA_KEY), clock=clock
    )
    assert jwt.get_unverified_header(token)["alg"] == alg
    found = JWTResolver(settings, clock=clock).resolve(bearer(token))
    assert found is not None and (found.tenant_id, found.subject) == ("acme", "u9")


def test_es256_happy_path() -> None:
    """ES256 tokens verify with the P-256 public key."""
    settings = rs_settings(EC_KEY, "ES256")
    clock = FakeClock()
    token = encode_token(
        settings, tenant_id="globex", subject="u2", private_key=_pem_private(EC_KEY), clock=clock
    )
    found = JWTResolver(settings, clock=clock).resolve(bearer(token))
    assert found is not None and found.tenant_id == "globex"


def test_eddsa_happy_path() -> None:
    """EdDSA tokens verify with the Ed25519 public key."""
    key = ed25519.Ed25519PrivateKey.generate()
    settings = rs_settings(key, "EdDSA")
    token = encode_token(settings, tenant_id="acme", subject="u", private_key=_pem_private(key))
    assert JWTResolver(settings).resolve(bearer(token)) is not None


def test_hs_rs_key_confusion_is_refused() -> None:
    """An HS256 token whose secret is the RSA public key PEM never verifies."""
    settings = rs_settings(RSA_KEY)
    assert settings.public_key is not None
    forged = forge_hs256(settings.public_key.encode(), claims())
    with pytest.raises(Unauthorized, match="algorithm not allowed"):
        JWTResolver(settings, clock=FakeClock()).resolve(bearer(forged))


def test_rs256_token_from_another_key_is_refused() -> None:
    """A token signed by a key other than the configured one is 401."""
    token = jwt.encode(claims(), _pem_private(OTHER_RSA_KEY), "RS256")
    with pytest.raises(Unauthorized, match="signature invalid"):
        JWTResolver(rs_settings(RSA_KEY), clock=FakeClock()).resolve(bearer(token))


def test_rs256_alg_none_is_refused() -> None:
    """alg none is refused by a public-key verifier too."""
    with pytest.raises(Unauthorized):
        JWTResolver(rs_settings(RSA_KEY), clock=FakeClock()).resolve(bearer(unsigned(claims())))


CONFIG_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("hs-no-secret", {}, "needs jwt.secret"),
    ("rs-no-key", {"algorithms": ("RS256",), "secret": SECRET}, "needs jwt.public_key"),
    ("mixed-hs-rs", {"algorithms": ("HS256", "RS256"), "secret": SECRET}, "mix key families"),
    ("mixed-rs-es", {"algorithms": ("RS256", "ES256"), "public_key": _pem_public(RSA_KEY)}, "mix"),
    ("none", {"algorithms": ("none",), "secret": SECRET}, "unsupported"),
    ("unknown", {"algorithms": ("XS256",), "secret": SECRET}, "unsupported"),
    ("empty", {"algorithms": (), "secret": SECRET}, "at least one"),
    ("pem-as-secret", {"secret": _pem_public(RSA_KEY)}, "PEM/SSH key"),
    ("short-secret", {"secret": "short"}, "too weak"),
    ("weak-rsa", {"algorithms": ("RS256",), "public_key": _pem_public(WEAK_RSA_KEY)}, "too weak"),
    (
        "private-as-public",
        {"algorithms": ("RS256",), "public_key": _pem_private(RSA_KEY).decode()},
        "public RSA key",
    ),
    ("ec-for-rs", {"algorithms": ("RS256",), "public_key": _pem_public(EC_KEY)}, "usable RSA key"),
    ("garbage-pem", {"algorithms": ("ES256",), "public_key": "nope"}, "usable EC key"),
    ("negative-leeway", {"secret": SECRET, "leeway_seconds": -1}, "leeway"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"), [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS]
)
def test_jwt_resolver_refuses_bad_configuration(kwargs: dict[str, Any], message: str) -> None:
    """Mixed key families, missing, weak or misplaced keys fail at construction."""
    with pytest.raises(ConfigurationError, match=message):
        JWTResolver(JWTSettings(**kwargs))


# --- encode_token -----------------------------------------------------------


def test_encode_token_includes_configured_audience_and_issuer() -> None:
    """Issued tokens carry aud/iss and verify under the same Settings."""
    settings = Settings(jwt=HS_AUD_ISS)
    token = encode_token(settings, tenant_id="acme", subject="u1", roles=["a", "b"])
    payload = jwt.decode(token, SECRET, ["HS256"], audience="api")
    assert payload["aud"] == "api" and payload["iss"] == "https://issuer.test"
    assert payload["role"] == ["a", "b"] and payload["exp"] - payload["iat"] == 3600


@pytest.mark.parametrize(
    ("settings", "kwargs", "error"),
    [
        (HS, {"tenant_id": "../x"}, ValidationError),
        (HS, {"expires_in": 0}, ValidationError),
        (JWTSettings(secret=SECRET, tenant_claim="org"), {"org": "x"}, ValidationError),
        (HS, {"private_key": b"pem"}, ConfigurationError),
        (JWTSettings(secret=SECRET, algorithms=("RS256",)), {}, ConfigurationError),
    ],
)
def test_encode_token_refuses_bad_input(
    settings: JWTSettings, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """Bad tenant ids, lifetimes, claims and missing keys are refused when issuing."""
    args: dict[str, Any] = {"tenant_id": "acme", "subject": "u1", **kwargs}
    with pytest.raises(error):
        encode_token(settings, **args)


# --- API keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "verified"),
    [
        ({"x_api_key": LIVE_KEY}, [LIVE_KEY]),
        ({"x_api_key": f" {TEST_KEY} "}, [TEST_KEY]),
        ({"authorization": f"Bearer {LIVE_KEY}"}, [LIVE_KEY]),
        ({"authorization": f"Bearer {LIVE_KEY}", "x_api_key": LIVE_KEY}, [LIVE_KEY]),
        ({"authorization": "Bearer eyJhbGciOi.x.y"}, []),
        ({}, []),
    ],
)
def test_api_key_resolver_reads_header_or_bearer(
    headers: dict[str, str], verified: list[str]
) -> None:
    """X-API-Key or a tk_ bearer is verified once; a JWT bearer is left to the JWT resolver."""
    keys = FakeKeys()
    found = APIKeyResolver(keys).resolve(req(**headers))
    assert keys.calls == verified
    assert (found is not None) == bool(verified)


@pytest.mark.parametrize(
    "headers",
    [
        {"x_api_key": "tk_live_wrong"},
        {"x_api_key": ""},
        {"authorization": f"Bearer {LIVE_KEY}", "x_api_key": TEST_KEY},
    ],
)
def test_api_key_resolver_rejects_bad_keys(headers: dict[str, str]) -> None:
    """An unknown, empty or conflicting API key is 401."""
    with pytest.raises(Unauthorized):
        APIKeyResolver(FakeKeys()).resolve(req(**headers))


# --- the chain --------------------------------------------------------------


def credential_chain(*hints: Resolver, require: bool = True) -> IdentityChain:
    return IdentityChain(
        [APIKeyResolver(FakeKeys()), hs_resolver(), *hints], require_credential=require
    )


def hs_token(tenant: str) -> str:
    return encode_token(HS, tenant_id=tenant, subject="u1", clock=FakeClock())


MISMATCH_CASES: list[tuple[str, list[Resolver], dict[str, Any]]] = [
    ("header-resolver", [HeaderResolver()], {"x_tenant_id": "globex"}),
    ("header-without-resolver", [], {"x_tenant_id": "globex"}),
    ("malformed-header-without-resolver", [], {"x_tenant_id": "../x"}),
    ("subdomain", [SubdomainResolver("example.com")], {"host": "globex.example.com"}),
    ("path", [PathResolver("/t")], {"path": "/t/globex/users"}),
]


@pytest.mark.parametrize("credential", ["jwt", "api_key"])
@pytest.mark.parametrize(
    ("hints", "request_kw"), [c[1:] for c in MISMATCH_CASES], ids=[c[0] for c in MISMATCH_CASES]
)
def test_credential_for_a_with_hint_naming_b_is_403(
    credential: str, hints: list[Resolver], request_kw: dict[str, Any]
) -> None:
    """A header, host or path naming another tenant than the credential is TenantMismatch."""
    auth = {"authorization": f"Bearer {hs_token('acme')}"} if credential == "jwt" else {}
    auth |= {"x_api_key": LIVE_KEY} if credential == "api_key" else {}
    hint_kw = dict(request_kw)
    request = req(hint_kw.pop("path", "/"), **auth, **hint_kw)
    with pytest.raises(TenantMismatch) as info:
        credential_chain(*hints).resolve(request)
    problem = info.value.to_problem()
    assert problem["status"] == 403 and problem["type"].endswith("tenant-mismatch")
    assert problem["credential_tenant"] == "acme"


def test_hints_naming_the_credential_tenant_pass() -> None:
    """Hints that agree with the credential are fine; the credential is returned."""
    chain = credential_chain(HeaderResolver(), SubdomainResolver("example.com"), PathResolver())
    request = req(
        "/t/acme/users",
        authorization=f"Bearer {hs_token('acme')}",
        x_tenant_id="acme",
        host="acme.example.com",
    )
    found = chain.resolve(request)
    assert (found.source, found.authenticated, found.tenant_id) == ("jwt", True, "acme")


def test_jwt_and_api_key_for_one_tenant_return_the_first_in_order() -> None:
    """Both credentials are verified; the first resolver in the chain supplies the identity."""
    request = req(authorization=f"Bearer {hs_token('acme')}", x_api_key=LIVE_KEY)
    assert credential_chain().resolve(request).source == "api_key"
    jwt_first = IdentityChain([hs_resolver(), APIKeyResolver(FakeKeys())], require_credential=True)
    assert jwt_first.resolve(request).source == "jwt"


def test_jwt_and_api_key_for_different_tenants_is_403() -> None:
    """Two credentials naming different tenants are a mismatch."""
    request = req(authorization=f"Bearer {hs_token('globex')}", x_api_key=LIVE_KEY)
    with pytest.raises(TenantMismatch):
        credential_chain().resolve(request)


def test_an_invalid_second_credential_is_401_even_if_the_first_is_valid() -> None:
    """Every presented credential must verify."""
    request = req(authorization="Bearer not-a-jwt", x_api_key=LIVE_KEY)
    with pytest.raises(Unauthorized):
        credential_chain().resolve(request)


@pytest.mark.parametrize("require", [True, False])
def test_nothing_at_all_is_401(require: bool) -> None:
    """No credential and no hint is 401 missing credentials."""
    with pytest.raises(Unauthorized, match="missing credentials"):
        credential_chain(HeaderResolver(), require=require).resolve(req())


def test_hint_without_credential_is_401_when_a_credential_is_required() -> None:
    """A header alone never authenticates when credentials are required."""
    with pytest.raises(Unauthorized, match="missing credentials"):
        credential_chain(HeaderResolver()).resolve(req(x_tenant_id="acme"))


def test_hint_without_credential_gives_an_unauthenticated_identity() -> None:
    """In trusted-gateway mode the first hint names the tenant, unauthenticated."""
    chain = IdentityChain([HeaderResolver(), PathResolver()], require_credential=False)
    found = chain.resolve(req("/t/acme/x", x_tenant_id="acme"))
    assert (found.tenant_id, found.source, found.authenticated) == ("acme", "header", False)


def test_hints_disagreeing_without_credential_is_403() -> None:
    """Two hints naming different tenants are a mismatch, not a pick."""
    chain = IdentityChain([HeaderResolver(), PathResolver()], require_credential=False)
    with pytest.raises(TenantMismatch):
        chain.resolve(req("/t/globex/x", x_tenant_id="acme"))


def test_tenant_header_alone_is_ignored_without_the_header_resolver() -> None:
    """Without the header resolver X-Tenant-ID never names a tenant by itself."""
    chain = IdentityChain([PathResolver()], require_credential=False)
    with pytest.raises(Unauthorized):
        chain.resolve(req("/other", x_tenant_id="acme"))


def test_chain_checks_its_configured_tenant_header() -> None:
    """The mismatch check reads the chain's tenant_header, whatever its name."""
    chain = IdentityChain([hs_resolver()], require_credential=True, tenant_header="X-Org")
    token = hs_token("acme")
    assert chain.resolve(req(authorization=f"Bearer {token}", x_tenant_id="globex"))
    with pytest.raises(TenantMismatch):
        chain.resolve(req(authorization=f"Bearer {token}", x_org="globex"))


def test_chain_reraises_resolver_errors_unchanged() -> None:
    """A malformed hint is a 400 even next to a valid credential; nothing is swallowed."""
    request = req(authorization=f"Bearer {hs_token('acme')}", x_tenant_id="../x")
    with pytest.raises(BadRequest):
        credential_chain(HeaderResolver()).resolve(request)


def test_chain_needs_a_resolver() -> None:
    """An empty chain is a configuration error."""
    with pytest.raises(ConfigurationError):
        IdentityChain([], require_credential=True)


# --- build_chain ------------------------------------------------------------


def test_build_chain_follows_the_configured_order() -> None:
    """Short names map to resolver classes, in the configured order."""
    settings = Settings(
        resolvers=("jwt", "subdomain", "path", "api_key"),
        base_domain="example.com",
        path_prefix="/t",
        jwt=HS,
    )
    chain = build_chain(settings, verify_api_key=FakeKeys())
    assert [r.name for r in chain.resolvers] == ["jwt", "subdomain", "path", "api_key"]
    assert chain.require_credential and chain.tenant_header == "X-Tenant-ID"
    assert set(RESOLVERS) == {"api_key", "jwt", "header", "subdomain", "path"}


def test_build_chain_trusted_gateway_mode() -> None:
    """Header-only resolution works with trust_tenant_header and no required credential."""
    settings = Settings(
        resolvers=("header",),
        trust_tenant_header=True,
        require_credential=False,
        tenant_header="X-Org",
    )
    found = build_chain(settings, verify_api_key=None).resolve(req(x_org="acme"))
    assert (found.tenant_id, found.authenticated) == ("acme", False)


@pytest.mark.parametrize(
    ("changes", "verify", "message"),
    [
        ({"resolvers": ("api_key", "bogus")}, True, "unknown resolver"),
        ({"resolvers": ("api_key", "api_key")}, True, "twice"),
        ({"resolvers": ("api_key",)}, False, "verify_api_key"),
        ({"resolvers": ("jwt",)}, True, "needs jwt.secret"),
        ({"resolvers": ("jwt",), "jwt": JWTSettings(secret="short")}, True, "too weak"),
        ({"resolvers": ("path",), "path_prefix": "/t"}, True, "credential resolver"),
    ],
)
def test_build_chain_errors(changes: dict[str, Any], verify: bool, message: str) -> None:
    """Unknown names, duplicates and missing key material fail when the chain is built."""
    settings = Settings().replace(**changes)
    with pytest.raises(ConfigurationError, match=message):
        build_chain(settings, verify_api_key=FakeKeys() if verify else None)


@pytest.mark.parametrize(
    ("name", "message"),
    [("header", "trust_tenant_header"), ("subdomain", "base_domain"), ("path", "path_prefix")],
)
def test_hint_resolvers_refuse_settings_without_their_option(name: str, message: str) -> None:
    """Each hint resolver needs its own setting, even when Settings is bypassed."""
    with pytest.raises(ConfigurationError, match=message):
        RESOLVERS[name].from_settings(Settings(), verify_api_key=None)
