"""Write task events to the outbox in the transaction that changes the task.

If the transaction commits, the event and one delivery per handler exist; if
it rolls back, neither does. Nothing is sent from the request itself.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from tenantkit._db import utcnow
from tenantkit.context import current_context

from ..models import DeliveryQueue, EventDelivery, OutboxEvent, Task, new_id

#: Every event goes to each of these handlers (seed 003's background functions).
HANDLER_NAMES = ("analytics", "audit", "notification")


def emit(
    session: Session, event_type: str, task: Task, *, changes: dict[str, Any] | None = None
) -> OutboxEvent:
    """Add a ``TaskCreated``/``TaskUpdated``/``TaskDeleted`` event and its deliveries."""
    ctx = current_context()
    now = utcnow()
    event = OutboxEvent(
        id=new_id(),
        type=event_type,
        task_id=task.id,
        actor=ctx.identity.actor,
        payload={"task": task.to_dict(), "changes": changes or {}},
        request_id=ctx.request_id,
        created_at=now,
    )
    session.add(event)
    for handler in HANDLER_NAMES:
        delivery = EventDelivery(
            id=new_id(), event_id=event.id, handler=handler, next_attempt_at=now
        )
        session.add(delivery)
        session.add(DeliveryQueue(delivery_id=delivery.id, tenant_id=ctx.tenant_id, due_at=now))
    return event
