"""Push usage events to Stripe Billing Meters exactly once, with a status per event.

Each event is sent as a meter event whose ``identifier`` is the usage event
id. A run claims a batch (status ``sending``), sends each event and writes its
outcome at once. A run that dies after Stripe accepted an event but before the
status write leaves it ``sending``; the next run resends it after
``stale_after`` and Stripe refuses the repeated identifier, which we record as
sent. Stripe remembers identifiers for about a day, so an event left
``sending`` for longer than ``dedup_window`` is not resent blindly: it is
marked failed ("outcome unknown") for a person to reconcile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import stripe
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from ._billing_models import BillingAccount
from ._db import utcnow
from ._stripe_errors import is_duplicate_meter_event, is_transient, translate
from ._usage_models import UsageEvent

logger = logging.getLogger("tenantkit.billing")

STRIPE_PAST_WINDOW = timedelta(days=35)
STRIPE_FUTURE_WINDOW = timedelta(minutes=5)
# Leave room for the request's own transit so an event at the edge is not refused.
WINDOW_MARGIN = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class SyncProgress:
    """Where a sync run is: events handled so far out of ``total`` claimable at the start."""

    total: int
    done: int
    sent: int
    failed: int
    skipped: int
    retrying: int


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What a sync run did: events sent (``duplicates`` of them already known to Stripe)."""

    sent: int = 0
    duplicates: int = 0
    failed: int = 0
    skipped: int = 0
    retrying: int = 0
    remaining: int = 0


