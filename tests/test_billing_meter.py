"""Meter sync: usage reaches Stripe's Billing Meters once, with a status per event."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import stripe
from sqlalchemy import Engine, select
from tests.stripe_local.dbs import engine_for, sessions, tenant_id, wipe
from tests.stripe_local.fixtures import LocalStripe, running_localstripe

from tenantkit._db import utcnow
from tenantkit.billing import MeterSync, StripeBilling, SyncProgress
from tenantkit.context import bound_tenant
from tenantkit.errors import ConfigurationError
from tenantkit.usage import UsageEvent, UsageRecorder


class Clock:
    """A settable clock that starts at the real time (the meter server checks real time)."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


class Crash(BaseException):
    """The process dies here."""


@pytest.fixture(scope="module")
def local_stripe() -> Iterator[LocalStripe]:
    """localstripe with the meter endpoints, on 127.0.0.1, for this module."""
    with running_localstripe() as server:
        yield server


@pytest.fixture(autouse=True)
def _meter_clock_reset(local_stripe: LocalStripe) -> Iterator[None]:
    yield
    local_stripe.set_meter_clock(0)
    local_stripe.fail_meter_requests(0)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/meter.db"
    else:
        url = request.getfixturevalue("postgres_url").render_as_string(hide_password=False)
    eng = engine_for(url)
    wipe(eng)  # the PostgreSQL database is shared by the whole test session
    yield eng
    eng.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tenant(local_stripe: LocalStripe, engine: Engine) -> str:
    """A tenant with a Stripe customer."""
    name = tenant_id()
    StripeBilling(local_stripe.client(), sessions(engine)).ensure_customer(name)
    return name


def _record(engine: Engine, tenant: str, quantity: int, **kw: object) -> str:
    with bound_tenant(tenant):
        return UsageRecorder(sessions(engine)).record("api_calls", quantity, **kw).id  # type: ignore[arg-type]


def _syncer(local_stripe: LocalStripe, engine: Engine, clock: Clock, **kw: object) -> MeterSync:
    return MeterSync(local_stripe.client(), sessions(engine), clock=clock, **kw)  # type: ignore[arg-type]


def _row(engine: Engine, event_id: str) -> UsageEvent:
    with sessions(engine)() as s:
        return s.scalars(select(UsageEvent).where(UsageEvent.id == event_id)).one()


def _sent_to_stripe(local_stripe: LocalStripe, ids: list[str]) -> dict[str, int]:
    return {k: v for k, v in local_stripe.meter_events_by_id().items() if k in ids}


def test_events_are_sent_once_with_their_id_as_identifier(
    local_stripe: LocalStripe, engine: Engine, clock: Clock, tenant: str
) -> None:
    """Each event becomes one meter event (identifier = event id); a second run sends none."""
    ids = [_record(engine, tenant, q) for q in (3, 5, 7)]
    result = _syncer(local_stripe, engine, clock).sync()
    assert (result.sent, result.failed, result.remaining) == (3, 0, 0)
    assert _sent_to_stripe(local_stripe, ids) == dict(zip(ids, (3, 5, 7), strict=True))
    before = local_stripe.meter_requests()
    assert _syncer(local_stripe, engine, clock).sync().sent == 0
    assert local_stripe.meter_requests() == before
    row = _row(engine, ids[0])
    assert (row.meter_status, row.meter_attempts, row.meter_error) == ("sent", 1, None)
    events = {e["identifier"]: e for e in local_stripe.meter_events()}
    customer = StripeBilling(local_stripe.client(), sessions(engine)).ensure_customer(tenant)
    assert events[ids[0]]["payload"]["stripe_customer_id"] == customer
    assert events[ids[0]]["event_name"] == "api_calls"


def test_types_without_a_meter_are_skipped_with_the_reason(
    local_stripe: LocalStripe, engine: Engine, clock: Clock, tenant: str
) -> None:
    """A usage type with no configured meter is marked skipped, never sent."""
    with bound_tenant(tenant):
        event = UsageRecorder(sessions(engine)).record("compute", 2)
    result = _syncer(local_stripe, engine, clock).sync()
    row = _row(engine, event.id)
    assert result.skipped == 1 and row.meter_status == "skipped"
    assert row.meter_error is not None and "compute" in row.meter_error


