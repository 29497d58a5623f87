"""Resolve who is calling and for which tenant: a chain of small resolvers.

Credentials (``jwt``, ``api_key``) authenticate and fix the tenant; hints
(``header``, ``subdomain``, ``path``) only name one. A hint naming another
tenant than the credential is a 403 ``TenantMismatch``, never an override.
See docs/identity.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Protocol

from ._jwt import Clock, TokenVerifier, encode_token
from ._keyformat import KEY_PREFIXES as API_KEY_PREFIXES
from ._keyformat import looks_like_key as looks_like_api_key
from .errors import BadRequest, ConfigurationError, TenantMismatch, Unauthorized, ValidationError
from .settings import JWTSettings, Settings
from .types import Identity, IdentitySource, RequestInfo, validate_tenant_id

__all__ = [
    "API_KEY_PREFIXES",
    "RESOLVERS",
    "APIKeyResolver",
    "HeaderResolver",
    "IdentityChain",
    "JWTResolver",
    "PathResolver",
    "Resolver",
    "SubdomainResolver",
    "VerifyAPIKey",
    "bearer_token",
    "build_chain",
    "encode_token",
    "looks_like_api_key",
]

API_KEY_HEADER = "X-API-Key"
FORWARDED_HOST_HEADER = "X-Forwarded-Host"

VerifyAPIKey = Callable[[str], Identity]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Resolver(Protocol):
    """One way of finding the caller: ``None`` when it finds nothing.

    Raise ``Unauthorized`` for a credential that is present but invalid, and
    ``BadRequest`` for a hint that is present but malformed.
    """

    name: str

    def resolve(self, request: RequestInfo) -> Identity | None:
        """Return the identity this resolver finds in ``request``, or ``None``."""
        ...


def bearer_token(request: RequestInfo) -> str | None:
    """Return the token of an ``Authorization: Bearer`` header, ``None`` for any other scheme."""
    raw = request.header("authorization")
    if raw is None:
        return None
    parts = raw.split(maxsplit=1)
    if not parts or parts[0].lower() != "bearer":
        return None
    return parts[1].strip() if len(parts) > 1 else ""


# Hint identities by (tenant id, source): immutable, so built once instead of per request.
_HINTS: dict[tuple[str, str], Identity] = {}
_HINTS_MAX = 4096


def _hint(value: str, source: IdentitySource, where: str) -> Identity:
    key = (value, source)
    cached = _HINTS.get(key)
    if cached is not None:  # only well-formed ids are remembered
        return cached
    try:
        tenant_id = validate_tenant_id(value)
    except ValidationError as exc:
        raise BadRequest(f"the {where} does not name a valid tenant id", field=where) from exc
    identity = Identity(tenant_id=tenant_id, source=source)
    if len(_HINTS) < _HINTS_MAX:
        _HINTS[key] = identity
    return identity


class HeaderResolver:
    """Take the tenant from a header; unauthenticated, for apps behind a trusted gateway."""

    name = "header"

    def __init__(self, header: str = "X-Tenant-ID") -> None:
        self.header = header

    @classmethod
    def from_settings(cls, settings: Settings, *, verify_api_key: VerifyAPIKey | None) -> Resolver:
        """Build from ``settings``; refuses unless ``trust_tenant_header`` is set."""
        if not settings.trust_tenant_header:
            raise ConfigurationError("the 'header' resolver needs trust_tenant_header=True")
        return cls(settings.tenant_header)

    def resolve(self, request: RequestInfo) -> Identity | None:
        """Return the tenant the header names; ``BadRequest`` if it is malformed."""
        value = (request.header(self.header) or "").strip()
        return _hint(value, "header", f"{self.header} header") if value else None


class SubdomainResolver:
    """Take the tenant from the one label left of ``base_domain`` in the host.

    ``X-Forwarded-Host`` replaces ``Host`` only when the peer address is in
    ``trusted_proxies`` (addresses or CIDR networks); its last value counts,
    the one the nearest proxy wrote.
    """

    name = "subdomain"

    def __init__(self, base_domain: str, *, trusted_proxies: Sequence[str] = ()) -> None:
        base = base_domain.strip().strip(".").lower()
        if not base or any(c in base for c in ":/ ") or ".." in base:
            raise ConfigurationError(f"base_domain {base_domain!r} is not a domain name")
        self.base_domain = base
        self.trusted_proxies = tuple(_network(p) for p in trusted_proxies)

    @classmethod
    def from_settings(cls, settings: Settings, *, verify_api_key: VerifyAPIKey | None) -> Resolver:
        """Build from ``settings.base_domain`` and ``settings.trusted_proxies``."""
        if not settings.base_domain:
            raise ConfigurationError("the 'subdomain' resolver needs base_domain")
        return cls(settings.base_domain, trusted_proxies=settings.trusted_proxies)

    def host(self, request: RequestInfo) -> str | None:
        """Return the host the client asked for, honouring a trusted proxy's forwarded host."""
        host = request.header("host")
        forwarded = request.header(FORWARDED_HOST_HEADER)
        if forwarded and self._trusted(request.client):
            host = forwarded.split(",")[-1]
        return host.strip() if host else None

    def resolve(self, request: RequestInfo) -> Identity | None:
        """Return the tenant the subdomain names, ``None`` for any host that names none."""
        host = self.host(request)
        if not host or host.startswith("["):  # no host, or an IPv6 literal
            return None
        name, _, port = host.rpartition(":")
        if name and port.isdigit():
            host = name
        host = host.lower().rstrip(".")
        if not host.endswith("." + self.base_domain):
            return None
        label = host[: -len(self.base_domain) - 1]
        if not label or "." in label:
            return None
        return _hint(label, "subdomain", "host")

    def _trusted(self, client: str | None) -> bool:
        if not client or not self.trusted_proxies:
            return False
        try:
            address = ipaddress.ip_address(client.strip().strip("[]"))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted_proxies)


