"""Usage metering: idempotent usage events and the monthly report per billing cycle.

Every event carries an idempotency key unique per tenant for good (a database
constraint, not a time window): a repeat, even one racing the original on
another connection, is acknowledged with the original event and never counted
twice. ``ApiCallCounter`` (in ``_usage_counter``) buffers API calls in memory
and writes them here in batches.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ._db import utcnow
from ._stores import storable_text
from ._usage_alerts import UsageAlert, UsageAlerts
from ._usage_counter import ApiCallCounter
from ._usage_models import UsageEvent, insert_or_ignore, joined_sum, quantity_sums, table_of
from ._usage_report import UsageReport, build_report
from .context import current_tenant_id, get_context
from .errors import ConfigurationError, Conflict, CrossTenantError, UnprocessableEntity
from .plans import DEFAULT_PLANS, Plan, Plans
from .types import TenantConfig, validate_tenant_id

__all__ = [
    "API_CALLS",
    "ApiCallCounter",
    "UsageAlert",
    "UsageAlerts",
    "UsageEvent",
    "UsageRecord",
    "UsageRecorder",
    "UsageReport",
]

API_CALLS = "api_calls"
TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
MAX_QUANTITY = 2**53
MAX_METADATA_BYTES = 4096
MAX_KEY_LENGTH = 255
MAX_FUTURE = timedelta(minutes=5)

SessionFactory = Callable[[], Session]
PlanOf = Callable[[str], "str | Plan | TenantConfig"]


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """A recorded usage event; ``duplicate`` is true when a repeat key was acknowledged."""

    id: str
    tenant_id: str
    type: str
    quantity: int
    occurred_at: datetime
    project_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    meter_status: str = "pending"
    duplicate: bool = False

    @classmethod
    def from_row(cls, row: UsageEvent, *, duplicate: bool = False) -> UsageRecord:
        """Return the record of a stored event."""
        return cls(
            id=row.id,
            tenant_id=row.tenant_id,
            type=row.type,
            quantity=row.quantity,
            occurred_at=row.occurred_at,
            project_id=row.project_id,
            metadata=dict(row.meta or {}),
            idempotency_key=row.idempotency_key,
            meter_status=row.meter_status,
            duplicate=duplicate,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dictionary (RFC 3339 times)."""
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "project_id": self.project_id,
            "type": self.type,
            "quantity": self.quantity,
            "metadata": dict(self.metadata),
            "occurred_at": self.occurred_at.isoformat().replace("+00:00", "Z"),
            "idempotency_key": self.idempotency_key,
            "meter_status": self.meter_status,
            "duplicate": self.duplicate,
        }


