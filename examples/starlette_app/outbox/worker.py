"""The outbox worker: deliver each event to each handler, in the event's tenant context.

A request that writes events kicks the worker after its response is sent;
the worker also polls, so events left by a stopped process are picked up by
the next one. A failing handler is retried with exponential backoff and
jitter; after ``max_attempts`` its delivery is dead-lettered (status
``dead``, the last error kept) and no longer retried.

Several processes may run workers on one database: a delivery is claimed
with a lease (a compare-and-set on ``delivery_queue.locked_until``), so only
one of them works on it at a time.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Mapping
from datetime import timedelta
from functools import partial

import anyio
from anyio.abc import TaskStatus
from anyio.to_thread import run_sync
from sqlalchemy import delete, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from tenantkit.context import bound_tenant
from tenantkit.errors import TenantNotFound
from tenantkit.tenants import TenantStore
from tenantkit.types import Identity, TenantConfig

from ..db import Database
from ..models import DeliveryQueue, EventDelivery, OutboxEvent, utcnow
from .handlers import HANDLERS, Handler

log = logging.getLogger("starlette_app.outbox")
LEASE_SECONDS = 60
MAX_BACKOFF_SECONDS = 300.0
BATCH = 100


class OutboxWorker:
    """Claim due deliveries, run their handlers, record the outcome."""

    def __init__(
        self,
        db: Database,
        tenants: TenantStore,
        *,
        handlers: Mapping[str, Handler] = HANDLERS,
        max_attempts: int = 5,
        backoff_seconds: float = 1.0,
        poll_seconds: float = 1.0,
    ) -> None:
        self.db = db
        self.tenants = tenants
        self.handlers = dict(handlers)
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.poll_seconds = poll_seconds
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"[:64]
        self._wake = anyio.Event()

    def kick(self) -> None:
        """Ask the worker to look for work now (call from the event loop)."""
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Work until cancelled: after each kick, and every ``poll_seconds``."""
        task_status.started()
        while True:
            with anyio.move_on_after(self.poll_seconds):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await run_sync(self.process_due)
            except Exception:  # the database may be down; try again next round
                log.exception("outbox round failed")

    def process_due(self) -> int:
        """Deliver every due delivery this worker can claim; return how many it ran."""
        done = 0
        while True:
            claimed = self._claim()
            for delivery_id, tenant_id in claimed:
                self._deliver(delivery_id, tenant_id)
            done += len(claimed)
            if len(claimed) < BATCH:
                return done

    def _claim(self) -> list[tuple[str, str]]:
        now = utcnow()
        free = or_(DeliveryQueue.locked_until.is_(None), DeliveryQueue.locked_until < now)
        claimed: list[tuple[str, str]] = []
        # The queue holds ids only, so this cross-tenant read needs no tenant.
        with self.db.engine.begin() as conn:
            due = conn.execute(
                select(DeliveryQueue.delivery_id, DeliveryQueue.tenant_id)
                .where(DeliveryQueue.due_at <= now, free)
                .order_by(DeliveryQueue.due_at)
                .limit(BATCH)
            ).all()
            for delivery_id, tenant_id in due:
                won = conn.execute(
                    update(DeliveryQueue)
                    .where(DeliveryQueue.delivery_id == delivery_id, free)
                    .values(
                        locked_until=now + timedelta(seconds=LEASE_SECONDS),
                        locked_by=self.worker_id,
                    )
                )
                if won.rowcount == 1:
                    claimed.append((delivery_id, tenant_id))
        return claimed

    def _deliver(self, delivery_id: str, tenant_id: str) -> None:
        try:
            tenant = self.tenants.get(tenant_id)
        except TenantNotFound:  # the tenant was deleted with its events
            with self.db.engine.begin() as conn:
                _dequeue(conn, delivery_id)
            return
        identity = Identity(tenant_id=tenant_id, source="system", subject="outbox-worker")
        with bound_tenant(tenant, identity=identity):
            try:
                self.db.transaction(
                    partial(self._run_handler, delivery_id=delivery_id, tenant=tenant)
                )
            except Exception as exc:
                self.db.transaction(partial(self._failed, delivery_id=delivery_id, exc=exc))

    def _run_handler(self, session: Session, delivery_id: str, tenant: TenantConfig) -> None:
        delivery = session.get(EventDelivery, delivery_id)
        if delivery is None or delivery.status in ("done", "dead"):
            _dequeue(session.connection(), delivery_id)
            return
        event = session.scalars(
            select(OutboxEvent).where(OutboxEvent.id == delivery.event_id)
        ).one()
        handler = self.handlers.get(delivery.handler)
        if handler is None:
            raise LookupError(f"no handler named {delivery.handler!r}")
        handler(session, event, tenant)
        delivery.attempts += 1
        delivery.status = "done"
        delivery.last_error = None
        delivery.next_attempt_at = None
        delivery.completed_at = utcnow()
        _dequeue(session.connection(), delivery_id)

    def _failed(self, session: Session, delivery_id: str, exc: Exception) -> None:
        delivery = session.get(EventDelivery, delivery_id)
        if delivery is None:
            return
        delivery.attempts += 1
        delivery.last_error = f"{type(exc).__name__}: {exc}"[:2000]
        if delivery.attempts >= self.max_attempts:
            delivery.status = "dead"
            delivery.next_attempt_at = None
            _dequeue(session.connection(), delivery_id)
            log.error(
                "dead-lettered %s delivery %s after %d attempts: %s",
                delivery.handler,
                delivery_id,
                delivery.attempts,
                delivery.last_error,
            )
            return
        due = utcnow() + timedelta(seconds=self.backoff(delivery.attempts))
        delivery.status = "retrying"
        delivery.next_attempt_at = due
        session.connection().execute(
            update(DeliveryQueue)
            .where(DeliveryQueue.delivery_id == delivery_id)
            .values(due_at=due, locked_until=None, locked_by=None)
        )
        log.warning(
            "%s delivery %s failed (attempt %d of %d), retrying at %s: %s",
            delivery.handler,
            delivery_id,
            delivery.attempts,
            self.max_attempts,
            due.isoformat(),
            delivery.last_error,
        )

    def backoff(self, attempts: int) -> float:
        """Seconds before retry number ``attempts``: doubling, capped, with ±20 % jitter."""
        base = min(self.backoff_seconds * 2.0 ** (attempts - 1), MAX_BACKOFF_SECONDS)
        return base * random.uniform(0.8, 1.2)


def _dequeue(conn: Connection, delivery_id: str) -> None:
    conn.execute(delete(DeliveryQueue).where(DeliveryQueue.delivery_id == delivery_id))
