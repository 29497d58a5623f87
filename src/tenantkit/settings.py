"""Settings: one frozen, typed, keyword-only object, from kwargs, the environment or Flask.

Keys are the field names upper-cased behind ``TENANTKIT_``; a group's fields
add the group's name: ``TENANTKIT_JWT_SECRET`` sets ``Settings.jwt.secret``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .errors import ConfigurationError

ENV_PREFIX = "TENANTKIT_"

ResolverName = Literal["api_key", "jwt", "header", "subdomain", "path"]
FailureMode = Literal["fail_closed", "fail_open"]


@dataclass(frozen=True, kw_only=True, slots=True)
class JWTSettings:
    """How bearer JWTs are verified.

    ``secret`` serves HS256; ``public_key`` (PEM) serves RS256/ES256. The
    algorithms are pinned: a token naming any other is refused.
    """

    secret: str | None = None
    public_key: str | None = None
    algorithms: tuple[str, ...] = ("HS256",)
    audience: str | None = None
    issuer: str | None = None
    tenant_claim: str = "tenant_id"
    roles_claim: str = "role"
    scopes_claim: str = "scope"
    leeway_seconds: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheSettings:
    """The tenant-config and API-key read cache (TTL + LRU, versioned, single-flight)."""

    ttl_seconds: float = 30.0
    maxsize: int = 10_000
    negative_ttl_seconds: float = 5.0

    def __post_init__(self) -> None:
        # 0 turns the cache off, as documented; a negative or NaN value did so silently.
        for name in ("ttl_seconds", "negative_ttl_seconds", "maxsize"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(
                    f"cache.{name} (TENANTKIT_CACHE_{name.upper()}) must be a number"
                )
            if not (0 <= value < math.inf) or (name == "maxsize" and value != int(value)):
                raise ConfigurationError(
                    f"cache.{name} (TENANTKIT_CACHE_{name.upper()}) must be a finite number of "
                    "at least 0 (0 turns the cache off)" + (", whole" if name == "maxsize" else "")
                )


@dataclass(frozen=True, kw_only=True, slots=True)
class QuotaSettings:
    """Where counters live and what happens when that storage fails."""

    storage_uri: str = "memory://"
    on_failure: FailureMode = "fail_closed"
    timeout_seconds: float = 0.05
    burst_seconds: float = 0.0
    default_token_estimate: int = 1000
    token_header: str = "X-TenantKit-Tokens-Used"
    openai_headers: bool = False
    legacy_headers: bool = False
    reservation_ttl_seconds: int = 120
    key_prefix: str = "tenantkit"
    max_keys: int = 1_000_000
    redis_max_connections: int = 16

    def __post_init__(self) -> None:
        # 0 would make redis-py's blocking pool fill an unbounded queue: start-up hangs.
        if (
            isinstance(self.redis_max_connections, bool)
            or not isinstance(self.redis_max_connections, int)
            or self.redis_max_connections < 1
        ):
            raise ConfigurationError(
                "quota.redis_max_connections (TENANTKIT_QUOTA_REDIS_MAX_CONNECTIONS) "
                "must be a whole number of at least 1"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Everything a ``TenantKit`` is built from.

    ``resolvers`` runs in order; ``"header"`` is honoured only when
    ``trust_tenant_header`` is set (an app behind a trusted gateway).
    ``exclude_paths`` skip the pipeline (matched by whole segments);
    ``policy_paths`` are the routes whose JSON body names a ``model`` and
    ``tools``: the allow-lists are checked and tokens reserved there.
    """

    database_url: str = "sqlite:///tenantkit.db"
    resolvers: tuple[ResolverName, ...] = ("api_key", "jwt")
    require_credential: bool = True
    trust_tenant_header: bool = False
    tenant_header: str = "X-Tenant-ID"
    base_domain: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    path_prefix: str | None = None
    api_key_secret: str | None = None
    api_key_environment: Literal["live", "test"] = "live"
    exclude_paths: tuple[str, ...] = ("/health", "/docs", "/openapi.json")
    policy_paths: tuple[str, ...] = ("/v1/chat/completions", "/api/chat/completions")
    max_body_bytes: int = 1_048_576
    request_id_header: str = "X-Request-ID"
    audit_retention_days: int = 90
    jwt: JWTSettings = field(default_factory=JWTSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    quota: QuotaSettings = field(default_factory=QuotaSettings)

    def __post_init__(self) -> None:
        for name in ("resolvers", "trusted_proxies", "exclude_paths", "policy_paths"):
            if isinstance(getattr(self, name), str):
                # A bare string would be read one character at a time: policy_paths
                # "/v1/chat" would check nothing but the root path.
                raise ConfigurationError(f"{name} must be a tuple of strings, not one string")
        if "header" in self.resolvers and not self.trust_tenant_header:
            raise ConfigurationError(
                "the 'header' resolver trusts X-Tenant-ID from anyone; enable it only "
                "behind a trusted gateway with trust_tenant_header=True"
            )
        if "subdomain" in self.resolvers and not self.base_domain:
            raise ConfigurationError("the 'subdomain' resolver needs base_domain")
        if "path" in self.resolvers and not self.path_prefix:
            raise ConfigurationError("the 'path' resolver needs path_prefix, e.g. '/t'")
        if self.max_body_bytes <= 0:
            raise ConfigurationError("max_body_bytes must be positive")
        for name, value in (
            ("tenant_header", self.tenant_header),
            ("request_id_header", self.request_id_header),
            ("quota.token_header", self.quota.token_header),
        ):
            if not isinstance(value, str) or _FIELD_NAME.fullmatch(value) is None:
                # An empty name matches no header; one with a newline splits a response.
                variable = "TENANTKIT_" + name.upper().replace(".", "_")
                raise ConfigurationError(f"{name} ({variable}) must be an HTTP header name")
        if isinstance(self.audit_retention_days, bool) or not (
            isinstance(self.audit_retention_days, int) and self.audit_retention_days >= 1
        ):
            raise ConfigurationError(
                "audit_retention_days (TENANTKIT_AUDIT_RETENTION_DAYS) must be at least 1"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``TENANTKIT_*`` variables; keyword arguments win."""
        return from_mapping(cls, os.environ if environ is None else environ, overrides)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any], **overrides: Any) -> Settings:
        """Build settings from a mapping with ``TENANTKIT_*`` keys (a Flask ``app.config``)."""
        return from_mapping(cls, config, overrides)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


T = TypeVar("T")
# RFC 9110's field-name: one or more token characters.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def from_mapping(cls: type[T], config: Mapping[str, Any], overrides: Mapping[str, Any]) -> T:
    """Build the dataclass ``cls`` from prefixed keys in ``config``, then ``overrides``."""
    return _build(cls, config, ENV_PREFIX, overrides)


def _build(cls: type[T], config: Mapping[str, Any], prefix: str, overrides: Mapping[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint = hints[f.name]
        key = prefix + f.name.upper()
        if f.name in overrides:
            kwargs[f.name] = overrides[f.name]
        elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, config, key + "_", {})
        elif key in config:
            kwargs[f.name] = _coerce(config[key], hint, key)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(str(exc)) from exc


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a config value (often a string from the environment) to ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or value == ""):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if not isinstance(value, str):
        return tuple(value) if origin is tuple and not isinstance(value, tuple) else value
    try:
        if hint is bool:
            return _parse_bool(value)
        if hint is int:
            return int(value)
        if hint is float:
            return float(value)
        if origin is tuple:
            return tuple(part.strip() for part in value.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigurationError(f"{key}: {exc}") from exc
    return value


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")
