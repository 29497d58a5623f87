"""Tenant-scoped SQLAlchemy: the mixin, scoped sessions, and the filters that fail closed.

Models mix in ``TenantScoped``; sessions come from ``tenant_sessionmaker`` or
``async_tenant_sessionmaker``. Every statement such a session runs is limited
to the tenant in ``tenantkit.context`` or refused, new rows are stamped, and
on PostgreSQL each transaction carries ``app.tenant_id`` for row-level
security (see ``tenantkit.rls``). ``unscoped()`` is the audited way out.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from ._scoping_models import (
    SCOPED_INFO_KEY,
    TenantScoped,
    is_scoped_table,
    scoped_tables,
    tenant_column,
    tenant_fk,
    tenant_foreign_key,
    tenant_key,
    tenant_unique,
)
from ._scoping_session import TenantSession, forget_rls_verification, session_tenant
from ._scoping_unscoped import (
    UnscopedEvent,
    is_admin,
    on_unscoped,
    remove_unscoped_hook,
    system_identity,
    unscoped,
)
from .errors import ConfigurationError

__all__ = [
    "SCOPED_INFO_KEY",
    "TenantScoped",
    "TenantSession",
    "UnscopedEvent",
    "async_tenant_sessionmaker",
    "forget_rls_verification",
    "install_scoping",
    "is_admin",
    "is_scoped_table",
    "on_unscoped",
    "remove_unscoped_hook",
    "scoped_tables",
    "session_tenant",
    "system_identity",
    "tenant_column",
    "tenant_fk",
    "tenant_foreign_key",
    "tenant_key",
    "tenant_sessionmaker",
    "tenant_unique",
    "unscoped",
]

_S = TypeVar("_S", bound=Session)
_T = TypeVar("_T")


def tenant_sessionmaker(bind: Engine, **kw: Any) -> sessionmaker[Session]:
    """Return a ``sessionmaker`` whose sessions are scoped to the tenant in context."""
    class_ = _tenant_class(kw.pop("class_", TenantSession))
    return sessionmaker(bind=bind, class_=class_, **kw)


def async_tenant_sessionmaker(bind: AsyncEngine, **kw: Any) -> async_sessionmaker[AsyncSession]:
    """Return an ``async_sessionmaker`` whose sessions are scoped to the tenant in context."""
    sync_class = _tenant_class(kw.pop("sync_session_class", TenantSession))
    return async_sessionmaker(bind=bind, sync_session_class=sync_class, **kw)


def install_scoping(target: _T) -> _T:
    """Make an existing ``sessionmaker``, ``async_sessionmaker`` or ``Session`` class scoped.

    Makers are changed in place and returned; for a ``Session`` subclass the
    scoped subclass is returned (sessions of the original class stay plain).
    """
    if isinstance(target, sessionmaker):
        target.class_ = _tenant_class(target.class_)
        return target
    if isinstance(target, async_sessionmaker):
        target.kw["sync_session_class"] = _tenant_class(
            target.kw.get("sync_session_class") or Session
        )
        return target
    if isinstance(target, type) and issubclass(target, Session):
        return _tenant_class(target)  # type: ignore[return-value]
    raise ConfigurationError(
        f"install_scoping() takes a sessionmaker, async_sessionmaker or Session class, "
        f"not {type(target).__name__}"
    )


def _tenant_class(cls: type[_S]) -> type[_S]:
    if not (isinstance(cls, type) and issubclass(cls, Session)):
        raise ConfigurationError(f"{cls!r} is not a Session class")
    if issubclass(cls, TenantSession):
        return cls
    return type(f"Tenant{cls.__name__}", (TenantSession, cls), {})
