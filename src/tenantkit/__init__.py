"""tenantkit: multi-tenant SaaS middleware for Flask and Starlette.

Adapters keep their own import paths (``tenantkit.asgi``, ``tenantkit.wsgi``,
``tenantkit.flask``) so Starlette users never import Flask.
"""

from importlib.metadata import PackageNotFoundError, version

from ._admission import Admission
from ._db import UTCDateTime, utcnow
from .apikeys import APIKey, APIKeyStore, IssuedKey
from .context import (
    TenantContext,
    bound_tenant,
    current_context,
    current_identity,
    current_tenant,
    current_tenant_id,
    get_context,
    no_tenant,
    report_tokens,
)
from .errors import (
    BadRequest,
    ConfigurationError,
    Conflict,
    CrossTenantError,
    Forbidden,
    HTTPError,
    NoTenantError,
    NotFound,
    PayloadTooLarge,
    PaymentRequired,
    PolicyDenied,
    QuotaExceeded,
    ServiceUnavailable,
    StorageError,
    TenantKitError,
    TenantMismatch,
    TenantNotFound,
    TenantSuspended,
    Unauthorized,
    UnprocessableEntity,
    UnsupportedMediaType,
    ValidationError,
)
from .identity import IdentityChain, build_chain, encode_token
from .kit import TenantKit
from .policy import Policy
from .quotas import Grant, Limit, QuotaEngine
from .scoping import (
    TenantScoped,
    UnscopedEvent,
    async_tenant_sessionmaker,
    install_scoping,
    is_admin,
    on_unscoped,
    system_identity,
    tenant_fk,
    tenant_key,
    tenant_sessionmaker,
    tenant_unique,
    unscoped,
)
from .settings import CacheSettings, JWTSettings, QuotaSettings, Settings
from .tenants import TenantStore
from .types import Decision, Identity, Page, RequestInfo, TenantConfig, validate_tenant_id

try:
    __version__ = version("tenantkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "APIKey",
    "APIKeyStore",
    "Admission",
    "BadRequest",
    "CacheSettings",
    "ConfigurationError",
    "Conflict",
    "CrossTenantError",
    "Decision",
    "Forbidden",
    "Grant",
    "HTTPError",
    "Identity",
    "IdentityChain",
    "IssuedKey",
    "JWTSettings",
    "Limit",
    "NoTenantError",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "PaymentRequired",
    "Policy",
    "PolicyDenied",
    "QuotaEngine",
    "QuotaExceeded",
    "QuotaSettings",
    "RequestInfo",
    "ServiceUnavailable",
    "Settings",
    "StorageError",
    "TenantConfig",
    "TenantContext",
    "TenantKit",
    "TenantKitError",
    "TenantMismatch",
    "TenantNotFound",
    "TenantScoped",
    "TenantStore",
    "TenantSuspended",
    "UTCDateTime",
    "Unauthorized",
    "UnprocessableEntity",
    "UnscopedEvent",
    "UnsupportedMediaType",
    "ValidationError",
    "__version__",
    "async_tenant_sessionmaker",
    "bound_tenant",
    "build_chain",
    "current_context",
    "current_identity",
    "current_tenant",
    "current_tenant_id",
    "encode_token",
    "get_context",
    "install_scoping",
    "is_admin",
    "no_tenant",
    "on_unscoped",
    "report_tokens",
    "system_identity",
    "tenant_fk",
    "tenant_key",
    "tenant_sessionmaker",
    "tenant_unique",
    "unscoped",
    "utcnow",
    "validate_tenant_id",
]
