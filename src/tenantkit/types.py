"""Plain values passed between the pipeline stages; none knows a web framework."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar

from .errors import ValidationError

T = TypeVar("T")

_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})

TENANT_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")

TenantStatus = Literal["active", "suspended"]
IdentitySource = Literal["header", "subdomain", "path", "jwt", "api_key", "system"]


def validate_tenant_id(value: object, *, field_name: str = "tenant_id") -> str:
    """Return ``value`` if it is a well-formed tenant id, else raise ``ValidationError``.

    A malformed id is never looked up: it cannot name a tenant.
    """
    if not isinstance(value, str) or TENANT_ID_PATTERN.fullmatch(value) is None:
        raise ValidationError(
            f"{field_name} must match {TENANT_ID_PATTERN.pattern}", field=field_name
        )
    return value


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling and for which tenant.

    ``authenticated`` is true when a credential (JWT, API key) proved it; a
    header, host or path alone never does.
    """

    tenant_id: str
    source: IdentitySource
    authenticated: bool = False
    subject: str | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    api_key_id: str | None = None
    api_key_rate_limit: int | None = None
    api_key_token_limit: int | None = None
    # Read-only: identities are cached and shared between requests.
    claims: Mapping[str, Any] = field(default_factory=lambda: _NO_CLAIMS)

    def __post_init__(self) -> None:
        if not isinstance(self.claims, MappingProxyType):
            object.__setattr__(self, "claims", MappingProxyType(dict(self.claims)))

    def has_role(self, role: str) -> bool:
        """Return whether the caller holds ``role``."""
        return role in self.roles

    def has_scope(self, scope: str) -> bool:
        """Return whether the caller's credential grants ``scope``."""
        return scope in self.scopes

    @property
    def actor(self) -> str:
        """A short label for audit entries: ``api_key:<id>``, ``user:<sub>`` or the source."""
        if self.api_key_id is not None:
            return f"api_key:{self.api_key_id}"
        if self.subject is not None:
            return f"user:{self.subject}"
        return self.source


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """A tenant's configuration as the pipeline sees it (an immutable snapshot).

    ``allowed_models`` / ``allowed_tools``: ``None`` means unrestricted, an
    empty tuple means nothing is allowed.
    """

    id: str
    name: str
    status: TenantStatus = "active"
    plan: str = "free"
    quota_requests_per_minute: int | None = None
    quota_tokens_per_minute: int | None = None
    allowed_models: tuple[str, ...] | None = None
    allowed_tools: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    version: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def active(self) -> bool:
        """Return whether the tenant may make requests."""
        return self.status == "active"


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """A framework-neutral view of one request, built by an adapter.

    ``headers`` keys are lower-case; ``client`` is the peer address.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    client: str | None = None
    scheme: str = "http"
    query_string: str = ""
    request_id: str | None = None

    def header(self, name: str) -> str | None:
        """Return a header value by (case-insensitive) name."""
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True)
class Decision:
    """A rejection as a value: status, problem document and extra headers."""

    status: int
    problem: Mapping[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a cursor-paginated list; ``next_cursor`` is ``None`` on the last page."""

    items: list[T]
    next_cursor: str | None = None
