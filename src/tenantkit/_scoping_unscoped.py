"""``unscoped()``: the one audited escape hatch from tenant scoping."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import UnboundExecutionError
from sqlalchemy.orm import Session

from . import context
from ._db import utcnow
from ._scoping_models import TENANT_COLUMN, TenantScoped
from ._scoping_session import OWNER_KEY, UNSCOPED_KEY
from .errors import CrossTenantError, Forbidden, ValidationError
from .types import Identity

logger = logging.getLogger("tenantkit.scoping")

ADMIN_ROLE = "admin"
SUPERADMIN_ROLE = "superadmin"
SYSTEM_TENANT = "system"


@dataclass(frozen=True, slots=True)
class UnscopedEvent:
    """One use of ``unscoped()``: who, why, when, the session's tenant and engine."""

    identity: Identity
    reason: str
    time: datetime
    tenant_id: str | None
    request_id: str | None = None
    # The engine the session works on, so a hook can ignore other databases.
    engine: Engine | None = None

    @property
    def actor(self) -> str:
        """The audit label of the identity (``user:<sub>``, ``api_key:<id>``, ``system``)."""
        return self.identity.actor


UnscopedHook = Callable[[UnscopedEvent], None]
_hooks: list[tuple[UnscopedHook, Engine | None]] = []


def on_unscoped(hook: UnscopedHook, *, bind: Engine | None = None) -> UnscopedHook:
    """Register ``hook`` to receive every ``UnscopedEvent``; usable as a decorator.

    With ``bind``, the hook only hears about sessions bound to that engine
    (an audit log per database). Hooks run before the block does; a hook
    that raises aborts the block, so an audit store that cannot write stops
    the unscoped work.
    """
    if (hook, bind) not in _hooks:
        _hooks.append((hook, bind))
    return hook


def remove_unscoped_hook(hook: UnscopedHook) -> None:
    """Unregister a hook added with ``on_unscoped`` (no error if absent)."""
    _hooks[:] = [(h, b) for h, b in _hooks if h != hook]


def is_admin(identity: Identity) -> bool:
    """Return whether ``identity`` may use ``unscoped()``.

    A platform operator holds ``superadmin``; a job or script uses
    ``system_identity()`` (source ``system`` with role ``admin``). A tenant's
    own ``admin`` from a JWT or API key administers that tenant only and is
    not enough.
    """
    if identity.has_role(SUPERADMIN_ROLE):
        return True
    return identity.source == "system" and identity.has_role(ADMIN_ROLE)


def system_identity(subject: str = "system", *, tenant_id: str = SYSTEM_TENANT) -> Identity:
    """Return the identity of a trusted job: source ``system``, role ``admin``."""
    return Identity(
        tenant_id=tenant_id,
        source="system",
        authenticated=True,
        subject=subject,
        roles=frozenset({ADMIN_ROLE}),
    )


@contextmanager
def unscoped(session: Any, *, reason: str) -> Iterator[Any]:
    """Lift tenant scoping on ``session`` (sync or async) for a ``with`` block.

    Needs an admin identity in context (see ``is_admin``) and a reason; calls
    every ``on_unscoped`` hook first. Rows come back with their ``tenant_id``.
    On PostgreSQL the database still applies row-level security to the
    connecting role: use an engine whose role may bypass it for such jobs.
    On exit, other tenants' objects are removed from the session so they
    cannot leak into its scoped use.
    """
    sync: Session = getattr(session, "sync_session", session)
    ctx = context.get_context()
    if ctx is None or not is_admin(ctx.identity):
        raise Forbidden(
            "unscoped() needs an admin identity in context: role 'superadmin', or "
            "tenantkit.scoping.system_identity() for jobs"
        )
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError("unscoped() needs a reason for the audit log", field="reason")
    event = UnscopedEvent(
        identity=ctx.identity,
        reason=reason.strip(),
        time=utcnow(),
        tenant_id=sync.info.get(OWNER_KEY),
        request_id=ctx.request_id,
        engine=_engine_of(sync),
    )
    hooks = [h for h, bind in list(_hooks) if bind is None or bind is event.engine]
    if not hooks:
        logger.warning("unscoped() without an audit hook: %s (%s)", event.reason, event.actor)
    for hook in hooks:
        hook(event)
    sync.info[UNSCOPED_KEY] = sync.info.get(UNSCOPED_KEY, 0) + 1
    failed = False
    try:
        yield session
    except BaseException:
        failed = True
        raise
    finally:
        depth = sync.info[UNSCOPED_KEY] - 1
        if depth:
            sync.info[UNSCOPED_KEY] = depth
        else:
            del sync.info[UNSCOPED_KEY]
            _evict_foreign(sync, strict=not failed)


def _engine_of(session: Session) -> Engine | None:
    try:
        bind = session.get_bind()
    except UnboundExecutionError:  # binds per mapper only: bind-specific hooks cannot apply
        return None
    return bind.engine if isinstance(bind, Connection) else bind


def _evict_foreign(session: Session, *, strict: bool) -> None:
    owner = session.info.get(OWNER_KEY)
    pending = [*session.new, *session.dirty, *session.deleted]
    for obj in list(session.identity_map.values()) + pending:
        if not isinstance(obj, TenantScoped):
            continue
        if owner is not None and getattr(obj, TENANT_COLUMN, None) == owner:
            continue
        if strict and obj in pending:
            raise CrossTenantError(
                f"unscoped() left unflushed changes to {type(obj).__name__}; flush or "
                "commit inside the block"
            )
        session.expunge(obj)
