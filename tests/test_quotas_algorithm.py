"""The algorithm on a fake clock: the admission bound, exact Retry-After, bounded memory."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests._queue_model import QueueModel, engine_tat

from tenantkit.errors import QuotaExceeded
from tenantkit.quotas import Grant, Limit, QuotaEngine
from tenantkit.settings import QuotaSettings


class FakeClock:
    """Time in whole milliseconds, handed out as float seconds."""

    def __init__(self) -> None:
        self.ms = 5_000_000

    def __call__(self) -> float:
        return self.ms / 1000


def engine_on(clock: FakeClock, burst_seconds: float = 0.0, **kw: object) -> QuotaEngine:
    return QuotaEngine(QuotaSettings(burst_seconds=burst_seconds), clock=clock, **kw)  # type: ignore[arg-type]


def budget(per_minute: int, key: str = "{t}:tokens") -> Limit:
    return Limit("tenant-tokens", key, "tokens", per_minute)


def try_acquire(engine: QuotaEngine, limit: Limit, tokens: int) -> Grant | None:
    try:
        return engine.acquire([limit], tokens=tokens)
    except QuotaExceeded:
        return None


def assert_within_bound(
    events: Sequence[Sequence[int]], per_minute: int, burst_seconds: float
) -> None:
    """Units of ``(ms, units)`` events, summed over every interval, stay in burst + q·Δ/60."""
    burst = Fraction(per_minute) * (60 + Fraction(burst_seconds)) / 60
    for i, (start, _) in enumerate(events):
        total = 0
        for end, units in events[i:]:
            total += units
            assert total <= burst + Fraction(per_minute * (end - start), 60_000)


operation = st.tuples(
    st.integers(min_value=0, max_value=20_000),  # milliseconds to advance
    st.integers(min_value=0, max_value=3),  # 0-2 acquire, 3 settle an open grant
    st.floats(min_value=0, max_value=1.2),  # cost (or tokens used) as a share of q
)


@settings(max_examples=200, deadline=None)
@given(
    per_minute=st.integers(min_value=1, max_value=5_000),
    burst_seconds=st.sampled_from([0.0, 0.5, 7.0, 30.0]),
    operations=st.lists(operation, min_size=1, max_size=60),
)
def test_admitted_cost_is_bounded(
    per_minute: int, burst_seconds: float, operations: list[tuple[int, int, float]]
) -> None:
    """Over any interval Δ, charges minus refunds stay within burst + q·Δ/60."""
    clock = FakeClock()
    engine = engine_on(clock, burst_seconds)
    limit = budget(per_minute)
    events: list[tuple[int, int]] = []  # (ms, net units charged at that instant)
    open_grants: list[Grant] = []
    for advance, kind, share in operations:
        clock.ms += advance
        amount = int(share * per_minute)
        if kind < 3:
            grant = try_acquire(engine, limit, amount)
            if grant is not None:
                events.append((clock.ms, grant.costs[0]))
                open_grants.append(grant)
        elif open_grants:
            grant = open_grants.pop(0)
            used = min(amount, grant.costs[0])
            fresh = clock.ms / 1000 - grant.stamp <= engine.settings.reservation_ttl_seconds
            engine.settle(grant, used)
            events.append((clock.ms, -(grant.costs[0] - used) if fresh else 0))
    assert_within_bound(events, per_minute, burst_seconds)


settle_any = st.tuples(
    st.integers(min_value=0, max_value=20_000) | st.just(0),  # milliseconds to advance
    st.integers(min_value=0, max_value=3),  # 0-2 acquire, 3 settle an open grant
    st.floats(min_value=0, max_value=1.2),  # cost (or tokens used) as a share of q
    st.integers(min_value=0, max_value=59),  # which open grant settles (modulo their number)
)


@settings(max_examples=400, deadline=None)
@given(
    per_minute=st.integers(min_value=1, max_value=5_000),
    burst_seconds=st.sampled_from([0.0, 0.5, 7.0, 30.0]),
    operations=st.lists(settle_any, min_size=1, max_size=60),
)
def test_used_units_are_bounded(
    per_minute: int, burst_seconds: float, operations: list[tuple[int, int, float, int]]
) -> None:
    """Over any interval Δ, what the requests admitted in it really used stays within
    burst + q·Δ/60, however late their settles come and in whatever order.

    A settle makes the engine as if the request had reserved what it used: a refund
    must not give back capacity the refill already returned. Refunds up to
    reservation_ttl_seconds used to apply in full, past the bound; then a refund
    measured from its grant's end as admitted, which refunds of older grants had
    since moved back (the example below).
    """
    clock = FakeClock()
    engine = engine_on(clock, burst_seconds)
    limit = budget(per_minute)
    admitted: list[list[int]] = []  # [ms, units used (the reservation until settled)]
    open_grants: list[tuple[Grant, list[int]]] = []
    for advance, kind, share, which in operations:
        clock.ms += advance
        amount = int(share * per_minute)
        if kind < 3:
            grant = try_acquire(engine, limit, amount)
            if grant is not None:
                admitted.append([clock.ms, grant.costs[0]])
                open_grants.append((grant, admitted[-1]))
        elif open_grants:
            grant, event = open_grants.pop(which % len(open_grants))
            event[1] = min(amount, grant.costs[0])
            engine.settle(grant, event[1])
    assert_within_bound(admitted, per_minute, burst_seconds)


@settings(max_examples=1_000, deadline=None)
@given(
    per_minute=st.integers(min_value=1, max_value=5_000) | st.integers(min_value=1, max_value=8),
    burst_seconds=st.sampled_from([0.0, 7.0]),
    oldest_first=st.booleans(),
    operations=st.lists(settle_any, min_size=1, max_size=60),
)
def test_refunds_give_back_exactly_the_charge_still_ahead(
    per_minute: int,
    burst_seconds: float,
    oldest_first: bool,
    operations: list[tuple[int, int, float, int]],
) -> None:
    """Against the exact queue of charges, whatever order grants settle in: the bucket
    is the queue exactly. Never below it (a refund never credits time the refill
    returned), never above (no refund is lost)."""
    clock = FakeClock()
    engine = engine_on(clock, burst_seconds)
    limit = budget(per_minute)
    model = QueueModel(per_minute)
    open_grants: list[Grant] = []
    for advance, kind, share, which in operations:
        clock.ms += advance
        now = Fraction(clock.ms, 1000)
        amount = int(share * per_minute)
        if kind < 3:
            grant = try_acquire(engine, limit, amount)
            if grant is not None:
                model.charge(now, grant, grant.costs[0])
                open_grants.append(grant)
        elif open_grants:
            grant = open_grants.pop(0 if oldest_first else which % len(open_grants))
            used = min(amount, 2 * grant.costs[0])
            fresh = now - Fraction(grant.stamp) <= engine.settings.reservation_ttl_seconds
            engine.settle(grant, used)
            if used > grant.costs[0]:
                model.charge(now, None, used - grant.costs[0])
            elif fresh:
                model.refund(now, grant, grant.costs[0] - used)
        assert engine_tat(engine, limit, now) == model.tat(now)


@pytest.mark.parametrize("seed", range(3))
def test_hundreds_in_flight_settle_exactly_past_the_log_size(seed: int) -> None:
    """300 reservations in flight (more than the 128 refunds a bucket logs), settled
    in random order as time passes: the bucket still is the exact queue of charges
    (merging the two closest logged refunds loses nothing when they are adjacent)."""
    rng = random.Random(seed)
    clock = FakeClock()
    engine = engine_on(clock)
    limit = budget(600_000)
    model = QueueModel(600_000)
    grants = []
    for _ in range(300):
        grant = engine.acquire([limit], tokens=1_000)
        model.charge(Fraction(clock.ms, 1000), grant, 1_000)
        grants.append(grant)
    rng.shuffle(grants)
    for grant in grants:
        clock.ms += rng.randint(0, 20)
        now = Fraction(clock.ms, 1000)
        used = rng.randint(0, 1_000)
        engine.settle(grant, used)
        model.refund(now, grant, 1_000 - used)
        assert engine_tat(engine, limit, now) == model.tat(now)


def test_refunds_in_admission_order_stay_within_the_bound() -> None:
    """8/min, no burst: 0, 4 and 1 tokens reserved at 0 s, the 4 refunded; at 7.5 s
    the bucket is full again (8 admitted). Refunding the 1 then gives nothing: its
    charge, moved back by the first refund, lay in [0 s, 7.5 s] and time has
    refilled it. Measured from its end as admitted (37.5 s) it gave back 7.5 s, and
    a ninth unit was admitted in the same instant."""
    clock = FakeClock()
    engine = engine_on(clock, 0.0)
    limit = budget(8)
    grants = [try_acquire(engine, limit, amount) for amount in (0, 4, 1)]
    assert all(grant is not None for grant in grants)
    engine.settle(grants[1], 0)  # type: ignore[arg-type]
    clock.ms += 7_500
    assert try_acquire(engine, limit, 8) is not None
    engine.settle(grants[2], 0)  # type: ignore[arg-type]
    assert try_acquire(engine, limit, 1) is None


@settings(max_examples=200, deadline=None)
@given(
    per_minute=st.integers(min_value=1, max_value=100_000),
    burst_seconds=st.sampled_from([0.0, 1.5, 20.0]),
    prefill=st.lists(st.tuples(st.integers(0, 5_000), st.floats(0, 1)), min_size=1, max_size=10),
    ask=st.floats(min_value=0, max_value=1),
)
def test_retry_after_is_exact(
    per_minute: int, burst_seconds: float, prefill: list[tuple[int, float]], ask: float
) -> None:
    """A denied request passes at exactly Retry-After seconds later, not one second earlier."""
    clock = FakeClock()
    engine = engine_on(clock, burst_seconds)
    limit = budget(per_minute)
    for advance, share in prefill:
        clock.ms += advance
        try_acquire(engine, limit, int(share * per_minute))
    tokens = int(ask * per_minute)
    try:
        engine.acquire([limit], tokens=tokens)
    except QuotaExceeded as exc:
        retry = int(exc.headers["Retry-After"])
        assert retry >= 1
        assert exc.extra["retry_after"] == retry
        denied_at = clock.ms
        clock.ms = denied_at + (retry - 1) * 1000
        assert try_acquire(engine, limit, tokens) is None
        clock.ms = denied_at + retry * 1000
        assert try_acquire(engine, limit, tokens) is not None


def test_retry_after_example() -> None:
    """10 requests a minute, all spent: the 11th may come back in exactly 6 s."""
    clock = FakeClock()
    engine = engine_on(clock)
    limit = Limit("tenant-requests", "{t}:requests", "requests", 10)
    for _ in range(10):
        engine.acquire([limit], tokens=0)
    with pytest.raises(QuotaExceeded) as caught:
        engine.acquire([limit], tokens=0)
    assert caught.value.headers["Retry-After"] == "6"
    clock.ms += 5_999
    assert try_acquire(engine, limit, 0) is None
    clock.ms += 1
    assert try_acquire(engine, limit, 0) is not None


def test_default_burst_is_one_minute_of_quota() -> None:
    """With burst_seconds 0 the bucket holds exactly q: q pass at once, the next waits."""
    clock = FakeClock()
    engine = engine_on(clock)
    limit = Limit("tenant-requests", "{t}:requests", "requests", 60)
    for _ in range(60):
        engine.acquire([limit], tokens=0)
    assert try_acquire(engine, limit, 0) is None
    clock.ms += 1_000
    assert try_acquire(engine, limit, 0) is not None


def test_burst_seconds_extend_the_bucket() -> None:
    """burst_seconds=30 lets 60/min hold 90."""
    clock = FakeClock()
    engine = engine_on(clock, 30.0)
    limit = Limit("tenant-requests", "{t}:requests", "requests", 60)
    for _ in range(90):
        engine.acquire([limit], tokens=0)
    assert try_acquire(engine, limit, 0) is None


def test_stale_reservations_are_not_refunded() -> None:
    """A release later than reservation_ttl_seconds gives nothing back: the refill already did."""
    clock = FakeClock()
    engine = engine_on(clock)
    limit = budget(600)
    stale = engine.acquire([limit], tokens=600)
    clock.ms += 121_000
    engine.acquire([limit], tokens=600)
    engine.release(stale)
    assert try_acquire(engine, limit, 1) is None


def test_memory_is_capped() -> None:
    """Past max_keys the oldest buckets are evicted and counted."""
    clock = FakeClock()
    engine = engine_on(clock, max_keys=100)
    for i in range(1_000):
        engine.acquire([budget(10, key=f"{{t{i}}}:tokens")], tokens=1)
    stats = engine.stats
    assert stats.stored_keys <= 100
    assert stats.evicted_keys == 900


def test_full_buckets_are_dropped_without_a_sweeper() -> None:
    """Buckets that refilled are dropped as new keys arrive: memory tracks active keys only."""
    clock = FakeClock()
    engine = engine_on(clock)
    for i in range(1_000):
        engine.acquire([budget(600, key=f"{{old{i}}}:tokens")], tokens=10)
    clock.ms += 61_000
    for i in range(1_000):
        engine.acquire([budget(600, key=f"{{new{i}}}:tokens")], tokens=10)
    stats = engine.stats
    assert stats.stored_keys == 1_000
    assert stats.evicted_keys == 0


@pytest.mark.parametrize("per_minute", [7, 13, 101, 999, 1000])
def test_quotas_that_do_not_divide_the_minute_admit_exactly_q(per_minute: int) -> None:
    """q = 7 (60/7 s a unit, no whole number of ns): q pass at once, r counts q-1 .. 0.

    Rounding each unit's charge up made q units cost more than the minute: 7/min
    admitted 6 at once and ``r`` said one less than was left. Minute after minute
    the bucket is full again exactly, so the error cannot accumulate either.
    """
    clock = FakeClock()
    engine = engine_on(clock)
    limit = Limit("tenant-requests", "{t}:requests", "requests", per_minute)
    burst = engine.capacity(limit)
    assert burst == per_minute
    for _ in range(10):
        left = [engine.acquire([limit], tokens=0).remaining[0] for _ in range(per_minute)]
        assert left == list(range(per_minute - 1, -1, -1))
        with pytest.raises(QuotaExceeded) as caught:
            engine.acquire([limit], tokens=0)
        assert caught.value.extra["retry_after"] == math.ceil(Fraction(60, per_minute))
        assert '"tenant-requests";r=0;t=60' in caught.value.headers["RateLimit"]
        clock.ms += 60_000


@pytest.mark.parametrize("per_minute", [7, 13, 999])
def test_token_charges_and_refunds_are_exact(per_minute: int) -> None:
    """Reserving 1 token q times, then settling each at 0, leaves the bucket exactly full."""
    clock = FakeClock()
    engine = engine_on(clock)
    limit = budget(per_minute)
    grants = [engine.acquire([limit], tokens=1) for _ in range(per_minute)]
    assert grants[-1].remaining == [0]
    assert try_acquire(engine, limit, 1) is None
    for grant in grants:
        engine.settle(grant, 0)
    assert engine.acquire([limit], tokens=per_minute).remaining == [0]


def test_a_plan_change_reads_the_bucket_under_the_new_quota() -> None:
    """A key charged under q = 999 and read under q = 7 keeps its level (within a ns)."""
    clock = FakeClock()
    engine = engine_on(clock)
    engine.acquire([budget(999)], tokens=500)  # 30.03 s of the bucket
    # (60 - 30.03) s at 7 a minute is 3.49 units.
    assert engine.acquire([budget(7)], tokens=0).remaining == [3]