def test_events_older_than_35_days_fail_with_the_reason(
    local_stripe: LocalStripe, engine: Engine, clock: Clock, tenant: str
) -> None:
    """An event outside Stripe's 35-day window is failed locally and never sent."""
    old = _record(engine, tenant, 4, occurred_at=clock.now - timedelta(days=36))
    edge = _record(engine, tenant, 6, occurred_at=clock.now - timedelta(days=34, hours=23))
    before = local_stripe.meter_requests()
    result = _syncer(local_stripe, engine, clock).sync()
    assert (result.sent, result.failed) == (1, 1)
    assert local_stripe.meter_requests() == before + 1
    row = _row(engine, old)
    assert row.meter_status == "failed" and "35 days" in (row.meter_error or "")
    assert _sent_to_stripe(local_stripe, [old, edge]) == {edge: 6}


def test_transient_failures_back_off_exponentially(
    local_stripe: LocalStripe, engine: Engine, clock: Clock, tenant: str
) -> None:
    """Two 500s push the next attempt 30 s then 60 s out; the third attempt is sent once."""
    event_id = _record(engine, tenant, 9)
    syncer = _syncer(local_stripe, engine, clock)
    local_stripe.fail_meter_requests(2)
    assert syncer.sync().retrying == 1
    first = _row(engine, event_id)
    assert first.meter_status == "pending" and first.meter_next_attempt_at == clock.now + timedelta(
        seconds=30
    )
    assert syncer.sync().retrying == 0  # not due yet
    clock.now += timedelta(seconds=30)
    syncer.sync()
    assert _row(engine, event_id).meter_next_attempt_at == clock.now + timedelta(seconds=60)
    clock.now += timedelta(seconds=60)
    assert syncer.sync().sent == 1
    row = _row(engine, event_id)
    assert (row.meter_status, row.meter_attempts) == ("sent", 3)
    assert _sent_to_stripe(local_stripe, [event_id]) == {event_id: 9}


def test_gives_up_after_max_attempts(
    local_stripe: LocalStripe, engine: Engine, clock: Clock, tenant: str
) -> None:
    """After max_attempts transient failures the event is failed with the last error."""
    event_id = _record(engine, tenant, 1)
    syncer = _syncer(local_stripe, engine, clock, max_attempts=2)
    local_stripe.fail_meter_requests(5)
    syncer.sync()
    clock.now += timedelta(minutes=1)
    assert syncer.sync().failed == 1
    row = _row(engine, event_id)
    assert row.meter_status == "failed" and "gave up after 2 attempts" in (row.meter_error or "")


def test_a_tenant_without_customer_waits_then_is_sent(
    local_stripe: LocalStripe, engine: Engine, clock: Clock
) -> None:
    """Usage of a tenant with no Stripe customer yet is retried until the customer exists."""
    name = tenant_id()
    event_id = _record(engine, name, 2)
    syncer = _syncer(local_stripe, engine, clock)
    assert syncer.sync().retrying == 1
    assert "no Stripe customer" in (_row(engine, event_id).meter_error or "")
    StripeBilling(local_stripe.client(), sessions(engine)).ensure_customer(name)
    clock.now += timedelta(seconds=30)
    assert syncer.sync().sent == 1


class CrashAfterSend(MeterSync):
    """A sync run whose process dies after Stripe accepted the event, before our write."""

    def _write(self, event: UsageEvent, values: object) -> None:
        raise Crash

    def _release(self, events: list[UsageEvent]) -> None:
        pass  # a dead process releases nothing


def test_a_crash_after_send_is_not_billed_twice_on_restart(
    local_stripe: LocalStripe, engine: Engine, clock: Clock, tenant: str
) -> None:
    """The event stays 'sending'; the restarted run resends it and Stripe keeps one event."""
    event_id = _record(engine, tenant, 8)
    with pytest.raises(Crash):
        CrashAfterSend(local_stripe.client(), sessions(engine), clock=clock).sync()
    assert _row(engine, event_id).meter_status == "sending"
    restarted = _syncer(local_stripe, engine, clock)
    assert restarted.sync().sent == 0  # a claim younger than stale_after may still be live
    clock.now += timedelta(minutes=11)
    assert restarted.sync().sent == 1
    assert _row(engine, event_id).meter_status == "sent"
    assert _sent_to_stripe(local_stripe, [event_id]) == {event_id: 8}
    assert [e["identifier"] for e in local_stripe.meter_events()].count(event_id) == 1


