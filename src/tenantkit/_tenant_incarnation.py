"""A tenant id's incarnations: what deleting a tenant does to its billing and usage rows.

A tenant id can be created again after a delete; the new tenant is a
stranger to its namesake. ``purge_tenant_billing`` (called by
``TenantStore.delete`` inside its transaction, like ``delete_tenant_keys``)
deletes the namesake's billing account, usage events and usage alerts, and
makes this process's ``ApiCallCounter`` objects forget its counts. Stripe
keeps its own records (the customer, its invoices, the meter events already
sent), so nothing billed is lost there.

Stripe objects outlive our rows, and ``StripeBilling`` and the webhooks look
some of them up by the ``tenant_id`` in their metadata. ``created_at_of``
returns when the current incarnation of an id was created, and
``predates`` tells whether a Stripe object (its ``created``) belongs to an
earlier one.
"""

from __future__ import annotations

import weakref
from datetime import datetime
from typing import Any, Final, Protocol

from sqlalchemy import column, delete, func, inspect, select, table
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from ._db import UTCDateTime
from ._scoping_session import SETTING as RLS_SETTING  # the usage tables are TenantScoped

__all__ = ["created_at_of", "incarnation_marker", "predates", "purge_tenant_billing"]

# Named, not imported: the tenant store must not load the usage and billing modules.
PURGED_TABLES: Final = (
    "tenantkit_billing_accounts",
    "tenantkit_usage_events",
    "tenantkit_usage_alerts",
)
TENANTS_TABLE: Final = "tenantkit_tenants"


class _Forgetful(Protocol):
    def forget_tenant(self, tenant_id: str) -> None: ...


_counters: weakref.WeakSet[Any] = weakref.WeakSet()


def register_counter(counter: _Forgetful) -> None:
    """Have ``purge_tenant_billing`` call ``counter.forget_tenant(tenant_id)`` from now on."""
    _counters.add(counter)


def purge_tenant_billing(conn: Connection, tenant_id: str) -> int:
    """Delete the tenant's billing account, usage events and alerts in ``conn``'s transaction.

    Tables that do not exist (an app without billing or usage) are skipped.
    Return how many rows went.
    """
    present = [name for name in PURGED_TABLES if inspect(conn).has_table(name)]
    deleted = 0
    if present:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            # Row-level security hides every usage row from a transaction bound to no tenant;
            # the caller's own binding (a session= transaction may have one) is put back after.
            before = conn.scalar(select(func.current_setting(RLS_SETTING, True)))
            conn.execute(select(func.set_config(RLS_SETTING, tenant_id, True)))
        for name in present:
            rows = table(name, column("tenant_id"))
            result = conn.execute(delete(rows).where(rows.c.tenant_id == tenant_id))
            deleted += int(getattr(result, "rowcount", 0) or 0)
        if postgres:
            conn.execute(select(func.set_config(RLS_SETTING, before or "", True)))
    return deleted


def forget_tenant_usage(tenant_id: str) -> None:
    """Drop a deleted tenant's counts from every usage counter of this process (after commit)."""
    for counter in list(_counters):
        counter.forget_tenant(tenant_id)


def created_at_of(session: Session, tenant_id: str) -> datetime | None:
    """Return when the tenant was created, or ``None`` without a tenants table or tenant."""
    conn = session.connection()
    if not inspect(conn).has_table(TENANTS_TABLE):
        return None
    tenants = table(TENANTS_TABLE, column("id"), column("created_at", UTCDateTime()))
    found: datetime | None = session.scalar(
        select(tenants.c.created_at).where(tenants.c.id == tenant_id)
    )
    return found


def incarnation_marker(created_at: datetime) -> str:
    """Return the tenant's creation time in microseconds: one incarnation of its id."""
    return str(int(created_at.timestamp() * 1_000_000))


def predates(stripe_created: object, created_at: datetime) -> bool:
    """Return whether a Stripe object's ``created`` (Unix seconds) is before the tenant's.

    Stripe counts whole seconds, so an object made in the tenant's first
    second is its own; one without a usable ``created`` is treated as older.
    """
    if isinstance(stripe_created, bool) or not isinstance(stripe_created, int):
        return True
    return stripe_created < int(created_at.timestamp())
