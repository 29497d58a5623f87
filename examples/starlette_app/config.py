"""The app's configuration, read once from the environment.

=============================  ==========================================================
``APP_ADDR``                   ``host:port`` to listen on (``127.0.0.1:8080``)
``DATABASE_URL``               SQLAlchemy URL (``sqlite:///starlette_app.db``)
``QUOTA_STORAGE_URI``          ``memory://`` or ``redis://host:port/db``
``QUOTA_ON_FAILURE``           ``fail_closed`` (503 when Redis is down) or ``fail_open``
``QUOTA_TIMEOUT_SECONDS``      how long a quota call waits for Redis before it counts as down (0.05)
``ADMIN_TOKEN``                bearer token of the ``/admin`` routes (generated if unset)
``JWT_SECRET``                 HS256 key of the access tokens (generated if unset)
``API_KEY_SECRET``             key hashing API keys (derived from ``JWT_SECRET`` if unset)
``TRUST_TENANT_HEADER``        ``1``: accept a bare ``X-Tenant-ID`` (behind a trusted gateway)
``ACCESS_TOKEN_TTL``           access-token lifetime in seconds (900)
``LOGIN_ATTEMPTS_PER_MINUTE``  login attempts per tenant and email (10; 10x that per client)
``SIGNUPS_PER_MINUTE``         onboardings per client address (10)
``ARGON2_MEMORY_KIB``          argon2id memory per hash in KiB (65536)
``ARGON2_TIME_COST``           argon2id passes (3)
``MAX_BODY_BYTES``             request body limit (1048576)
``OUTBOX_MAX_ATTEMPTS``        handler attempts before an event is dead-lettered (5)
``OUTBOX_BACKOFF_SECONDS``     first retry delay, doubled per attempt (1.0)
``OUTBOX_POLL_SECONDS``        how often the worker looks for due work (1.0)
``OUTBOX_WORKER``              ``0``: this process only writes events (another one handles them)
``DATABASE_APP_ROLE``          PostgreSQL: the non-owner role that row-level security binds
``QUOTA_KEY_PREFIX``           prefix of the Redis keys (``tenantkit``)
``CACHE_TTL_SECONDS``          how long a process caches tenant configs and API keys (30);
                               with redis:// quotas, admin changes reach every process at
                               once over pub/sub, and the TTL bounds a missed message
=============================  ==========================================================
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from tenantkit.settings import CacheSettings, JWTSettings, QuotaSettings, Settings

FailureMode = Literal["fail_closed", "fail_open"]

#: Paths outside the tenant pipeline: public, or authenticated by the app itself.
PUBLIC_PATHS = ("/", "/health", "/openapi.json", "/admin", "/onboarding", "/auth")
POLICY_PATHS = ("/api/chat/completions",)


class ConfigError(ValueError):
    """An environment variable has a value the app cannot use."""


@dataclass(frozen=True, kw_only=True)
class AppConfig:
    """Everything the app reads from its environment."""

    addr: str = "127.0.0.1:8080"
    database_url: str = "sqlite:///starlette_app.db"
    quota_storage_uri: str = "memory://"
    quota_on_failure: FailureMode = "fail_closed"
    quota_timeout_seconds: float = 0.05
    admin_token: str
    jwt_secret: str
    api_key_secret: str
    trust_tenant_header: bool = False
    access_token_ttl: int = 900
    login_attempts_per_minute: int = 10
    signups_per_minute: int = 10
    argon2_memory_kib: int = 65_536
    argon2_time_cost: int = 3
    max_body_bytes: int = 1_048_576
    outbox_max_attempts: int = 5
    outbox_backoff_seconds: float = 1.0
    outbox_poll_seconds: float = 1.0
    outbox_worker: bool = True
    database_app_role: str | None = None
    quota_key_prefix: str = "tenantkit"
    cache_ttl_seconds: float = 30.0
    default_requests_per_minute: int = 600
    default_tokens_per_minute: int = 100_000
    generated: tuple[str, ...] = field(default=())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AppConfig:
        """Read the configuration; generate ``ADMIN_TOKEN``/``JWT_SECRET`` when unset."""
        env = os.environ if environ is None else environ
        generated: list[str] = []

        def secret(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                generated.append(name)
                value = secrets.token_urlsafe(32)
            return value

        admin_token = secret("ADMIN_TOKEN")
        jwt_secret = secret("JWT_SECRET")
        api_key_secret = env.get("API_KEY_SECRET", "").strip() or _derive(jwt_secret, "api-keys")
        on_failure = env.get("QUOTA_ON_FAILURE", "fail_closed")
        if on_failure not in ("fail_closed", "fail_open"):
            raise ConfigError("QUOTA_ON_FAILURE must be fail_closed or fail_open")
        return cls(
            addr=env.get("APP_ADDR", "127.0.0.1:8080"),
            database_url=env.get("DATABASE_URL", "sqlite:///starlette_app.db"),
            quota_storage_uri=env.get("QUOTA_STORAGE_URI", "memory://"),
            quota_on_failure="fail_open" if on_failure == "fail_open" else "fail_closed",
            quota_timeout_seconds=_float(env, "QUOTA_TIMEOUT_SECONDS", 0.05),
            admin_token=admin_token,
            jwt_secret=jwt_secret,
            api_key_secret=api_key_secret,
            trust_tenant_header=_bool(env, "TRUST_TENANT_HEADER"),
            access_token_ttl=_int(env, "ACCESS_TOKEN_TTL", 900),
            login_attempts_per_minute=_int(env, "LOGIN_ATTEMPTS_PER_MINUTE", 10),
            signups_per_minute=_int(env, "SIGNUPS_PER_MINUTE", 10),
            argon2_memory_kib=_int(env, "ARGON2_MEMORY_KIB", 65_536),
            argon2_time_cost=_int(env, "ARGON2_TIME_COST", 3),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 1_048_576),
            outbox_max_attempts=_int(env, "OUTBOX_MAX_ATTEMPTS", 5),
            outbox_backoff_seconds=_float(env, "OUTBOX_BACKOFF_SECONDS", 1.0),
            outbox_poll_seconds=_float(env, "OUTBOX_POLL_SECONDS", 1.0),
            outbox_worker=_bool(env, "OUTBOX_WORKER", default=True),
            database_app_role=_role(env.get("DATABASE_APP_ROLE", "")),
            quota_key_prefix=env.get("QUOTA_KEY_PREFIX", "").strip() or "tenantkit",
            cache_ttl_seconds=_float(env, "CACHE_TTL_SECONDS", 30.0),
            generated=tuple(generated),
        )

    @property
    def host(self) -> str:
        """The host part of ``addr``."""
        return self.addr.rpartition(":")[0] or "127.0.0.1"

    @property
    def port(self) -> int:
        """The port part of ``addr``."""
        port = self.addr.rpartition(":")[2]
        if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"APP_ADDR must be host:port, not {self.addr!r}")
        return int(port)

    def settings(self) -> Settings:
        """Return the tenantkit settings of this app's pipeline."""
        resolvers: tuple[Literal["api_key", "jwt", "header"], ...] = ("api_key", "jwt")
        if self.trust_tenant_header:
            resolvers = ("api_key", "jwt", "header")
        return Settings(
            database_url=self.database_url,
            resolvers=resolvers,
            require_credential=not self.trust_tenant_header,
            trust_tenant_header=self.trust_tenant_header,
            api_key_secret=self.api_key_secret,
            exclude_paths=PUBLIC_PATHS,
            policy_paths=POLICY_PATHS,
            max_body_bytes=self.max_body_bytes,
            jwt=JWTSettings(secret=self.jwt_secret),
            cache=CacheSettings(ttl_seconds=self.cache_ttl_seconds),
            quota=QuotaSettings(
                storage_uri=self.quota_storage_uri,
                on_failure=self.quota_on_failure,
                timeout_seconds=self.quota_timeout_seconds,
            ),
        )


def _derive(secret: str, purpose: str) -> str:
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def _role(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    if re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value) is None:
        raise ConfigError("DATABASE_APP_ROLE must be a lower-case identifier")
    return value


def _bool(env: Mapping[str, str], name: str, *, default: bool = False) -> bool:
    value = env.get(name, "").strip().lower()
    if value == "":
        return default
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be 1 or 0, not {value!r}")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"{name} must be a positive integer, not {raw!r}")
    return int(raw)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{name} must be a positive number, not {raw!r}")
    return value