class MeterSync:
    """Send pending usage events to Stripe as Billing Meter events.

    ``event_names`` maps a usage type to the ``event_name`` of a Stripe meter
    (types not in it are ``skipped``). Transient failures are retried with
    exponential backoff (``base_delay`` doubling up to ``max_delay``) until
    ``max_attempts``; permanent ones are ``failed`` with Stripe's reason.
    """

    def __init__(
        self,
        client: stripe.StripeClient,
        sessionmaker: Callable[[], Session],
        *,
        event_names: Mapping[str, str] | None = None,
        batch_size: int = 100,
        max_attempts: int = 8,
        base_delay: timedelta = timedelta(seconds=30),
        max_delay: timedelta = timedelta(hours=6),
        stale_after: timedelta = timedelta(minutes=10),
        dedup_window: timedelta = timedelta(hours=23),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if batch_size <= 0 or max_attempts <= 0:
            raise ValueError("batch_size and max_attempts must be positive")
        self._client = client
        self._sessionmaker = sessionmaker
        self.event_names = dict(event_names or {"api_calls": "api_calls"})
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.stale_after = stale_after
        self.dedup_window = dedup_window
        self._clock = clock

    def backoff(self, attempts: int) -> timedelta:
        """Return the wait after the ``attempts``-th failed try (30 s, 1 min, 2 min, ...)."""
        delay: timedelta = self.base_delay * (2 ** max(0, attempts - 1))
        return min(delay, self.max_delay)

    def claimable(self) -> int:
        """Return how many events a run would try now."""
        with self._sessionmaker() as session:
            return int(session.scalar(select(func.count(UsageEvent.id)).where(self._due())) or 0)

    def sync(
        self,
        *,
        limit: int | None = None,
        progress: Callable[[SyncProgress], None] | None = None,
    ) -> SyncResult:
        """Send due events in batches until none is left (or ``limit`` were handled)."""
        self._give_up_on_unknown_outcomes()
        total = self.claimable() if limit is None else min(limit, self.claimable())
        counts = dict(sent=0, duplicates=0, failed=0, skipped=0, retrying=0)
        done = 0
        while limit is None or done < limit:
            size = self.batch_size if limit is None else min(self.batch_size, limit - done)
            batch = self._claim(size)
            if not batch:
                break
            for index, event in enumerate(batch):
                try:
                    outcome = self._send(event)
                except BaseException:
                    # This event's outcome is unknown: it stays ``sending`` and is
                    # resent after ``stale_after``; the rest were never tried.
                    self._release(batch[index + 1 :])
                    raise
                counts[outcome] += 1
                if outcome == "duplicates":
                    counts["sent"] += 1
                done += 1
                if progress is not None:
                    progress(SyncProgress(total=max(total, done), done=done, **_public(counts)))
        return SyncResult(remaining=self.claimable(), **counts)

    def retry_failed(self, *, tenant_id: str | None = None) -> int:
        """Queue failed events again (after fixing their cause); return how many."""
        with self._sessionmaker() as session, session.begin():
            stmt = update(UsageEvent).where(UsageEvent.meter_status == "failed")
            if tenant_id is not None:
                stmt = stmt.where(UsageEvent.tenant_id == tenant_id)
            result = session.execute(
                stmt.values(
                    meter_status="pending", meter_attempts=0, meter_next_attempt_at=None
                ).execution_options(synchronize_session=False)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def _due(self) -> Any:
        now = self._clock()
        return or_(
            and_(
                UsageEvent.meter_status == "pending",
                or_(
                    UsageEvent.meter_next_attempt_at.is_(None),
                    UsageEvent.meter_next_attempt_at <= now,
                ),
            ),
            and_(
                UsageEvent.meter_status == "sending",
                UsageEvent.meter_claimed_at <= now - self.stale_after,
            ),
        )

    def _claim(self, size: int) -> list[UsageEvent]:
        """Mark up to ``size`` due events ``sending`` and return those this run won.

        Each row is taken by a conditional UPDATE that re-checks it is still
        due, so two concurrent runs never both send an event (on PostgreSQL
        ``SKIP LOCKED`` also keeps them off each other's rows).
        """
        now = self._clock()
        with self._sessionmaker() as session, session.begin():
            query = select(UsageEvent.id).where(self._due()).order_by(UsageEvent.occurred_at)
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            candidates = list(session.scalars(query.limit(size)))
            won: list[str] = []
            for event_id in candidates:
                result = session.execute(
                    update(UsageEvent)
                    .where(UsageEvent.id == event_id, self._due())
                    .values(
                        meter_status="sending",
                        meter_claimed_at=now,
                        meter_attempts=UsageEvent.meter_attempts + 1,
                    )
                    .execution_options(synchronize_session=False)
                )
                if getattr(result, "rowcount", 0) == 1:
                    won.append(event_id)
            rows = list(
                session.scalars(
                    select(UsageEvent)
                    .where(UsageEvent.id.in_(won))
                    .order_by(UsageEvent.occurred_at, UsageEvent.id)
                )
            )
            session.expunge_all()
            return rows

    def _send(self, event: UsageEvent) -> str:
        now = self._clock()
        name = self.event_names.get(event.type)
        if name is None:
            return self._finish(event, "skipped", f"no Stripe meter for usage type {event.type!r}")
        if event.occurred_at < now - STRIPE_PAST_WINDOW + WINDOW_MARGIN:
            reason = "occurred_at is more than 35 days ago, outside Stripe's meter event window"
            return self._finish(event, "failed", reason)
        if event.occurred_at > now + STRIPE_FUTURE_WINDOW:
            return self._later(event, event.occurred_at - STRIPE_FUTURE_WINDOW, None, count=False)
        customer = self._customer(event.tenant_id)
        if customer is None:
            return self._retry(event, f"tenant {event.tenant_id!r} has no Stripe customer yet")
        params: Any = {
            "event_name": name,
            "identifier": event.id,
            "timestamp": int(event.occurred_at.timestamp()),
            "payload": {"stripe_customer_id": customer, "value": str(event.quantity)},
        }
        try:
            self._client.v1.billing.meter_events.create(
                params=params, options={"idempotency_key": f"tenantkit-meter-{event.id}"}
            )
        except stripe.StripeError as exc:
            if is_duplicate_meter_event(exc):
                self._finish(event, "sent", "Stripe already had this identifier")
                return "duplicates"
            if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
                self._release([event])  # certainly not sent: a wrong key stops the run
                raise translate(exc, "sending meter events") from exc
            if is_transient(exc):
                return self._retry(event, f"Stripe: {exc.user_message or exc}")
            return self._finish(event, "failed", f"Stripe refused it: {exc.user_message or exc}")
        return self._finish(event, "sent", None)

    def _finish(self, event: UsageEvent, status: str, reason: str | None) -> str:
        values: dict[str, Any] = {"meter_status": status, "meter_error": reason}
        values["meter_next_attempt_at"] = None
        if status == "sent":
            values["meter_sent_at"] = self._clock()
        self._write(event, values)
        return "sent" if status == "sent" else status

    def _retry(self, event: UsageEvent, reason: str) -> str:
        if event.meter_attempts >= self.max_attempts:
            return self._finish(
                event, "failed", f"gave up after {event.meter_attempts} attempts: {reason}"
            )
        return self._later(event, self._clock() + self.backoff(event.meter_attempts), reason)

    def _later(
        self, event: UsageEvent, when: datetime, reason: str | None, *, count: bool = True
    ) -> str:
        values: dict[str, Any] = {
            "meter_status": "pending",
            "meter_next_attempt_at": when,
            "meter_error": reason,
        }
        if not count:
            values["meter_attempts"] = event.meter_attempts - 1
        self._write(event, values)
        return "retrying"

    def _write(self, event: UsageEvent, values: Mapping[str, Any]) -> None:
        with self._sessionmaker() as session, session.begin():
            session.execute(update(UsageEvent).where(UsageEvent.id == event.id).values(**values))

    def _release(self, events: list[UsageEvent]) -> None:
        """Put claimed but unsent events back, without counting the aborted attempt."""
        with self._sessionmaker() as session, session.begin():
            for event in events:
                session.execute(
                    update(UsageEvent)
                    .where(UsageEvent.id == event.id, UsageEvent.meter_status == "sending")
                    .values(meter_status="pending", meter_attempts=event.meter_attempts - 1)
                )

    def _give_up_on_unknown_outcomes(self) -> None:
        cutoff = self._clock() - self.dedup_window
        reason = (
            "outcome unknown: a send was interrupted longer ago than Stripe de-duplicates "
            "identifiers; check the meter in Stripe, then retry_failed() if it is missing"
        )
        with self._sessionmaker() as session, session.begin():
            session.execute(
                update(UsageEvent)
                .where(UsageEvent.meter_status == "sending", UsageEvent.meter_claimed_at <= cutoff)
                .values(meter_status="failed", meter_error=reason)
            )

    def _customer(self, tenant_id: str) -> str | None:
        with self._sessionmaker() as session:
            return session.scalar(
                select(BillingAccount.stripe_customer_id).where(
                    BillingAccount.tenant_id == tenant_id
                )
            )


def _public(counts: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if k != "duplicates"}