def _network(value: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ConfigurationError(f"trusted proxy {value!r} is not an IP address or CIDR") from exc


class PathResolver:
    """Take the tenant from the whole path segment after ``prefix``: ``/t/acme/users``."""

    name = "path"

    def __init__(self, prefix: str = "/t") -> None:
        stripped = prefix.strip().rstrip("/")
        if stripped and (not stripped.startswith("/") or "//" in stripped):
            raise ConfigurationError(f"path prefix {prefix!r} must look like '/t'")
        self.prefix = stripped

    @classmethod
    def from_settings(cls, settings: Settings, *, verify_api_key: VerifyAPIKey | None) -> Resolver:
        """Build from ``settings.path_prefix``."""
        if not settings.path_prefix:
            raise ConfigurationError("the 'path' resolver needs path_prefix, e.g. '/t'")
        return cls(settings.path_prefix)

    def split(self, path: str) -> tuple[str, str] | None:
        """Return ``(tenant segment, rest of the path)``, or ``None`` if the prefix is absent."""
        if self.prefix and not path.startswith(self.prefix + "/"):
            return None
        segment, sep, tail = path[len(self.prefix) + 1 :].partition("/")
        if not segment:
            return None
        return segment, "/" + tail if sep else "/"

    def strip_prefix(self, path: str) -> str:
        """Return ``path`` past the prefix and tenant: ``/t/acme/users`` → ``/users``."""
        parts = self.split(path)
        return path if parts is None else parts[1]

    def resolve(self, request: RequestInfo) -> Identity | None:
        """Return the tenant the path names; ``BadRequest`` if the segment is malformed."""
        parts = self.split(request.path)
        return None if parts is None else _hint(parts[0], "path", "path")


class JWTResolver:
    """Authenticate ``Authorization: Bearer <jwt>``; API-key-shaped bearers are left alone."""

    name = "jwt"

    def __init__(self, settings: JWTSettings, *, clock: Clock | None = None) -> None:
        self._verifier = TokenVerifier(settings, clock=clock)

    @classmethod
    def from_settings(cls, settings: Settings, *, verify_api_key: VerifyAPIKey | None) -> Resolver:
        """Build from ``settings.jwt``; ``ConfigurationError`` for missing or misused keys."""
        return cls(settings.jwt)

    def resolve(self, request: RequestInfo) -> Identity | None:
        """Return the identity the token proves; ``Unauthorized`` for a bad token."""
        token = bearer_token(request)
        if token is None or looks_like_api_key(token):
            return None
        if not token:
            raise Unauthorized("empty bearer token")
        return self._verifier.identity(token)


class APIKeyResolver:
    """Authenticate ``X-API-Key`` or ``Authorization: Bearer tk_...`` with ``verify``.

    ``verify(key)`` returns the key's identity or raises ``Unauthorized``.
    """

    name = "api_key"

    def __init__(self, verify: VerifyAPIKey) -> None:
        self._verify = verify

    @classmethod
    def from_settings(cls, settings: Settings, *, verify_api_key: VerifyAPIKey | None) -> Resolver:
        """Build around ``verify_api_key``, which the API-key store provides."""
        if verify_api_key is None:
            raise ConfigurationError("the 'api_key' resolver needs verify_api_key")
        return cls(verify_api_key)

    def resolve(self, request: RequestInfo) -> Identity | None:
        """Return the key's identity; ``Unauthorized`` for a bad, empty or conflicting key."""
        header = request.header(API_KEY_HEADER)
        bearer = bearer_token(request)
        if bearer is not None and not looks_like_api_key(bearer):
            bearer = None  # a JWT: the jwt resolver's business
        if header is None:
            if bearer is None:
                return None
            key = bearer
        else:
            key = header.strip()
            if bearer is not None and bearer != key:
                raise Unauthorized("two different API keys in one request")
        if not key:
            raise Unauthorized(f"empty {API_KEY_HEADER} header")
        return self._verify(key)


class IdentityChain:
    """Run resolvers in order and settle on one identity for the request.

    The first credential (an authenticated identity) fixes the tenant. Every
    other credential, every hint, and the ``tenant_header`` (even when no
    header resolver is configured) must name the same tenant, else
    ``TenantMismatch``. Without a credential, ``require_credential`` gives 401;
    otherwise the hints, which must agree, give an unauthenticated identity.
    """

    def __init__(
        self,
        resolvers: Sequence[Resolver],
        *,
        require_credential: bool,
        tenant_header: str = "X-Tenant-ID",
    ) -> None:
        if not resolvers:
            raise ConfigurationError("an identity chain needs at least one resolver")
        self.resolvers = tuple(resolvers)
        self.require_credential = require_credential
        self.tenant_header = tenant_header

    def resolve(self, request: RequestInfo) -> Identity:
        """Return the identity; ``Unauthorized``, ``TenantMismatch`` or ``BadRequest`` if none."""
        credential: Identity | None = None
        hints: list[Identity] = []
        for resolver in self.resolvers:
            found = resolver.resolve(request)
            if found is None:
                continue
            if not found.authenticated:
                hints.append(found)
            elif credential is None:
                credential = found
            elif found.tenant_id != credential.tenant_id:
                raise _mismatch(credential, found.source)
        if credential is not None:
            for hint in hints:
                if hint.tenant_id != credential.tenant_id:
                    raise _mismatch(credential, hint.source)
            named = (request.header(self.tenant_header) or "").strip()
            if named and named != credential.tenant_id:
                raise _mismatch(credential, f"{self.tenant_header} header")
            return credential
        if self.require_credential or not hints:
            raise Unauthorized("missing credentials")
        for hint in hints[1:]:
            if hint.tenant_id != hints[0].tenant_id:
                raise TenantMismatch(
                    f"the {hints[0].source} and the {hint.source} name different tenants"
                )
        return hints[0]


def _mismatch(credential: Identity, source: str) -> TenantMismatch:
    return TenantMismatch(
        f"the {credential.source} credential is for another tenant than the {source} names",
        credential_tenant=credential.tenant_id,
    )


class ResolverFactory(Protocol):
    """A resolver class that builds itself from settings (every entry of ``RESOLVERS``)."""

    def from_settings(
        self, settings: Settings, *, verify_api_key: VerifyAPIKey | None
    ) -> Resolver: ...


#: Short names in ``Settings.resolvers`` → resolver classes. Add entries to plug in your own.
RESOLVERS: dict[str, ResolverFactory] = {
    "api_key": APIKeyResolver,
    "jwt": JWTResolver,
    "header": HeaderResolver,
    "subdomain": SubdomainResolver,
    "path": PathResolver,
}
CREDENTIAL_RESOLVERS = frozenset({"api_key", "jwt"})


def build_chain(settings: Settings, *, verify_api_key: VerifyAPIKey | None) -> IdentityChain:
    """Build the chain ``settings.resolvers`` names, in that order."""
    names = tuple(settings.resolvers)
    unknown = [name for name in names if name not in RESOLVERS]
    if unknown:
        raise ConfigurationError(f"unknown resolver(s) {unknown}; choose from {sorted(RESOLVERS)}")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"resolvers {list(names)} name one resolver twice")
    if settings.require_credential and not CREDENTIAL_RESOLVERS & set(names):
        raise ConfigurationError(
            "require_credential needs a credential resolver ('api_key' or 'jwt'); "
            "header-only resolution needs require_credential=False and trust_tenant_header=True"
        )
    resolvers = [
        RESOLVERS[name].from_settings(settings, verify_api_key=verify_api_key) for name in names
    ]
    return IdentityChain(
        resolvers,
        require_credential=settings.require_credential,
        tenant_header=settings.tenant_header,
    )
