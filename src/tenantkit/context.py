"""The tenant of the current request, job or test, held in one ContextVar.

Everything that must know the tenant (database sessions, audit, quotas) reads
it from here; nothing falls back to a global tenant when it is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

from .errors import CrossTenantError, NoTenantError
from .types import Identity, TenantConfig, validate_tenant_id


@dataclass(slots=True)
class TokenMeter:
    """The tokens a handler reports for its request (settled against the reservation)."""

    reserved: int = 0
    used: int | None = None


@dataclass(frozen=True, slots=True)
class TenantContext:
    """What is bound for one request: who is calling and the tenant's config."""

    identity: Identity
    tenant: TenantConfig | None = None
    request_id: str | None = None
    client: str | None = None
    user_agent: str | None = None
    meter: TokenMeter = field(default_factory=TokenMeter)

    @property
    def tenant_id(self) -> str:
        return self.identity.tenant_id


_current: ContextVar[TenantContext | None] = ContextVar("tenantkit.context", default=None)


def bind(ctx: TenantContext) -> Token[TenantContext | None]:
    """Bind ``ctx`` to the current context; reset with the returned token."""
    return _current.set(ctx)


def reset(token: Token[TenantContext | None]) -> None:
    """Undo the ``bind`` that returned ``token``."""
    _current.reset(token)


def unbind_if(ctx: TenantContext) -> bool:
    """Unbind ``ctx`` if it is the bound context; return whether it was.

    For an adapter that finds a request's context still bound when the next
    request starts in the same thread (its server never closed the response).
    """
    if _current.get() is not ctx:
        return False
    _current.set(None)
    return True


def current_context() -> TenantContext:
    """Return the bound context, or raise ``NoTenantError``."""
    ctx = _current.get()
    if ctx is None:
        raise NoTenantError(
            "no tenant in context: this code runs outside a tenant request; "
            "use tenantkit.bound_tenant(...) in jobs and tests"
        )
    return ctx


def get_context() -> TenantContext | None:
    """Return the bound context or ``None`` (for code that handles both cases)."""
    return _current.get()


def current_identity() -> Identity:
    """Return the identity of the current request, or raise ``NoTenantError``."""
    return current_context().identity


def current_tenant_id() -> str:
    """Return the current tenant id, or raise ``NoTenantError``."""
    return current_context().identity.tenant_id


def current_tenant() -> TenantConfig:
    """Return the current tenant's config, or raise ``NoTenantError``."""
    ctx = current_context()
    if ctx.tenant is None:
        raise NoTenantError(
            f"tenant {ctx.tenant_id!r} is bound without its config; bind a TenantConfig"
        )
    return ctx.tenant


def report_tokens(used: int) -> None:
    """Report the tokens this request really used; the reservation is settled to it."""
    if isinstance(used, bool) or not isinstance(used, int) or used < 0:
        raise ValueError("tokens used must be a non-negative int")
    current_context().meter.used = used


@contextmanager
def bound_tenant(
    tenant: str | TenantConfig | Identity,
    *,
    identity: Identity | None = None,
    request_id: str | None = None,
) -> Iterator[TenantContext]:
    """Bind a tenant for the duration of a ``with`` block (jobs, scripts, tests).

    ``tenant`` may be an id, a ``TenantConfig`` or an ``Identity``; an
    ``identity`` given beside an id or config must be of that tenant
    (``CrossTenantError`` otherwise).
    """
    config: TenantConfig | None = None
    if isinstance(tenant, Identity):
        identity = tenant
    elif isinstance(tenant, TenantConfig):
        config = tenant
        identity = _identity_for(tenant.id, identity)
    else:
        identity = _identity_for(validate_tenant_id(tenant), identity)
    ctx = TenantContext(identity=identity, tenant=config, request_id=request_id)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def _identity_for(tenant_id: str, identity: Identity | None) -> Identity:
    if identity is None:
        return Identity(tenant_id=tenant_id, source="system")
    if identity.tenant_id != tenant_id:
        # Bound as is, the identity's tenant would win: rows written for the
        # wrong tenant (system_identity() is tenant "system").
        raise CrossTenantError(
            f"bound_tenant({tenant_id!r}) got an identity of tenant {identity.tenant_id!r}"
        )
    return identity


@contextmanager
def no_tenant() -> Iterator[None]:
    """Run a block with no tenant bound (to test that code fails closed)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)