class UsageRecorder:
    """Record usage events once each and report them per billing cycle.

    ``sessionmaker`` makes plain SQLAlchemy sessions on the database holding
    ``tenantkit._db.Base``'s tables. The tenant comes from the bound context
    (``bound_tenant`` or a request); ``plan_of(tenant_id)`` (for example the
    tenant store's ``lambda t: store.get(t)``) gives the plan for reports.
    """

    def __init__(
        self,
        sessionmaker: SessionFactory,
        *,
        plans: Plans = DEFAULT_PLANS,
        plan_of: PlanOf | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.plans = plans
        self._plan_of = plan_of
        self._clock = clock

    def record(
        self,
        type: str,
        quantity: int = 1,
        *,
        project_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        occurred_at: datetime | None = None,
        idempotency_key: str | None = None,
        tenant_id: str | None = None,
        session: Session | None = None,
    ) -> UsageRecord:
        """Record one usage event for the current tenant; a repeated key returns the original.

        A repeat with the same key but a different type, quantity or project
        is a 409: the key names one event for good. Bad input is a 422. With
        ``session`` (on the recorder's database), write in its transaction and
        leave the commit to the caller.
        """
        tenant = _tenant(tenant_id)
        values = self._values(tenant, type, quantity, project_id, metadata, occurred_at)
        values["idempotency_key"] = _key(idempotency_key)
        if session is not None:
            return self._insert(session, tenant, values)
        with self._sessionmaker() as own, own.begin():
            return self._insert(own, tenant, values)

    def _insert(self, session: Session, tenant: str, values: dict[str, Any]) -> UsageRecord:
        if not isinstance(session, Session):
            raise ConfigurationError(
                f"session= takes a sqlalchemy.orm.Session, not {type(session).__name__}"
            )
        if values["idempotency_key"] is None:
            session.execute(table_of(UsageEvent).insert().values(values))
            return _record_from_values(values)
        conflict = ("tenant_id", "idempotency_key")
        if insert_or_ignore(session, table_of(UsageEvent), values, conflict):
            return _record_from_values(values)
        original = session.scalars(
            select(UsageEvent).where(
                UsageEvent.tenant_id == tenant,
                UsageEvent.idempotency_key == values["idempotency_key"],
            )
        ).one()
        _check_same(original, values)
        return UsageRecord.from_row(original, duplicate=True)

    def get(self, event_id: str, *, tenant_id: str | None = None) -> UsageRecord | None:
        """Return one of the current tenant's events by id, or ``None``."""
        tenant = _tenant(tenant_id)
        if not isinstance(event_id, str):
            raise UnprocessableEntity("event_id must be a string", field="event_id")
        if not storable_text(event_id):
            return None  # no stored id holds NUL or a lone surrogate
        with self._sessionmaker() as session:
            row = session.scalars(
                select(UsageEvent).where(UsageEvent.tenant_id == tenant, UsageEvent.id == event_id)
            ).one_or_none()
            return None if row is None else UsageRecord.from_row(row)

    def total(
        self, type: str, start: datetime, end: datetime, *, tenant_id: str | None = None
    ) -> int:
        """Return the summed quantity of ``type`` events in ``[start, end)``."""
        tenant = _tenant(tenant_id)
        with self._sessionmaker() as session:
            high, low = session.execute(
                select(*quantity_sums()).where(
                    UsageEvent.tenant_id == tenant,
                    UsageEvent.type == type,
                    UsageEvent.occurred_at >= start,
                    UsageEvent.occurred_at < end,
                )
            ).one()
            return joined_sum(high, low)

    def report(
        self,
        tenant_id: str | None = None,
        billing_cycle: str | None = None,
        *,
        plan: str | Plan | TenantConfig | None = None,
    ) -> UsageReport:
        """Return the tenant's usage for a ``YYYY-MM`` cycle (default: the current one).

        Totals by type and by project, the plan's limits, overage and the
        amount due (see ``docs/billing.md`` for how overage is priced).
        """
        tenant = _tenant(tenant_id)
        resolved = self.plans.resolve(self._plan_for(tenant, plan))
        with self._sessionmaker() as session:
            return build_report(session, tenant, billing_cycle, resolved, self._clock())

    def _plan_for(
        self, tenant: str, plan: str | Plan | TenantConfig | None
    ) -> str | Plan | TenantConfig:
        if plan is not None:
            return plan
        if self._plan_of is not None:
            return self._plan_of(tenant)
        ctx = get_context()
        if ctx is not None and ctx.tenant is not None and ctx.tenant.id == tenant:
            return ctx.tenant
        raise ConfigurationError(
            "the report needs the tenant's plan: pass plan=... or build the "
            "UsageRecorder with plan_of=<tenant id -> plan or TenantConfig>"
        )

    def _values(
        self,
        tenant: str,
        type: str,
        quantity: int,
        project_id: str | None,
        metadata: Mapping[str, Any] | None,
        occurred_at: datetime | None,
    ) -> dict[str, Any]:
        if not isinstance(type, str) or TYPE_PATTERN.fullmatch(type) is None:
            raise UnprocessableEntity(f"type must match {TYPE_PATTERN.pattern}", field="type")
        if isinstance(quantity, bool) or not isinstance(quantity, int):
            raise UnprocessableEntity("quantity must be an integer", field="quantity")
        if not 0 < quantity <= MAX_QUANTITY:
            raise UnprocessableEntity(
                f"quantity must be between 1 and {MAX_QUANTITY}", field="quantity"
            )
        if project_id is not None and (
            not isinstance(project_id, str)
            or not 0 < len(project_id) <= 64
            or not storable_text(project_id)
        ):
            raise UnprocessableEntity("project_id must be 1-64 characters", field="project_id")
        now = self._clock()
        when = now if occurred_at is None else occurred_at
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise UnprocessableEntity(
                "occurred_at must be a timezone-aware datetime", field="occurred_at"
            )
        if when > now + MAX_FUTURE:
            raise UnprocessableEntity(
                "occurred_at is more than 5 minutes in the future", field="occurred_at"
            )
        return {
            "id": new_event_id(),
            "tenant_id": tenant,
            "project_id": project_id,
            "type": type,
            "quantity": quantity,
            "metadata": _metadata(metadata),
            "occurred_at": when,
            "recorded_at": now,
            "meter_status": "pending",
            "meter_attempts": 0,
        }


def new_event_id() -> str:
    """Return a new usage event id (also the Stripe meter event ``identifier``)."""
    return "ue_" + uuid.uuid4().hex


def _tenant(explicit: str | None) -> str:
    if explicit is None:
        return current_tenant_id()
    tenant = validate_tenant_id(explicit)
    ctx = get_context()
    if ctx is not None and ctx.tenant_id != tenant:
        raise CrossTenantError(f"tenant {tenant!r} named while tenant {ctx.tenant_id!r} is bound")
    return tenant


def _key(key: str | None) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH or not storable_text(key):
        raise UnprocessableEntity(
            f"idempotency_key must be 1-{MAX_KEY_LENGTH} characters", field="idempotency_key"
        )
    return key


def _metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise UnprocessableEntity("metadata must be an object", field="metadata")
    try:
        encoded = json.dumps(dict(metadata), separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise UnprocessableEntity(f"metadata is not JSON: {exc}", field="metadata") from exc
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise UnprocessableEntity(f"metadata exceeds {MAX_METADATA_BYTES} bytes", field="metadata")
    loaded: dict[str, Any] = json.loads(encoded)
    return loaded


def _check_same(original: UsageEvent, values: Mapping[str, Any]) -> None:
    same = (
        original.type == values["type"]
        and original.quantity == values["quantity"]
        and original.project_id == values["project_id"]
    )
    if not same:
        raise Conflict(
            "idempotency_key was already used for a different usage event",
            idempotency_key=values["idempotency_key"],
            event_id=original.id,
        )


def _record_from_values(values: Mapping[str, Any]) -> UsageRecord:
    return UsageRecord(
        id=values["id"],
        tenant_id=values["tenant_id"],
        type=values["type"],
        quantity=values["quantity"],
        occurred_at=values["occurred_at"],
        project_id=values["project_id"],
        metadata=values["metadata"],
        idempotency_key=values["idempotency_key"],
    )
