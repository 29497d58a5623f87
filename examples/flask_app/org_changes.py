"""Audit entries for changes to an organization's tenant record (its plan and status).

Plan and status live in tenantkit's tenant store, outside the app's audited
tables, so row capture never sees them change; the routes that change them
record the change here.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from tenantkit import audit
from tenantkit.types import TenantConfig

AUDITED_FIELDS = ("plan", "status")


def record_changes(session: Session, before: TenantConfig, after: TenantConfig) -> None:
    """Add one entry per changed field (``organization.plan_changed``) to ``session``."""
    for name in AUDITED_FIELDS:
        old, new = getattr(before, name), getattr(after, name)
        if old != new:
            audit.record(
                session,
                f"organization.{name}_changed",
                resource_type="organization",
                resource_id=after.id,
                changes={name: [old, new]},
            )
