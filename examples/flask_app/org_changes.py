"""Changes to an organization's tenant record (its plan and status), with their audit entries.

Plan and status live in tenantkit's tenant store, outside the app's audited
tables, so row capture never sees them change: the change is made through
the caller's session (``session=``) and recorded in the same transaction,
so the two are committed, or rolled back, together.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from tenantkit import audit
from tenantkit.errors import Conflict
from tenantkit.tenants import TenantStore
from tenantkit.types import TenantConfig

AUDITED_FIELDS = ("plan", "status")
#: Compare-and-set rounds of a change Stripe drives before giving up (Stripe retries).
STRIPE_ATTEMPTS = 3
STRIPE_ACTOR = "stripe"


def record_changes(session: Session, before: TenantConfig, after: TenantConfig) -> None:
    """Add one entry per changed field (``organization.plan_changed``) to ``session``."""
    for name in AUDITED_FIELDS:
        old, new = getattr(before, name), getattr(after, name)
        if old != new:
            audit.record(
                session,
                f"organization.{name}_changed",
                tenant_id=after.id,
                resource_type="organization",
                resource_id=after.id,
                changes={name: [old, new]},
            )


def change(
    session: Session, tenants: TenantStore, before: TenantConfig, **fields: str
) -> TenantConfig:
    """Apply ``fields`` if ``before`` is still current (else ``Conflict``) and audit them.

    Both go through ``session``; the caller commits.
    """
    after = tenants.update(before.id, expected_version=before.version, session=session, **fields)
    record_changes(session, before, after)
    return after


def follow_stripe(
    sessions: Callable[[], Session], tenants: TenantStore, tenant_id: str, **fields: str
) -> None:
    """Apply what Stripe says the plan or status now is, audited, in one transaction.

    The current values are read from the database (not the cache), and the
    write is a compare-and-set on them, so the entry shows what was replaced.
    """
    for attempt in range(STRIPE_ATTEMPTS):
        tenants.invalidate(tenant_id)
        before = tenants.get(tenant_id)
        if all(getattr(before, name) == value for name, value in fields.items()):
            return
        try:
            with audit.acting_as(STRIPE_ACTOR), sessions() as session, session.begin():
                change(session, tenants, before, **fields)
        except Conflict:
            if attempt == STRIPE_ATTEMPTS - 1:
                raise
            continue
        return
