"""Exceptions raised by tenantkit.

The tree::

    TenantKitError
    ├── ConfigurationError (ValueError)        bad settings, bad wiring
    ├── ValidationError (ValueError)           a value fails a rule (tenant id, field)
    ├── NoTenantError (LookupError)            no tenant in context (fail closed)
    ├── CrossTenantError                       an object or statement of another tenant
    ├── StorageError                           a backing store failed (wrapped)
    └── HTTPError                              renders as an RFC 9457 problem document
        ├── BadRequest                 400
        ├── Unauthorized               401
        ├── PaymentRequired            402  (plan limit, with upgrade hint)
        ├── Forbidden                  403
        │   ├── TenantMismatch         403  credential for A, request names B
        │   ├── TenantSuspended        403
        │   └── PolicyDenied           403  model / tool not allowed
        ├── NotFound                   404
        │   └── TenantNotFound         404
        ├── Conflict                   409
        ├── PayloadTooLarge            413
        ├── UnsupportedMediaType       415  a request body in an unknown coding
        ├── UnprocessableEntity        422
        ├── QuotaExceeded              429  with Retry-After
        └── ServiceUnavailable         503  a backing service is down

HTTP-facing errors carry ``status``, ``headers`` and extra problem fields, and
``to_problem()`` renders them; adapters never guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .types import Identity

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE_URI = "https://tenantkit.dev/problems/"


class TenantKitError(Exception):
    """Base class of every error tenantkit raises."""


class ConfigurationError(TenantKitError, ValueError):
    """Settings or wiring are wrong; raised at start-up, not per request."""


class ValidationError(TenantKitError, ValueError):
    """A value fails a rule; ``field`` names it when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NoTenantError(TenantKitError, LookupError):
    """No tenant is bound to the current context; nothing falls back to global."""


class CrossTenantError(TenantKitError):
    """An object, row or statement belongs to a tenant other than the current one."""


class StorageError(TenantKitError):
    """A backing store (database, Redis) failed; the original error is the cause."""


class HTTPError(TenantKitError):
    """An error with an HTTP meaning; renders as an RFC 9457 problem document."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    slug: ClassVar[str] = "internal"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers: dict[str, str] = dict(headers or {})
        self.extra: dict[str, Any] = extra
        # Who was rejected, when the pipeline knew it (quota, policy): for on_reject
        # hooks and audit, never rendered into the problem document.
        self.identity: Identity | None = None

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """Return the problem document for this error."""
        body: dict[str, Any] = {
            "type": PROBLEM_BASE_URI + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extra)
        return body


class BadRequest(HTTPError):
    status, title, slug = 400, "Bad Request", "bad-request"


class Unauthorized(HTTPError):
    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str | None = None, **kw: Any) -> None:
        headers = dict(kw.pop("headers", None) or {})
        headers.setdefault("WWW-Authenticate", 'Bearer realm="tenantkit"')
        super().__init__(detail, headers=headers, **kw)


class PaymentRequired(HTTPError):
    status, title, slug = 402, "Plan Limit Reached", "plan-limit"


class Forbidden(HTTPError):
    status, title, slug = 403, "Forbidden", "forbidden"


class TenantMismatch(Forbidden):
    title, slug = "Tenant Mismatch", "tenant-mismatch"


class TenantSuspended(Forbidden):
    title, slug = "Tenant Suspended", "tenant-suspended"


class PolicyDenied(Forbidden):
    title, slug = "Policy Denied", "policy-denied"


class NotFound(HTTPError):
    status, title, slug = 404, "Not Found", "not-found"


class TenantNotFound(NotFound):
    title, slug = "Tenant Not Found", "tenant-not-found"


class Conflict(HTTPError):
    status, title, slug = 409, "Conflict", "conflict"


class PayloadTooLarge(HTTPError):
    status, title, slug = 413, "Payload Too Large", "payload-too-large"


class UnsupportedMediaType(HTTPError):
    status, title, slug = 415, "Unsupported Media Type", "unsupported-media-type"


class UnprocessableEntity(HTTPError):
    status, title, slug = 422, "Unprocessable Entity", "validation"


class QuotaExceeded(HTTPError):
    status, title, slug = 429, "Quota Exceeded", "quota-exceeded"


class ServiceUnavailable(HTTPError):
    status, title, slug = 503, "Service Unavailable", "service-unavailable"
