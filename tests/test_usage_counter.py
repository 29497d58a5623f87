"""The API-call counter: buffered in memory, flushed by size or interval, nothing lost."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from tests.stripe_local.dbs import engine_for, sessions, tenant_id

from tenantkit.context import bound_tenant
from tenantkit.errors import QuotaExceeded
from tenantkit.types import TenantConfig
from tenantkit.usage import ApiCallCounter, UsageEvent, UsageRecord, UsageRecorder

JAN_15 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


class Clocks:
    """A settable wall clock and monotonic clock."""

    def __init__(self) -> None:
        self.now = JAN_15
        self.mono = 0.0

    def wall(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = engine_for(f"sqlite:///{tmp_path}/counter.db")
    yield eng
    eng.dispose()


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def recorder(engine: Engine, clocks: Clocks) -> UsageRecorder:
    return UsageRecorder(sessions(engine), clock=clocks.wall)


def _counter(recorder: UsageRecorder, clocks: Clocks, **kw: Any) -> ApiCallCounter:
    kw.setdefault("background", False)
    kw.setdefault("max_pending", 1000)
    kw.setdefault("flush_interval", 10.0)
    return ApiCallCounter(recorder, clock=clocks.wall, monotonic=clocks.monotonic, **kw)


def _events(engine: Engine, tenant: str) -> list[UsageEvent]:
    with sessions(engine)() as s:
        return list(s.scalars(select(UsageEvent).where(UsageEvent.tenant_id == tenant)))


def test_add_writes_nothing_until_a_flush(
    recorder: UsageRecorder, clocks: Clocks, engine: Engine
) -> None:
    """Counting calls touches only memory; flush() writes one event with the sum."""
    tenant = tenant_id()
    counter = _counter(recorder, clocks)
    for _ in range(5):
        counter.add(tenant)
    assert _events(engine, tenant) == [] and counter.pending(tenant) == 5
    assert counter.flush() == 5
    [event] = _events(engine, tenant)
    assert (event.type, event.quantity, event.occurred_at) == ("api_calls", 5, JAN_15)
    counter.close()


def test_flushes_when_max_pending_is_reached(
    recorder: UsageRecorder, clocks: Clocks, engine: Engine
) -> None:
    """The add that fills the buffer flushes it."""
    tenant = tenant_id()
    counter = _counter(recorder, clocks, max_pending=3)
    counter.add(tenant)
    counter.add(tenant)
    assert _events(engine, tenant) == []
    counter.add(tenant)
    assert [e.quantity for e in _events(engine, tenant)] == [3]
    counter.close()


def test_flushes_when_the_interval_has_passed(
    recorder: UsageRecorder, clocks: Clocks, engine: Engine
) -> None:
    """After flush_interval seconds the next add flushes everything buffered."""
    tenant = tenant_id()
    counter = _counter(recorder, clocks, flush_interval=10.0)
    counter.add(tenant, 4)
    clocks.mono = 9.9
    counter.add(tenant)
    assert _events(engine, tenant) == []
    clocks.mono = 10.0
    counter.add(tenant)
    assert [e.quantity for e in _events(engine, tenant)] == [6]
    counter.close()


def test_close_persists_everything_and_is_idempotent(
    recorder: UsageRecorder, clocks: Clocks, engine: Engine
) -> None:
    """A clean shutdown writes the buffer; calls counted after close are written at once."""
    a, b = tenant_id("a"), tenant_id("b")
    counter = _counter(recorder, clocks)
    counter.add(a, 2)
    counter.add(b, 3)
    counter.close()
    counter.close()
    assert [e.quantity for e in _events(engine, a)] == [2]
    assert [e.quantity for e in _events(engine, b)] == [3]
    counter.add(a)
    assert sorted(e.quantity for e in _events(engine, a)) == [1, 2]


def test_concurrent_adds_with_the_background_flusher_lose_nothing(
    recorder: UsageRecorder, clocks: Clocks, engine: Engine
) -> None:
    """Eight threads counting 500 calls each, with size-triggered background flushes."""
    tenant = tenant_id()
    counter = ApiCallCounter(recorder, max_pending=97, flush_interval=3600.0, clock=clocks.wall)
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait()
        for _ in range(500):
            counter.add(tenant)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counter.close()
    assert sum(e.quantity for e in _events(engine, tenant)) == 4000
    assert counter.pending() == 0


class CommitThenFail(UsageRecorder):
    """A recorder whose first write commits and then reports a failure (a lost reply)."""

    failed = False

    def record(self, *args: Any, **kwargs: Any) -> UsageRecord:
        rec = super().record(*args, **kwargs)
        if not self.failed:
            self.failed = True
            raise ConnectionError("reply lost after commit")
        return rec


def test_a_failed_flush_is_retried_with_the_same_key(
    engine: Engine, clocks: Clocks, caplog: pytest.LogCaptureFixture
) -> None:
    """A chunk whose write outcome is unknown is retried under its key: counted once."""
    tenant = tenant_id()
    counter = _counter(CommitThenFail(sessions(engine), clock=clocks.wall), clocks)
    counter.add(tenant, 7)
    assert counter.flush() == 0
    assert counter.pending(tenant) == 7 and "could not persist" in caplog.text
    counter.add(tenant, 1)
    assert counter.flush() == 8
    assert sorted(e.quantity for e in _events(engine, tenant)) == [1, 7]
    counter.close()


def test_calls_buffered_across_a_cycle_end_stay_in_their_cycle(
    recorder: UsageRecorder, clocks: Clocks, engine: Engine
) -> None:
    """January's buffered calls flushed in February are dated at January's last instant."""
    tenant = tenant_id()
    counter = _counter(recorder, clocks)
    clocks.now = datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC)
    counter.add(tenant, 2)
    clocks.now = datetime(2026, 2, 1, 0, 0, 1, tzinfo=UTC)
    counter.add(tenant, 3)
    counter.close()
    dates = sorted((e.occurred_at, e.quantity) for e in _events(engine, tenant))
    assert dates == [
        (datetime(2026, 2, 1, tzinfo=UTC) - timedelta(microseconds=1), 2),
        (clocks.now, 3),
    ]


def test_cycle_count_and_hard_cap_check(recorder: UsageRecorder, clocks: Clocks) -> None:
    """The cap check sees persisted plus buffered calls and refuses Free's 10,001st."""
    tenant = tenant_id()
    with bound_tenant(tenant):
        recorder.record("api_calls", 9_998)
    counter = _counter(recorder, clocks)
    config = TenantConfig(id=tenant, name="T", plan="free")
    counter.add(tenant)
    assert counter.cycle_count(tenant) == 9_999
    counter.check(config)
    counter.add(tenant)
    counter.flush()
    assert counter.cycle_count(tenant) == 10_000
    with pytest.raises(QuotaExceeded) as info:
        counter.check(config)
    assert int(info.value.headers["Retry-After"]) == 16 * 86400 + 12 * 3600
    counter.close()


def test_add_refuses_a_malformed_tenant_or_count(recorder: UsageRecorder, clocks: Clocks) -> None:
    """A bad tenant id or a non-positive count is refused before it is buffered."""
    counter = _counter(recorder, clocks)
    with pytest.raises(ValueError):
        counter.add("Not A Tenant")
    with pytest.raises(ValueError):
        counter.add(tenant_id(), 0)
    assert counter.pending() == 0
    counter.close()
