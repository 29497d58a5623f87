"""Write task events to the outbox in the transaction that changes the task.

If the transaction commits, the event and one delivery per handler exist; if
it rolls back, neither does. Nothing is sent from the request itself.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from tenantkit.context import current_context

from ..models import DeliveryQueue, EventDelivery, OutboxEvent, Task, new_id, utcnow

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
    deliveries = [
        EventDelivery(id=new_id(), event_id=event.id, handler=handler, next_attempt_at=now)
        for handler in HANDLER_NAMES
    ]
    queue = [
        DeliveryQueue(delivery_id=d.id, tenant_id=ctx.tenant_id, due_at=now) for d in deliveries
    ]
    # Flushed in foreign-key order: without relationship()s the ORM does not infer it.
    for rows in ([event], deliveries, queue):
        session.add_all(rows)
        session.flush()
    return event
