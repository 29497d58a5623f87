"""The app's configuration, read once from the environment (or given by tests)."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_ADDR = "127.0.0.1:8081"
DEFAULT_DATABASE_URL = "sqlite:///flask_app.db"


@dataclass(frozen=True, kw_only=True)
class AppConfig:
    """Everything ``create_app`` needs; ``from_env`` reads the documented variables.

    Secrets left unset are generated (and printed once by ``__main__``):
    tokens signed with a generated ``JWT_SECRET`` stop working on restart.
    """

    database_url: str = DEFAULT_DATABASE_URL
    database_app_role: str = "tenantkit_flask_app"
    database_app_password: str | None = None
    quota_storage_uri: str = "memory://"
    quota_key_prefix: str = "tenantkit"
    jwt_secret: str = ""
    admin_token: str = ""
    api_key_secret: str = ""
    token_ttl_seconds: int = 3600
    invitation_ttl_seconds: int = 7 * 24 * 3600
    default_rate_limit: int = 1000
    sign_in_rate_limit: int = 10
    audit_retention_days: int = 90
    stripe_secret_key: str | None = None
    stripe_api_base: str | None = None
    stripe_webhook_secret: str | None = None
    plans_json: str | None = None
    fast_password_hashing: bool = False
    max_body_bytes: int = 1_048_576
    generated: tuple[str, ...] = field(default=())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> AppConfig:
        """Build the config from environment variables; keyword arguments win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var, kind in _VARIABLES:
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[name] = kind(raw)
            except ValueError:
                sys.exit(f"{var}={raw!r} is not a valid {kind.__name__}")
        values.update(overrides)
        return cls(**values).with_secrets()

    def with_secrets(self) -> AppConfig:
        """Return a copy with every unset secret generated, noting which were."""
        generated = list(self.generated)
        changes: dict[str, Any] = {}
        for name in ("jwt_secret", "admin_token", "api_key_secret", "stripe_webhook_secret"):
            if not getattr(self, name):
                changes[name] = secrets.token_urlsafe(32)
                generated.append(name)
        return replace(self, **changes, generated=tuple(generated)) if changes else self


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


_VARIABLES: tuple[tuple[str, str, Any], ...] = (
    ("database_url", "DATABASE_URL", str),
    ("database_app_role", "DATABASE_APP_ROLE", str),
    ("database_app_password", "DATABASE_APP_PASSWORD", str),
    ("quota_storage_uri", "QUOTA_STORAGE_URI", str),
    ("quota_key_prefix", "QUOTA_KEY_PREFIX", str),
    ("jwt_secret", "JWT_SECRET", str),
    ("admin_token", "ADMIN_TOKEN", str),
    ("api_key_secret", "API_KEY_SECRET", str),
    ("token_ttl_seconds", "TOKEN_TTL_SECONDS", int),
    ("invitation_ttl_seconds", "INVITATION_TTL_SECONDS", int),
    ("default_rate_limit", "DEFAULT_RATE_LIMIT", int),
    ("sign_in_rate_limit", "SIGN_IN_RATE_LIMIT", int),
    ("audit_retention_days", "AUDIT_RETENTION_DAYS", int),
    ("stripe_secret_key", "STRIPE_SECRET_KEY", str),
    ("stripe_api_base", "STRIPE_API_BASE", str),
    ("stripe_webhook_secret", "STRIPE_WEBHOOK_SECRET", str),
    ("plans_json", "TENANTKIT_PLANS", str),
    ("fast_password_hashing", "FAST_PASSWORD_HASHING", _bool),
    ("max_body_bytes", "MAX_BODY_BYTES", int),
)
