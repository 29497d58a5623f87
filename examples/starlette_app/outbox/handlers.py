"""What happens after a task event (seed 003): analytics, notification, audit.

A handler runs in the event's tenant context, inside the transaction that
marks its delivery done; raising rolls its work back and schedules a retry.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenantkit import audit
from tenantkit.types import TenantConfig

from ..models import Notification, OutboxEvent, TaskMetric

Handler = Callable[[Session, OutboxEvent, TenantConfig], None]
WEBHOOK_KEY = "notification_webhook_url"
WEBHOOK_TIMEOUT_SECONDS = 5.0
_VERBS = {"TaskCreated": "created", "TaskUpdated": "updated", "TaskDeleted": "deleted"}


class DeliveryFailed(Exception):
    """A handler could not finish; the worker retries it later."""


def count_event(session: Session, event: OutboxEvent, tenant: TenantConfig) -> None:
    """Analytics: count the tenant's task events by type."""
    metric = session.scalars(select(TaskMetric).where(TaskMetric.name == event.type)).one_or_none()
    if metric is None:
        session.add(TaskMetric(name=event.type, value=1))
    else:
        metric.value += 1


def notify(session: Session, event: OutboxEvent, tenant: TenantConfig) -> None:
    """Notification: an in-app message for the assignee, and the tenant's webhook if set."""
    task: Mapping[str, Any] = event.payload.get("task", {})
    message = f"Task {_VERBS.get(event.type, event.type)}: {task.get('title', event.task_id)}"
    note = Notification(event_id=event.id, recipient=task.get("assigned_to"), message=message)
    url = tenant.metadata.get(WEBHOOK_KEY)
    if isinstance(url, str) and url:
        note.webhook_status = post_webhook(url, event, tenant.id)
    session.add(note)


def post_webhook(url: str, event: OutboxEvent, tenant_id: str) -> int:
    """POST the event to ``url``; raise ``DeliveryFailed`` unless it answers 2xx."""
    if not url.startswith(("http://", "https://")):
        raise DeliveryFailed(f"{WEBHOOK_KEY} must be an http(s) URL")
    body = json.dumps(
        {
            "event_id": event.id,
            "type": event.type,
            "tenant_id": tenant_id,
            "task_id": event.task_id,
            "actor": event.actor,
            "payload": event.payload,
        }
    ).encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        # The receiver deduplicates on this: a retry after a lost answer resends the event.
        headers={"Content-Type": "application/json", "Idempotency-Key": event.id},
    )
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
            status: int = response.status
    except urllib.error.HTTPError as exc:
        raise DeliveryFailed(f"webhook answered {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DeliveryFailed(f"webhook unreachable: {exc}") from exc
    return status


def audit_event(session: Session, event: OutboxEvent, tenant: TenantConfig) -> None:
    """Audit: write the compliance entry for the task change, attributed to its actor."""
    audit.record(
        session,
        f"task.{_VERBS.get(event.type, event.type)}",
        resource_type="task",
        resource_id=event.task_id,
        changes=event.payload.get("changes") or None,
        metadata={"event_id": event.id, "event": event.type, "request_id": event.request_id},
        actor=event.actor,
    )


HANDLERS: dict[str, Handler] = {
    "analytics": count_event,
    "audit": audit_event,
    "notification": notify,
}
