"""The monthly usage report: totals by type and project, limits, overage and amount."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ._usage_cycle import cycle_bounds, cycle_of
from ._usage_models import UsageEvent, joined_sum, quantity_sums
from .plans import Plan

CENTS = Decimal("0.01")
API_CALLS = "api_calls"


@dataclass(frozen=True, slots=True)
class UsageReport:
    """A tenant's usage in one billing cycle and what it costs.

    ``by_project`` maps a project id (``None`` for events without one) to its
    totals by type. ``overage`` counts API calls past the plan's allowance;
    ``overage_amount`` prices them per started ``overage_unit`` block.
    Amounts are ``Decimal`` in ``currency``; ``amount`` is ``None`` for a
    negotiated (Enterprise) price.
    """

    tenant_id: str
    billing_cycle: str
    period_start: datetime
    period_end: datetime
    plan: str
    currency: str
    totals: dict[str, int]
    by_project: dict[str | None, dict[str, int]]
    limits: dict[str, int | None]
    overage: dict[str, int]
    base_amount: Decimal | None
    overage_amount: Decimal
    amount: Decimal | None
    events: int = 0
    meter_status: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dictionary (money as strings, RFC 3339 times)."""
        return {
            "tenant_id": self.tenant_id,
            "billing_cycle": self.billing_cycle,
            "period_start": _iso(self.period_start),
            "period_end": _iso(self.period_end),
            "plan": self.plan,
            "currency": self.currency,
            "totals": dict(self.totals),
            "by_project": [
                {"project_id": project, "totals": dict(totals)}
                for project, totals in sorted(
                    self.by_project.items(), key=lambda item: (item[0] is None, item[0] or "")
                )
            ],
            "limits": dict(self.limits),
            "overage": dict(self.overage),
            "base_amount": _money(self.base_amount),
            "overage_amount": _money(self.overage_amount),
            "amount": _money(self.amount),
            "events": self.events,
            "meter_status": dict(self.meter_status),
        }


def build_report(
    session: Session, tenant_id: str, cycle: str | None, plan: Plan, now: datetime
) -> UsageReport:
    """Aggregate one tenant's events of one cycle in the database and price them."""
    name = cycle_of(now) if cycle is None else cycle
    start, end = cycle_bounds(name)
    window = (
        UsageEvent.tenant_id == tenant_id,
        UsageEvent.occurred_at >= start,
        UsageEvent.occurred_at < end,
    )
    rows = session.execute(
        select(UsageEvent.project_id, UsageEvent.type, *quantity_sums())
        .where(*window)
        .group_by(UsageEvent.project_id, UsageEvent.type)
    ).all()
    totals: dict[str, int] = {}
    by_project: dict[str | None, dict[str, int]] = {}
    for project, kind, high, low in rows:
        quantity = joined_sum(high, low)
        totals[kind] = totals.get(kind, 0) + quantity
        by_project.setdefault(project, {})[kind] = quantity
    statuses = session.execute(
        select(UsageEvent.meter_status, func.count())
        .where(*window)
        .group_by(UsageEvent.meter_status)
    ).all()
    meter_status = {str(status): int(count) for status, count in statuses}
    overage, overage_amount = price_overage(plan, totals.get(API_CALLS, 0))
    base = plan.price
    return UsageReport(
        tenant_id=tenant_id,
        billing_cycle=name,
        period_start=start,
        period_end=end,
        plan=plan.name,
        currency=plan.currency,
        totals=dict(sorted(totals.items())),
        by_project=by_project,
        limits=dict(plan.limits),
        overage={API_CALLS: overage} if overage else {},
        base_amount=base,
        overage_amount=overage_amount,
        amount=None if base is None else (base + overage_amount).quantize(CENTS),
        events=sum(meter_status.values()),
        meter_status=meter_status,
    )


def price_overage(plan: Plan, api_calls: int) -> tuple[int, Decimal]:
    """Return API calls over the allowance and their price (per started unit, to the cent)."""
    limit = plan.limit("api_calls")
    if limit is None or api_calls <= limit:
        return 0, Decimal("0.00")
    over = api_calls - limit
    if plan.overage_price is None:
        return over, Decimal("0.00")
    units = math.ceil(over / plan.overage_unit)
    return over, (plan.overage_price * units).quantize(CENTS, rounding=ROUND_HALF_UP)


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value.quantize(CENTS))


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
