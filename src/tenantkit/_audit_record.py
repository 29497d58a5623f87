"""Who and where an entry comes from, and ``record()`` for events that are not row changes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, overload

from sqlalchemy.orm import Session

from . import _audit_bus, _audit_chain
from ._audit_chain import Draft
from ._audit_model import AuditEntry
from ._audit_policy import jsonable
from ._stores import UNSTORABLE, storable_text
from .context import current_tenant_id, get_context
from .errors import ValidationError
from .types import validate_tenant_id

SYSTEM_ACTOR = "system"
# Column widths of tenantkit_audit_log.
LIMITS = {
    "actor": 255,
    "action": 128,
    "resource_type": 128,
    "resource_id": 255,
    "request_id": 128,
    "client_ip": 64,
    "user_agent": 512,
}

_actor_override: ContextVar[str | None] = ContextVar("tenantkit.audit.actor", default=None)


@contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Attribute entries written in this block to ``actor`` (``"admin:alice"``, a job name)."""
    if not actor or len(actor) > 255:
        raise ValidationError("actor must be 1 to 255 characters", field="actor")
    token = _actor_override.set(actor)
    try:
        yield
    finally:
        _actor_override.reset(token)


def current_actor() -> str:
    """Return who the current code acts for: an override, the caller's identity, or system."""
    override = _actor_override.get()
    if override is not None:
        return override
    ctx = get_context()
    return ctx.identity.actor if ctx is not None else SYSTEM_ACTOR


def make_draft(
    action: str,
    *,
    tenant_id: str | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    changes: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    actor: str | None = None,
    request_id: str | None = None,
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> Draft:
    """Build a draft, filling tenant, actor and request details from the context.

    Without ``tenant_id`` the bound tenant is used; with neither it raises
    ``NoTenantError``: an entry never lands in no tenant's log.
    """
    _check_text("action", action, LIMITS["action"], required=True)
    _check_text("resource_type", resource_type, LIMITS["resource_type"])
    if resource_id is not None:
        resource_id = str(resource_id)
        _check_text("resource_id", resource_id, LIMITS["resource_id"])
    if actor is not None:
        _check_text("actor", actor, LIMITS["actor"], required=True)
    tenant = validate_tenant_id(tenant_id) if tenant_id is not None else current_tenant_id()
    ctx = get_context()
    if ctx is not None:
        request_id = request_id if request_id is not None else ctx.request_id
        client_ip = client_ip if client_ip is not None else ctx.client
        user_agent = user_agent if user_agent is not None else ctx.user_agent
    return Draft(
        tenant_id=tenant,
        actor=actor if actor is not None else _clip(current_actor(), "actor"),
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        changes=_as_changes(changes),
        metadata=jsonable(dict(metadata)) if metadata is not None else None,
        # Request details come from clients: clip them, never fail the change.
        request_id=_clip(request_id, "request_id"),
        client_ip=_clip(client_ip, "client_ip"),
        user_agent=_clip(user_agent, "user_agent"),
    )


def _check_text(name: str, value: object, limit: int, *, required: bool = False) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValidationError(f"{name} must be 1 to {limit} characters", field=name)
    if not storable_text(value):
        raise ValidationError(f"{name} must not hold NUL or unpaired surrogates", field=name)


@overload
def _clip(value: str, column: str) -> str: ...
@overload
def _clip(value: str | None, column: str) -> str | None: ...
def _clip(value: str | None, column: str) -> str | None:
    if not value:
        return value
    # What a database cannot store (NUL, a lone surrogate) becomes U+FFFD.
    return UNSTORABLE.sub("\ufffd", value[: LIMITS[column]])


def _as_changes(changes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if changes is None:
        return None
    out: dict[str, Any] = {}
    for key, pair in changes.items():
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            message = f"changes[{key!r}] must be a [before, after] pair"
            raise ValidationError(message, field="changes")
        out[str(key)] = [jsonable(pair[0]), jsonable(pair[1])]
    return out


def record(
    session: Session,
    action: str,
    *,
    resource_type: str | None = None,
    resource_id: str | None = None,
    changes: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    actor: str | None = None,
    tenant_id: str | None = None,
) -> AuditEntry:
    """Write an explicit event (login, key revoked, policy denied) in the session's transaction.

    The entry commits or rolls back with the session; subscribers hear of it
    after the commit. The tenant is the bound one unless ``tenant_id`` is given.
    """
    draft = make_draft(
        action,
        tenant_id=tenant_id,
        resource_type=resource_type,
        resource_id=resource_id,
        changes=changes,
        metadata=metadata,
        actor=actor,
    )
    with _audit_chain.connection_for(session) as conn:
        entries = _audit_chain.append(conn, [draft])
    _audit_bus.add_pending(session, entries)
    return entries[0]
