"""The app's tables. Every domain table is ``TenantScoped``: tenantkit filters and stamps it.

Ids are time-ordered (:func:`new_id`), so ordering by id is ordering by
creation and cursors are simply "after this id".
"""

from __future__ import annotations

import os
import re
import time
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# tenantkit's timezone-aware timestamp type (SQLite forgets zones) and its clock,
# which the rest of the app imports from here.
from tenantkit._db import UTCDateTime
from tenantkit._db import utcnow as utcnow
from tenantkit.scoping import TenantScoped, tenant_fk, tenant_key, tenant_unique

ROLES = ("ADMIN", "MEMBER")
TASK_STATUSES = ("OPEN", "IN_PROGRESS", "DONE")
EVENT_TYPES = ("TaskCreated", "TaskUpdated", "TaskDeleted")
DELIVERY_STATUSES = ("pending", "retrying", "done", "dead")


def new_id() -> str:
    """Return a UUIDv7-style id: 48 bits of milliseconds, then random bits (sortable)."""
    millis = time.time_ns() // 1_000_000
    raw = bytearray(millis.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70  # version 7
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(raw)))


def is_id(value: str) -> bool:
    """Return whether ``value`` has the shape of an id :func:`new_id` makes.

    Handlers check path ids with it first: anything else cannot exist, and is
    not worth a query (a NUL, say, which PostgreSQL refuses outright).
    """
    return _ID.fullmatch(value) is not None


_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Base(DeclarativeBase):
    """Declarative base of the app's own tables (tenantkit keeps its tables apart)."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class User(TenantScoped, Base):
    """A person of a tenant; with a password hash they can log in (seed 003 members)."""

    __tablename__ = "users"
    __table_args__ = (tenant_key("id"), tenant_unique("email"))
    __audit_exclude__ = ("password_hash",)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(254), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False, default="MEMBER")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        """Return the public view (never the password hash)."""
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "email": self.email,
            "name": self.name,
            "role": self.role,
            "can_log_in": self.password_hash is not None,
            "created_at": rfc3339(self.created_at),
        }


class Task(TenantScoped, Base):
    """A team task (seed 003); ``created_by`` points at a user of the same tenant."""

    __tablename__ = "tasks"
    __table_args__ = (
        tenant_fk("created_by", "users", ondelete="RESTRICT"),
        Index("ix_tasks_tenant_status", "tenant_id", "status"),
    )
    # Task changes reach the audit log through the outbox's audit handler (seed 003).
    __audit__ = False

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="OPEN")
    assigned_to: Mapped[str | None] = mapped_column(String(254))
    created_by: Mapped[str] = mapped_column(String(36), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        """Return the API view of the task."""
        return {
            "task_id": self.id,
            "tenant_id": self.tenant_id,
            "title": self.title,
            "description": self.description,
            "status": self.status,
            "assigned_to": self.assigned_to,
            "created_by": self.created_by,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }


class OutboxEvent(TenantScoped, Base):
    """A domain event, written in the transaction of the change it describes."""

    __tablename__ = "outbox_events"
    __table_args__ = (tenant_key("id"), Index("ix_outbox_events_task", "tenant_id", "task_id"))
    __audit__ = False  # the audit handler records what it means

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    task_id: Mapped[str] = mapped_column(String(36), nullable=False)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class EventDelivery(TenantScoped, Base):
    """One handler's work on one event: its status, attempts and last error.

    ``dead`` is the dead-letter state: the handler gave up after the allowed
    attempts and the row keeps the error for an operator.
    """

    __tablename__ = "event_deliveries"
    __table_args__ = (
        tenant_fk("event_id", "outbox_events", ondelete="CASCADE"),
        tenant_unique("event_id", "handler"),
    )
    __audit__ = False

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    event_id: Mapped[str] = mapped_column(String(36), nullable=False)
    handler: Mapped[str] = mapped_column(String(32), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def to_dict(self) -> dict[str, Any]:
        """Return what the handler did (or is still trying to do)."""
        return {
            "handler": self.handler,
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "next_attempt_at": rfc3339(self.next_attempt_at) if self.status == "retrying" else None,
            "completed_at": rfc3339(self.completed_at),
        }


class DeliveryQueue(Base):
    """The worker's index of due deliveries: ids and tenant only, no tenant data.

    The poller reads it without a tenant; it then binds each row's tenant and
    does the work through scoped sessions, so it never needs ``unscoped()``.
    """

    __tablename__ = "delivery_queue"

    delivery_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("event_deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(String(63), nullable=False, index=True)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    locked_by: Mapped[str | None] = mapped_column(String(64))


class Notification(TenantScoped, Base):
    """An in-app notification written by the notification handler."""

    __tablename__ = "notifications"
    __audit__ = False

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    event_id: Mapped[str] = mapped_column(String(36), nullable=False)
    recipient: Mapped[str | None] = mapped_column(String(254))
    message: Mapped[str] = mapped_column(Text, nullable=False)
    webhook_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class TaskMetric(TenantScoped, Base):
    """A per-tenant counter kept by the analytics handler (tasks created, updated...)."""

    __tablename__ = "task_metrics"
    __table_args__ = (tenant_unique("name"),)
    __audit__ = False

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    value: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


#: The longest HTTP method the request log stores (a longer custom one is recorded cut to it).
METHOD_LENGTH = 10


class RequestLog(TenantScoped, Base):
    """One request of a tenant (admitted or rejected), for ``/api/analytics/requests``."""

    __tablename__ = "request_log"
    __table_args__ = (Index("ix_request_log_tenant_minute", "tenant_id", "minute"),)
    __audit__ = False

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    # The minute the request falls in: reports group by it in SQL on any database.
    minute: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    method: Mapped[str] = mapped_column(String(METHOD_LENGTH), nullable=False)
    route: Mapped[str] = mapped_column(String(200), nullable=False)
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    rejected: Mapped[str | None] = mapped_column(String(32))
    tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    request_id: Mapped[str | None] = mapped_column(String(128))


#: Every table holding a tenant's data, in the order a tenant's deletion empties them.
TENANT_DATA: tuple[type[Base], ...] = (
    EventDelivery,
    OutboxEvent,
    Notification,
    TaskMetric,
    RequestLog,
    Task,
    User,
)


def minute_of(moment: datetime) -> datetime:
    """Return the start of the minute ``moment`` falls in."""
    return moment.replace(second=0, microsecond=0)


def rfc3339(value: datetime | None) -> str | None:
    """Format a UTC time as RFC 3339 with a ``Z`` (``2024-01-15T10:00:00Z``)."""
    if value is None:
        return None
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")