def test_an_identifier_stripe_already_has_counts_as_sent(
    local_stripe: LocalStripe, engine: Engine, clock: Clock, tenant: str
) -> None:
    """Stripe's 'event already exists with identifier' answer is recorded as sent, not failed."""
    event_id = _record(engine, tenant, 4)
    customer = StripeBilling(local_stripe.client(), sessions(engine)).ensure_customer(tenant)
    params: Any = {
        "event_name": "api_calls",
        "identifier": event_id,
        "payload": {"stripe_customer_id": customer, "value": "4"},
    }
    local_stripe.client().v1.billing.meter_events.create(params=params)
    result = _syncer(local_stripe, engine, clock).sync()
    assert (result.sent, result.duplicates, result.failed) == (1, 1, 0)
    row = _row(engine, event_id)
    assert row.meter_status == "sent" and "already had" in (row.meter_error or "")
    assert [e["identifier"] for e in local_stripe.meter_events()].count(event_id) == 1


def test_a_crash_older_than_stripes_memory_is_failed_not_resent(
    local_stripe: LocalStripe, engine: Engine, clock: Clock, tenant: str
) -> None:
    """Past Stripe's ~24 h identifier memory a blind resend could double-bill: fail it."""
    event_id = _record(engine, tenant, 5)
    with pytest.raises(Crash):
        CrashAfterSend(local_stripe.client(), sessions(engine), clock=clock).sync()
    local_stripe.set_meter_clock(25 * 3600)
    clock.now += timedelta(hours=25)
    before = local_stripe.meter_requests()
    result = _syncer(local_stripe, engine, clock).sync()
    row = _row(engine, event_id)
    assert result.sent == 0 and local_stripe.meter_requests() == before
    assert row.meter_status == "failed" and "outcome unknown" in (row.meter_error or "")


def test_concurrent_runs_never_send_an_event_twice(
    local_stripe: LocalStripe, engine: Engine, clock: Clock, tenant: str
) -> None:
    """Two sync runs at once split the events between them; each is requested once."""
    ids = [_record(engine, tenant, i + 1) for i in range(12)]
    before = local_stripe.meter_requests()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            _syncer(local_stripe, engine, clock, batch_size=3).sync()
        except BaseException as exc:  # re-raised by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert local_stripe.meter_requests() == before + 12
    assert _sent_to_stripe(local_stripe, ids) == {e: i + 1 for i, e in enumerate(ids)}


def test_progress_is_reported_per_event(
    local_stripe: LocalStripe, engine: Engine, clock: Clock, tenant: str
) -> None:
    """The progress callback sees every event, in batches, up to the total."""
    for q in range(5):
        _record(engine, tenant, q + 1)
    seen: list[SyncProgress] = []
    _syncer(local_stripe, engine, clock, batch_size=2).sync(progress=seen.append)
    assert [p.done for p in seen] == [1, 2, 3, 4, 5]
    assert seen[-1].total == 5 and seen[-1].sent == 5


def test_a_wrong_api_key_stops_the_run_and_keeps_events_pending(
    local_stripe: LocalStripe, engine: Engine, clock: Clock, tenant: str
) -> None:
    """An authentication failure is a configuration error; nothing is marked failed."""
    event_id = _record(engine, tenant, 1)
    bad = stripe.StripeClient(
        "rk_wrong", base_addresses={"api": local_stripe.url}, max_network_retries=0
    )
    with pytest.raises(ConfigurationError):
        MeterSync(bad, sessions(engine), clock=clock).sync()
    row = _row(engine, event_id)
    assert (row.meter_status, row.meter_attempts) == ("pending", 0)


def test_retry_failed_requeues_events(
    local_stripe: LocalStripe, engine: Engine, clock: Clock, tenant: str
) -> None:
    """Failed events can be queued again once their cause is fixed."""
    event_id = _record(engine, tenant, 1)
    syncer = _syncer(local_stripe, engine, clock, max_attempts=1)
    local_stripe.fail_meter_requests(1)
    assert syncer.sync().failed == 1
    assert syncer.retry_failed(tenant_id=tenant) == 1
    assert syncer.sync().sent == 1
    assert _row(engine, event_id).meter_status == "sent"
