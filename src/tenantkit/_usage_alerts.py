"""Usage alerts at 80% and 100% of a plan limit, delivered once per billing cycle.

An alert is persisted (unique per tenant, cycle, resource and threshold)
before it is delivered, so a restart or a second process never repeats it.
Delivery is at most once: a subscriber that raises is logged, not retried.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from ._db import utcnow
from ._usage_cycle import cycle_of
from ._usage_models import UsageAlertSent, insert_or_ignore, table_of
from .plans import DEFAULT_PLANS, Plan, Plans, Resource
from .types import TenantConfig

logger = logging.getLogger("tenantkit.usage")


@dataclass(frozen=True, slots=True)
class UsageAlert:
    """A tenant has used ``threshold`` percent (80 or 100) of a plan limit this cycle."""

    tenant_id: str
    plan: str
    cycle: str
    resource: str
    threshold: int
    used: int
    limit: int


Subscriber = Callable[[UsageAlert], None]


class UsageAlerts:
    """Detect threshold crossings, persist them once per cycle and notify subscribers."""

    def __init__(
        self,
        sessionmaker: Callable[[], Session],
        *,
        thresholds: Sequence[int] = (80, 100),
        plans: Plans = DEFAULT_PLANS,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if not thresholds or any(not 0 < t <= 1000 for t in thresholds):
            raise ValueError("thresholds are percentages between 1 and 1000")
        self._sessionmaker = sessionmaker
        self.thresholds = tuple(sorted(set(thresholds)))
        self.plans = plans
        self._clock = clock
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback`` with each new alert; return a function that unsubscribes."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def check(
        self,
        tenant_id: str,
        plan: str | Plan | TenantConfig,
        resource: Resource,
        used: int,
        *,
        now: datetime | None = None,
    ) -> list[UsageAlert]:
        """Persist and deliver the alerts ``used`` crosses for the first time this cycle."""
        resolved = self.plans.resolve(plan)
        limit = resolved.limit(resource)
        if limit is None or used <= 0:
            return []
        cycle = cycle_of(now or self._clock())
        crossed = [t for t in self.thresholds if used * 100 >= t * limit]
        if not crossed:
            return []
        fresh: list[UsageAlert] = []
        with self._sessionmaker() as session, session.begin():
            for threshold in crossed:
                values = {
                    "tenant_id": tenant_id,
                    "cycle": cycle,
                    "resource": resource,
                    "threshold": threshold,
                    "used": used,
                    "limit": limit,
                    "sent_at": self._clock(),
                }
                key = ("tenant_id", "cycle", "resource", "threshold")
                if insert_or_ignore(session, table_of(UsageAlertSent), values, key):
                    fresh.append(
                        UsageAlert(
                            tenant_id, resolved.name, cycle, resource, threshold, used, limit
                        )
                    )
        for alert in fresh:
            self._deliver(alert)
        return fresh

    def _deliver(self, alert: UsageAlert) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(alert)
            except Exception:
                logger.exception("usage alert subscriber %r failed for %s", callback, alert)
