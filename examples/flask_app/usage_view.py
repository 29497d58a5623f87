"""What an organization uses against its plan: seats, projects, API calls and storage."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tenantkit.plans import Resource
from tenantkit.types import TenantConfig

from .context import platform
from .models import Membership, Project

API_CALLS = "api_calls"
STORAGE = "storage_gb"
# The seed records "api_call"; the plan meters "api_calls". One name is stored.
TYPE_ALIASES = {"api_call": API_CALLS}


def seats(session: Session) -> int:
    """Return the members of the current organization who hold or were offered a seat."""
    count = session.scalar(
        select(func.count()).select_from(Membership).where(Membership.status != "suspended")
    )
    return int(count or 0)


def project_count(session: Session) -> int:
    """Return the current organization's projects."""
    return int(session.scalar(select(func.count()).select_from(Project)) or 0)


def enforce(tenant: TenantConfig, resource: Resource, new_count: int) -> None:
    """Raise 402 (with ``limit`` and ``upgrade_to``) when ``new_count`` exceeds the plan."""
    platform().plans.enforce(tenant, resource, new_count)


def current_usage(session: Session, tenant: TenantConfig) -> dict[str, Any]:
    """Return the organization's plan, limits and what it uses this billing cycle."""
    p = platform()
    report = p.usage.report(tenant.id, plan=tenant)
    plan = p.plans.resolve(tenant)
    return {
        "plan": plan.name,
        "limits": dict(plan.limits),
        "usage": {
            "users": seats(session),
            "projects": project_count(session),
            API_CALLS: report.totals.get(API_CALLS, 0),
            STORAGE: report.totals.get(STORAGE, 0),
        },
        "billing_cycle": report.billing_cycle,
    }
