"""The quota engine over every backend: all-or-nothing, reservations, settling, headers.

Memory runs on a fake clock. Redis takes time from the server, so these tests
use quotas whose refill during a test run is far below one unit, and where a
count could move with wall time they bound it by the refill the elapsed time allows.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any

import pytest

from tenantkit.errors import ConfigurationError, QuotaExceeded, ValidationError
from tenantkit.quotas import Grant, Limit, QuotaEngine
from tenantkit.settings import QuotaSettings

EngineFactory = Callable[..., QuotaEngine]


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_engine(
    request: pytest.FixtureRequest, backend: str, clock: FakeClock
) -> Iterator[EngineFactory]:
    """Build engines on the parametrized backend; Redis keys get a unique prefix."""
    engines: list[QuotaEngine] = []
    prefix = ""
    url = ""
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")

    def make(**settings: Any) -> QuotaEngine:
        if backend == "memory":
            engine = QuotaEngine(QuotaSettings(**settings), clock=clock)
        else:
            engine = QuotaEngine(QuotaSettings(storage_uri=url, **settings), key_prefix=prefix)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()
    if backend == "redis":
        import redis

        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


SERVER_TIME = """local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""


@pytest.fixture
def advance(
    request: pytest.FixtureRequest, backend: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> Callable[[float], None]:
    """Make time pass on the backend's clock: the fake one, or a fake Redis server time.

    For Redis, the Lua scripts read ``now`` from a key of this test instead of
    ``TIME`` (keys still expire on the real clock, after at least as long). The
    deny cache runs on this process's clock: advance only with no denial cached.
    """
    if backend == "memory":

        def tick(seconds: float) -> None:
            clock.now += seconds

        return tick
    import redis

    import tenantkit._quota_redis as quota_redis

    url = request.getfixturevalue("redis_url")
    key = request.getfixturevalue("redis_prefix") + ":fake-now"
    client = redis.Redis.from_url(url)
    request.addfinalizer(client.close)
    seconds, micros = client.time()
    client.set(key, seconds * 1_000_000 + micros)
    fake = f"local now = tonumber(redis.call('GET', '{key}'))\n"
    for name in ("ACQUIRE_LUA", "ADJUST_LUA"):
        script = getattr(quota_redis, name)
        assert SERVER_TIME in script
        monkeypatch.setattr(quota_redis, name, script.replace(SERVER_TIME, fake))

    def tick_redis(seconds: float) -> None:
        client.incrby(key, round(seconds * 1_000_000))

    return tick_redis


def requests_limit(name: str, per_minute: int, key: str = "{acme}:requests") -> Limit:
    return Limit(name, key, "requests", per_minute)


def tokens_limit(per_minute: int, key: str = "{acme}:tokens") -> Limit:
    return Limit("tenant-tokens", key, "tokens", per_minute)


def remaining_of(engine: QuotaEngine, limit: Limit) -> int:
    """Read a bucket's remaining units without charging it (a zero-token probe)."""
    probe = Limit(limit.name, limit.key, "tokens", limit.per_minute)
    grant = engine.acquire([probe], tokens=0)
    return grant.remaining[0]


def assert_remaining(backend: str, got: int, expected: int, per_minute: int, since: float) -> None:
    """Exact on memory; on Redis at most the refill the elapsed wall time allows on top."""
    if backend == "memory":
        assert got == expected
    else:
        slack = math.ceil(per_minute * (time.monotonic() - since) / 60)
        assert expected <= got <= expected + slack


TENANT_10 = requests_limit("tenant-requests", 10)
KEY_2 = requests_limit("key-requests", 2, key="{acme}:key:k1:requests")


@pytest.mark.parametrize("order", ["tenant-first", "key-first"])
def test_all_or_nothing(make_engine: EngineFactory, order: str) -> None:
    """A request denied by one limit charges none: the tenant counter does not move."""
    engine = make_engine()
    limits = [TENANT_10, KEY_2] if order == "tenant-first" else [KEY_2, TENANT_10]
    engine.acquire(limits, tokens=0)
    engine.acquire(limits, tokens=0)
    with pytest.raises(QuotaExceeded) as caught:
        engine.acquire(limits, tokens=0)
    assert caught.value.extra["limit"] == "key-requests"
    assert '"tenant-requests";r=8;' in caught.value.headers["RateLimit"]
    alone = engine.acquire([TENANT_10], tokens=0)
    assert alone.remaining == [7]


def test_costs_against_a_budget(make_engine: EngineFactory, backend: str) -> None:
    """Costs 90, 20, 5 against 100 tokens: admitted, rejected, admitted."""
    engine = make_engine()
    budget = tokens_limit(100)
    started = time.monotonic()
    engine.acquire([budget], tokens=90)
    with pytest.raises(QuotaExceeded) as caught:
        engine.acquire([budget], tokens=20)
    assert caught.value.extra["limit"] == "tenant-tokens"
    left = engine.acquire([budget], tokens=5).remaining[0]
    assert_remaining(backend, left, 5, 100, started)


def test_concurrent_reservations_then_settle(make_engine: EngineFactory, backend: str) -> None:
    """10 concurrent 10k reservations on 50k/min: 5 admitted; settled at 2k each, 40k remain."""
    engine = make_engine()
    budget = tokens_limit(50_000)
    started = time.monotonic()

    def reserve(_: int) -> Grant | None:
        try:
            return engine.acquire([budget], tokens=10_000)
        except QuotaExceeded:
            return None

    with ThreadPoolExecutor(max_workers=10) as pool:
        grants = [g for g in pool.map(reserve, range(10)) if g is not None]
    assert len(grants) == 5
    for grant in grants:
        assert engine.settle(grant, 2_000)
    assert_remaining(backend, remaining_of(engine, budget), 40_000, 50_000, started)


def test_concurrent_async_reservations(make_engine: EngineFactory, backend: str) -> None:
    """The same on the async path: gathered reservations admit exactly the budget."""
    engine = make_engine()
    budget = tokens_limit(50_000)

    async def run() -> list[Grant]:
        async def reserve() -> Grant | None:
            try:
                return await engine.acquire_async([budget], tokens=10_000)
            except QuotaExceeded:
                return None

        results = await asyncio.gather(*(reserve() for _ in range(10)))
        grants = [g for g in results if g is not None]
        for grant in grants:
            await engine.settle_async(grant, 2_000)
        await engine.aclose()
        return grants

    started = time.monotonic()
    assert len(asyncio.run(run())) == 5
    assert_remaining(backend, remaining_of(engine, budget), 40_000, 50_000, started)


def test_release_gives_the_reservation_back(make_engine: EngineFactory, backend: str) -> None:
    """Releasing a grant refunds its tokens but keeps its request counted."""
    engine = make_engine()
    requests, budget = TENANT_10, tokens_limit(50_000)
    started = time.monotonic()
    grant = engine.acquire([requests, budget], tokens=30_000)
    assert grant.remaining == [9, 20_000]
    assert engine.release(grant)
    assert_remaining(backend, remaining_of(engine, budget), 50_000, 50_000, started)
    assert engine.acquire([requests], tokens=0).remaining == [8]


@pytest.mark.parametrize(
    ("first", "wait", "second", "then", "left"),
    [
        (600, 61, 600, 29, 290),  # the first charge lies wholly in the past: nothing back
        (300, 40, 600, 10, 100),  # the same within 60 s of the admission
        (300, 10, 300, 0, 300),  # 10 of its 30 s have refilled: 200 of 300 tokens back
        (300, 0, 300, 0, 300),  # nothing has refilled yet: all back
    ],
)
def test_a_late_refund_gives_back_only_what_time_has_not(
    make_engine: EngineFactory,
    advance: Callable[[float], None],
    first: int,
    wait: float,
    second: int,
    then: float,
    left: int,
) -> None:
    """A release gives back only the part of its charge still ahead of now.

    At 600 tokens a minute: reserve ``first``, wait, reserve ``second``, wait, release
    the first. Time refills the bucket from its oldest charge on, so the part of the
    first charge behind now was already given back by the refill. Refunds used to
    apply in full for reservation_ttl_seconds (120 s): the bucket then held the
    whole first charge again on top of the refill, e.g. 600 tokens instead of 290
    left 29 s after the bucket was emptied, 1,200 admitted within 29 s.
    """
    engine = make_engine()
    budget = tokens_limit(600)  # 10 tokens a second
    stale = engine.acquire([budget], tokens=first)
    advance(wait)
    engine.acquire([budget], tokens=second)
    advance(then)
    assert engine.release(stale)
    assert remaining_of(engine, budget) == left


@pytest.mark.parametrize("order", [(0, 1, 2, 3, 4), (4, 3, 2, 1, 0), (2, 0, 4, 1, 3)])
def test_settles_in_any_order_give_back_every_unused_token(
    make_engine: EngineFactory, advance: Callable[[float], None], order: tuple[int, ...]
) -> None:
    """5 reservations of 10k on 50k/min settled at 2k each, in any order: 40k remain.

    Each refund is measured against where its charge ends after the refunds before
    it; a refund of a newer reservation must not shrink an older one's.
    """
    engine = make_engine()
    budget = tokens_limit(50_000)
    grants = [engine.acquire([budget], tokens=10_000) for _ in range(5)]
    advance(1)  # 1 s: 833 tokens refilled, every charge still ends ahead of now
    for i in order:
        assert engine.settle(grants[i], 2_000)
    assert remaining_of(engine, budget) == 40_000 + 833


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_refund_moved_back_by_an_older_one_credits_no_refilled_time(
    make_engine: EngineFactory, advance: Callable[[float], None]
) -> None:
    """8/min: 0, 4 and 1 reserved at once, the 4 refunded, and at 7.5 s the bucket is
    full (8 admitted). The 1's charge now lay in [0 s, 7.5 s]: its refund gives nothing.
    Measured from where it ended when admitted (37.5 s), it gave back 7.5 s: a ninth
    request passed in the same instant, past the bound of 8 a minute."""
    engine = make_engine()
    budget = tokens_limit(8)
    grants = [engine.acquire([budget], tokens=tokens) for tokens in (0, 4, 1)]
    assert engine.release(grants[1])
    advance(7.5)
    engine.acquire([budget], tokens=8)
    assert engine.release(grants[2])
    with pytest.raises(QuotaExceeded):
        engine.acquire([budget], tokens=1)


@pytest.mark.parametrize("backend", [pytest.param("redis", marks=pytest.mark.redis)])
@pytest.mark.parametrize("seed", range(4))
def test_redis_decides_as_memory_does(
    make_engine: EngineFactory, advance: Callable[[float], None], seed: int
) -> None:
    """Random admissions, settles in any order and time steps (whole ms): Redis and
    memory answer every step alike (admitted, remaining, reset, Retry-After)."""
    rng = random.Random(seed)
    burst = rng.choice([0.0, 7.0])
    redis_engine = make_engine(burst_seconds=burst)
    memory_clock = FakeClock()
    memory_engine = QuotaEngine(QuotaSettings(burst_seconds=burst), clock=memory_clock)
    limits = [tokens_limit(rng.choice([7, 600, 50_000])), tokens_limit(450, "{acme}:key-tokens")]
    open_grants: list[tuple[Grant, Grant]] = []
    for _ in range(150):
        step = rng.random()
        if step < 0.25:
            seconds = rng.randint(0, 9_000) / 1000
            advance(seconds)
            memory_clock.now += seconds
        elif step < 0.45 and open_grants:
            pair = open_grants.pop(rng.randrange(len(open_grants)))
            used = rng.randint(0, pair[0].reserved_tokens + 50)
            assert redis_engine.settle(pair[0], used) == memory_engine.settle(pair[1], used)
        else:
            tokens = rng.randint(0, 300)
            answers = []
            for engine in (redis_engine, memory_engine):
                try:
                    grant = engine.acquire(limits, tokens=tokens)
                    answers.append((grant, list(grant.remaining), list(grant.reset)))
                except QuotaExceeded as exc:
                    engine._backend.forget_denial(limits)  # decide the next one on Redis
                    answers.append((None, exc.extra["retry_after"], exc.extra["limit"]))
            assert answers[0][1:] == answers[1][1:]
            if answers[0][0] is not None and answers[1][0] is not None:
                open_grants.append((answers[0][0], answers[1][0]))
    memory_engine.close()


@pytest.mark.parametrize("backend", [pytest.param("redis", marks=pytest.mark.redis)])
def test_a_full_refund_log_merges_alike_on_redis_and_memory(
    make_engine: EngineFactory, advance: Callable[[float], None]
) -> None:
    """300 reservations in flight, released in random order as time passes: past the
    128 refunds a bucket logs, both backends merge the same ones and give back alike.
    Dropping the oldest instead left 565,500 of 600,000 at the end."""
    rng = random.Random(7)
    redis_engine = make_engine()
    memory_clock = FakeClock()
    memory_engine = QuotaEngine(QuotaSettings(), clock=memory_clock)
    budget = tokens_limit(600_000)
    pairs = [
        (
            redis_engine.acquire([budget], tokens=1_000),
            memory_engine.acquire([budget], tokens=1_000),
        )
        for _ in range(300)
    ]
    rng.shuffle(pairs)
    for n, (on_redis, in_memory) in enumerate(pairs):
        if n % 10 == 0:
            advance(0.05)
            memory_clock.now += 0.05
        assert redis_engine.release(on_redis) and memory_engine.release(in_memory)
        left = remaining_of(redis_engine, budget)
        assert left == remaining_of(memory_engine, budget) <= 600_000
    # Every reservation came back whole: the two closest merged are adjacent charges.
    assert left == 600_000
    memory_engine.close()


def test_settle_and_release_apply_once(make_engine: EngineFactory, backend: str) -> None:
    """A grant is settled or released once; later calls do nothing and say so."""
    engine = make_engine()
    started = time.monotonic()
    grant = engine.acquire([tokens_limit(1_000)], tokens=500)
    assert grant.open
    assert engine.settle(grant, 100)
    assert not grant.open
    assert not engine.settle(grant, 100)
    assert not engine.release(grant)
    left = engine.acquire([tokens_limit(1_000)], tokens=0).remaining[0]
    assert_remaining(backend, left, 900, 1_000, started)


def test_settling_more_than_reserved_charges_the_excess(
    make_engine: EngineFactory, backend: str
) -> None:
    """Used beyond the estimate is charged at once: the bucket goes into debt and denies."""
    engine = make_engine()
    budget = tokens_limit(60_000)  # 1,000 tokens a second
    grant = engine.acquire([budget], tokens=10_000)
    engine.settle(grant, 70_500)
    with pytest.raises(QuotaExceeded) as caught:
        engine.acquire([budget], tokens=0)
    # 10,500 tokens of debt plus the one needed: 10.501 s.
    retry = caught.value.extra["retry_after"]
    assert retry == 11 if backend == "memory" else 10 <= retry <= 11


def test_zero_token_request_needs_a_token_left(make_engine: EngineFactory) -> None:
    """A request reserving no tokens is still refused when the token budget is spent."""
    engine = make_engine()
    budget = tokens_limit(1)  # one token a minute: nothing refills during the test
    engine.acquire([budget], tokens=1)
    with pytest.raises(QuotaExceeded):
        engine.acquire([budget], tokens=0)


def test_reservation_is_clamped_to_the_bucket(make_engine: EngineFactory) -> None:
    """An estimate above the whole bucket reserves the bucket instead of never passing."""
    engine = make_engine()
    budget = tokens_limit(1_000)
    grant = engine.acquire([budget], tokens=5_000)
    assert grant.costs == [1_000]
    assert grant.reserved_tokens == 1_000
    assert grant.remaining == [0]


def test_zero_quota_denies(make_engine: EngineFactory) -> None:
    """A quota of 0 per minute admits nothing and asks to retry in a minute."""
    engine = make_engine()
    with pytest.raises(QuotaExceeded) as caught:
        engine.acquire([requests_limit("tenant-requests", 0)], tokens=0)
    assert caught.value.headers["Retry-After"] == "60"


@pytest.mark.parametrize("unit", ["requests", "tokens"])
def test_zero_quota_resets_in_a_minute_not_now(make_engine: EngineFactory, unit: str) -> None:
    """A quota of 0 never refills: every reset header says 60 s, as Retry-After, never 0."""
    engine = make_engine(openai_headers=True, legacy_headers=True)
    limit = Limit("tenant-" + unit, "{acme}:zero-" + unit, unit, 0)  # type: ignore[arg-type]
    for _ in range(2):  # the second may be answered from the Redis deny cache
        with pytest.raises(QuotaExceeded) as caught:
            engine.acquire([limit], tokens=0)
        headers = caught.value.headers
        assert headers["Retry-After"] == "60"
        assert headers["RateLimit"] == f'"tenant-{unit}";r=0;t=60'
        assert headers[f"x-ratelimit-reset-{unit}"] == "1m0s"
        assert headers["X-RateLimit-Reset"] == "60"


def test_a_huge_settle_caps_the_debt_alike_on_both_backends(make_engine: EngineFactory) -> None:
    """An absurd reported count puts the bucket at most 2^49 µs (~17.8 years) in debt on
    either backend, so every reset stays a valid structured-field integer (15 digits)."""
    engine = make_engine(openai_headers=True)
    budget = tokens_limit(60)
    engine.settle(engine.acquire([budget], tokens=1), 10**18 - 1)
    with pytest.raises(QuotaExceeded) as caught:
        engine.acquire([budget], tokens=1)
    cap = -(-(2**49) // 1_000_000)  # 562,949,954 s
    headers = caught.value.headers
    reset = int(headers["RateLimit"].rpartition(";t=")[2])
    assert cap - 5 <= reset <= cap
    assert cap - 65 <= int(headers["Retry-After"]) <= cap


def test_quota_exceeded_problem(make_engine: EngineFactory) -> None:
    """A 429 names the limit, carries Retry-After and the rate-limit headers."""
    engine = make_engine()
    limit = requests_limit("tenant-requests", 1)
    engine.acquire([limit], tokens=0)
    with pytest.raises(QuotaExceeded) as caught:
        engine.acquire([limit], tokens=0)
    exc = caught.value
    problem = exc.to_problem()
    assert problem["status"] == 429
    assert problem["limit"] == "tenant-requests"
    assert 1 <= problem["retry_after"] <= 60
    assert exc.headers["Retry-After"] == str(problem["retry_after"])
    assert exc.headers["RateLimit-Policy"] == '"tenant-requests";q=1;w=60;qu="requests"'
    assert exc.headers["RateLimit"].startswith('"tenant-requests";r=0;t=')


def test_grant_headers(make_engine: EngineFactory) -> None:
    """An admitted request's headers list every limit with its remaining units."""
    engine = make_engine(openai_headers=True, legacy_headers=True)
    grant = engine.acquire([TENANT_10, tokens_limit(50_000)], tokens=1_000)
    headers = dict(grant.headers())
    assert headers["RateLimit"].startswith('"tenant-requests";r=9;t=')
    assert '"tenant-tokens";r=49000;t=' in headers["RateLimit"]
    assert headers["x-ratelimit-remaining-tokens"] == "49000"
    assert headers["X-RateLimit-Remaining"] == "9"


def test_no_limits_is_free(make_engine: EngineFactory) -> None:
    """A request with no limits is admitted with no headers and nothing to settle."""
    engine = make_engine()
    grant = engine.acquire([], tokens=123)
    assert grant.headers() == []
    assert not engine.settle(grant, 5)


def test_invalid_token_counts_are_refused(make_engine: EngineFactory) -> None:
    """Negative or non-integer token counts are a ValidationError, not a silent charge."""
    engine = make_engine()
    with pytest.raises(ValidationError):
        engine.acquire([tokens_limit(10)], tokens=-1)
    grant = engine.acquire([tokens_limit(10)], tokens=1)
    with pytest.raises(ValidationError):
        engine.settle(grant, True)


def test_health(make_engine: EngineFactory) -> None:
    """A reachable storage is healthy, sync and async."""
    engine = make_engine()
    assert engine.health()

    async def check() -> bool:
        healthy = await engine.health_async()
        await engine.aclose()
        return healthy

    assert asyncio.run(check())


def test_unknown_storage_is_a_configuration_error() -> None:
    """An unknown storage scheme fails at start-up, not per request."""
    with pytest.raises(ConfigurationError):
        QuotaEngine(QuotaSettings(storage_uri="mongodb://localhost"))
    with pytest.raises(ConfigurationError):
        QuotaEngine(QuotaSettings(storage_uri="async+mongodb://localhost"))


def test_limits_async_spelling_is_the_same_memory_storage() -> None:
    """limits' ``async+memory://`` is accepted: the engine picks its client per path anyway."""
    engine = QuotaEngine(QuotaSettings(storage_uri="async+memory://"))
    assert not engine.waits
    limit = Limit("tenant-requests", "{acme}:requests", "requests", 2)
    engine.acquire([limit], tokens=0)
    asyncio.run(engine.acquire_async([limit], tokens=0))
    with pytest.raises(QuotaExceeded):
        engine.acquire([limit], tokens=0)


def test_settle_soon_runs_in_the_background(make_engine: EngineFactory, backend: str) -> None:
    """settle_soon and release_soon return at once; drain waits for them to land."""
    engine = make_engine()
    budget = tokens_limit(50_000)
    started = time.monotonic()

    async def run() -> None:
        settled = await engine.acquire_async([budget], tokens=10_000)
        released = await engine.acquire_async([budget], tokens=10_000)
        engine.settle_soon(settled, 1_000)
        engine.release_soon(released)
        engine.release_soon(released)  # a second release does nothing
        await engine.drain()
        await engine.aclose()

    asyncio.run(run())
    assert_remaining(backend, remaining_of(engine, budget), 49_000, 50_000, started)


def test_a_bigger_request_waits_for_its_own_cost(make_engine: EngineFactory, backend: str) -> None:
    """After a small reservation's denial, a bigger one is told its own, longer wait.

    Redis' local deny cache used to answer any request at least as big with the
    small one's Retry-After (1 s here, where 300 tokens need 30 s).
    """
    engine = make_engine()
    budget = tokens_limit(600)  # 10 tokens a second
    engine.acquire([budget], tokens=600)
    with pytest.raises(QuotaExceeded) as small:
        engine.acquire([budget], tokens=10)
    assert small.value.extra["retry_after"] == 1
    with pytest.raises(QuotaExceeded) as big:
        engine.acquire([budget], tokens=300)
    assert big.value.extra["retry_after"] == 30
    assert big.value.headers["Retry-After"] == "30"
    if backend == "redis":
        assert engine.stats.local_denials == 1  # still answered without a round trip


def test_a_denial_weighs_every_limit_of_the_request(
    make_engine: EngineFactory, backend: str
) -> None:
    """A cached denial of one limit does not hide a longer wait on another.

    Redis' cache used to answer from the first cached limit alone: 1 s naming
    tenant-requests, where the exhausted key-requests limit needs 60 s.
    """
    engine = make_engine()
    tenant = requests_limit("tenant-requests", 60)
    key = requests_limit("key-requests", 1, key="{acme}:key:k1:requests")
    engine.acquire([key], tokens=0)
    for _ in range(60):
        engine.acquire([tenant], tokens=0)
    with pytest.raises(QuotaExceeded) as first:
        engine.acquire([tenant], tokens=0)
    assert (first.value.extra["limit"], first.value.extra["retry_after"]) == ("tenant-requests", 1)
    for _ in range(2):  # on Redis: once from the server, then from the cache
        with pytest.raises(QuotaExceeded) as both:
            engine.acquire([tenant, key], tokens=0)
        assert (both.value.extra["limit"], both.value.extra["retry_after"]) == ("key-requests", 60)
        assert both.value.headers["Retry-After"] == "60"
        assert '"tenant-requests";r=0;' in both.value.headers["RateLimit"]
        assert '"key-requests";r=0;' in both.value.headers["RateLimit"]
    if backend == "redis":
        assert engine.stats.local_denials == 1  # the second, from the cache


@pytest.mark.parametrize("per_minute", [7, 13, 101, 999, 1000])
def test_q_requests_pass_at_once(make_engine: EngineFactory, backend: str, per_minute: int) -> None:
    """q requests a minute admit q at once, for any q, and r counts down q-1, ..., 0.

    Each unit's charge used to be rounded up to a whole ns (memory) or µs (Redis),
    so 7 a minute admitted 6 at once and r said one unit less than was left. On
    Redis the server's clock runs, which can only add to what is admitted.
    """
    engine = make_engine()
    limit = requests_limit("tenant-requests", per_minute)
    assert engine.capacity(limit) == per_minute
    started = time.monotonic()
    left = [engine.acquire([limit], tokens=0).remaining[0] for _ in range(per_minute)]
    assert left[0] == per_minute - 1
    assert_remaining(backend, left[-1], 0, per_minute, started)
    if backend == "memory":
        assert left == list(range(per_minute - 1, -1, -1))
        with pytest.raises(QuotaExceeded) as caught:
            engine.acquire([limit], tokens=0)
        assert caught.value.extra["retry_after"] == math.ceil(60 / per_minute)


def test_a_quota_change_keeps_the_bucket(make_engine: EngineFactory) -> None:
    """A bucket charged under one quota is read under another (a plan change) at its level."""
    engine = make_engine()
    engine.acquire([tokens_limit(999)], tokens=500)  # 30.03 s of the bucket
    # (60 - 30.03) s at 7 a minute is 3.49 units.
    assert engine.acquire([tokens_limit(7)], tokens=0).remaining == [3]


@pytest.mark.parametrize(
    ("old", "tokens", "new", "after_us"),
    [(7, 1, 7001, 575_428), (7, 3, 1003, 18_476_000), (7001, 4, 13, 2_000)],
)
def test_a_plan_change_decides_as_the_exact_tat(
    make_engine: EngineFactory,
    advance: Callable[[float], None],
    old: int,
    tokens: int,
    new: int,
    after_us: int,
) -> None:
    """After a quota change both backends answer what exact arithmetic on the TAT gives.

    The remainder of a TAT (in 1/q_old of a ns or µs) used to be read as if it
    were in 1/q_new, an error below one time unit that still crossed decision
    boundaries: 1 token at 7/min, then 7001/min 0.575428 s later, read 6,068
    tokens left on both backends where 6,067 are; 3 at 7/min then 1003/min read
    882 on Redis and 881 in memory.
    """
    engine = make_engine()
    engine.acquire([tokens_limit(old)], tokens=tokens)
    advance(after_us / 1_000_000)
    level = Fraction(tokens * 60, old) - Fraction(after_us, 1_000_000)
    expected = math.floor((60 - level) * new / 60)
    assert remaining_of(engine, tokens_limit(new)) == expected
    engine.acquire([tokens_limit(new)], tokens=1)  # stored under the new quota now
    assert remaining_of(engine, tokens_limit(new)) == expected - 1


@pytest.mark.parametrize(
    "uri",
    [
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1:6379/notadb",
        "redis+sentinel://127.0.0.1:26379",
        "redis+cluster://127.0.0.1:7000,127.0.0.1:x",
    ],
)
def test_malformed_redis_uri_is_a_configuration_error(uri: str) -> None:
    """A Redis URI no request could use fails at start-up, not as a 500 per request."""
    with pytest.raises(ConfigurationError):
        QuotaEngine(QuotaSettings(storage_uri=uri))


def test_precheck_charges_nothing(make_engine: EngineFactory) -> None:
    """A precheck that admits charges nothing: a quota of 2 still admits 2 after many."""
    engine = make_engine()
    limits = [requests_limit("tenant-requests", 2), tokens_limit(1_000)]
    for _ in range(5):
        engine.precheck(limits)
    engine.acquire(limits, tokens=0)
    engine.precheck(limits)
    engine.acquire(limits, tokens=0)
    with pytest.raises(QuotaExceeded):
        engine.acquire(limits, tokens=0)


def test_precheck_refuses_a_caller_over_its_request_quota(
    make_engine: EngineFactory, backend: str
) -> None:
    """Over its request quota (tokens unused), a caller gets acquire's 429 from the precheck."""
    engine = make_engine()
    limits = [requests_limit("tenant-requests", 1), tokens_limit(1_000)]
    engine.acquire(limits, tokens=0)
    with pytest.raises(QuotaExceeded) as denied:
        engine.acquire(limits, tokens=500)  # Redis: its deny cache now knows every bucket
    with pytest.raises(QuotaExceeded) as early:
        engine.precheck(limits)
    assert early.value.extra["limit"] == "tenant-requests"
    assert early.value.headers["RateLimit-Policy"] == denied.value.headers["RateLimit-Policy"]
    if backend == "memory":  # the fake clock has not moved: the very same answer
        assert early.value.headers == denied.value.headers
        assert early.value.extra == denied.value.extra
    assert remaining_of(engine, tokens_limit(1_000)) > 0


def test_precheck_leaves_a_wait_the_reservation_sets_to_acquire(make_engine: EngineFactory) -> None:
    """Refused by requests while a token bucket refills slower: no precheck answer, no charge.

    The exact Retry-After then depends on the reservation, which only the body gives.
    """
    engine = make_engine()
    limits = [requests_limit("tenant-requests", 2), tokens_limit(1_000)]
    engine.acquire(limits, tokens=900)  # the token bucket is full again in 54 s
    engine.acquire(limits, tokens=0)  # the request bucket has room again in 30 s
    with pytest.raises(QuotaExceeded) as small:
        engine.acquire(limits, tokens=50)
    assert small.value.extra["limit"] == "tenant-requests"
    engine.precheck(limits)  # 30 s or up to 54 s: the body decides, so acquire answers
    with pytest.raises(QuotaExceeded) as large:
        engine.acquire(limits, tokens=900)
    assert large.value.extra["limit"] == "tenant-tokens"
    assert large.value.extra["retry_after"] > small.value.extra["retry_after"]


def test_precheck_takes_any_sequence_of_limits(make_engine: EngineFactory) -> None:
    """A plain list, a tuple or no limits at all: the precheck answers alike."""
    engine = make_engine()
    full = requests_limit("tenant-requests", 0)
    engine.precheck([])
    with pytest.raises(QuotaExceeded):
        engine.acquire([full], tokens=0)  # Redis: the precheck reads its deny cache only
    for limits in ([full], (full,)):
        with pytest.raises(QuotaExceeded) as caught:
            engine.precheck(limits)
        assert caught.value.extra["retry_after"] == 60


def test_memory_peek_decides_as_acquire(clock: FakeClock) -> None:
    """Seeded random traffic: peek denies exactly when acquire would, with its answer."""
    engine = QuotaEngine(QuotaSettings(burst_seconds=7), clock=clock)
    rng = random.Random(20240611)
    limits = [
        requests_limit("tenant-requests", 7),
        requests_limit("key-requests", 3, key="{acme}:key:k1:requests"),
        tokens_limit(1_000),
    ]
    backend = engine._backend
    denied = 0
    for _ in range(2_000):
        clock.now += rng.choice([0.0, 0.0, 0.3, 1.7, 9.0])
        tokens = rng.choice([0, 1, 50, 400, 2_000])
        costs = engine._costs(limits, tokens)
        expected = backend.peek(limits, costs)
        try:
            grant = engine.acquire(limits, tokens=tokens)
        except QuotaExceeded as exc:
            denied += 1
            assert expected is not None
            assert exc.extra["limit"] == limits[expected.blocker].name
            assert exc.extra["retry_after"] == expected.retry_after
            continue
        assert expected is None
        if rng.random() < 0.5:
            engine.settle(grant, rng.choice([0, tokens // 2, tokens * 2]))
    assert 100 < denied < 1_900
