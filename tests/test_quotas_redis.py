"""Redis specifics: one round trip per decision, local deny-until, failure modes, processes."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from tests._redis_server import SENTINEL_SERVICE, redis_sentinel, redis_server

from tenantkit.errors import QuotaExceeded, ServiceUnavailable
from tenantkit.quotas import Limit, QuotaEngine
from tenantkit.settings import QuotaSettings

pytestmark = pytest.mark.redis

REQUESTS = Limit("tenant-requests", "{acme}:requests", "requests", 10)
KEY_REQUESTS = Limit("key-requests", "{acme}:key:k1:requests", "requests", 5)
TOKENS = Limit("tenant-tokens", "{acme}:tokens", "tokens", 50_000)
KEY_TOKENS = Limit("key-tokens", "{acme}:key:k1:tokens", "tokens", 20_000)
ALL_FOUR = [REQUESTS, KEY_REQUESTS, TOKENS, KEY_TOKENS]


@pytest.fixture
def client(redis_url: str, redis_prefix: str) -> Iterator[redis.Redis]:
    """A plain client on the test Redis; deletes this test's keys afterwards."""
    plain = redis.Redis.from_url(redis_url)
    yield plain
    keys = list(plain.scan_iter(match=f"{redis_prefix}:*"))
    if keys:
        plain.delete(*keys)
    plain.close()


@pytest.fixture
def engine(redis_url: str, redis_prefix: str, client: redis.Redis) -> Iterator[QuotaEngine]:
    quotas = QuotaEngine(QuotaSettings(storage_uri=redis_url), key_prefix=redis_prefix)
    yield quotas
    quotas.close()


def test_limits_async_spelling_names_the_same_redis(redis_url: str, redis_prefix: str) -> None:
    """``async+redis://`` (limits' asyncio spelling) is the same storage, on both paths."""
    quotas = QuotaEngine(QuotaSettings(storage_uri="async+" + redis_url), key_prefix=redis_prefix)
    plain = QuotaEngine(QuotaSettings(storage_uri=redis_url), key_prefix=redis_prefix)
    try:
        assert quotas.waits and quotas.health()
        quotas.acquire([KEY_REQUESTS], tokens=0)

        async def twice() -> None:
            try:
                for _ in range(2):
                    await quotas.acquire_async([KEY_REQUESTS], tokens=0)
            finally:
                await quotas.aclose()

        asyncio.run(twice())
        plain.acquire([KEY_REQUESTS], tokens=0)
        assert plain.acquire([KEY_REQUESTS], tokens=0).remaining[0] == 0
        with pytest.raises(QuotaExceeded):
            quotas.acquire([KEY_REQUESTS], tokens=0)
    finally:
        quotas.close()
        plain.close()


def test_one_round_trip_per_admission(engine: QuotaEngine) -> None:
    """Four limits are decided in a single Redis call."""
    before = engine.stats.round_trips
    engine.acquire(ALL_FOUR, tokens=1_000)
    assert engine.stats.round_trips == before + 1


def test_repeat_denial_costs_no_round_trip(engine: QuotaEngine) -> None:
    """While the deny-until holds, a repeat denial is answered locally with a true Retry-After."""
    limit = Limit("tenant-requests", "{acme}:requests", "requests", 1)
    engine.acquire([limit], tokens=0)
    with pytest.raises(QuotaExceeded) as first:
        engine.acquire([limit], tokens=0)
    before = engine.stats.round_trips
    with pytest.raises(QuotaExceeded) as second:
        engine.acquire([limit], tokens=0)
    assert engine.stats.round_trips == before
    assert engine.stats.local_denials == 1
    assert int(second.value.headers["Retry-After"]) <= int(first.value.headers["Retry-After"])
    assert second.value.extra["limit"] == "tenant-requests"


def test_smaller_request_is_not_denied_by_the_cache(engine: QuotaEngine) -> None:
    """A cached token denial does not refuse a smaller reservation that fits."""
    engine.acquire([TOKENS], tokens=45_000)
    with pytest.raises(QuotaExceeded):
        engine.acquire([TOKENS], tokens=10_000)
    assert engine.acquire([TOKENS], tokens=4_000).remaining[0] >= 1_000


def test_refund_clears_the_cached_denial(engine: QuotaEngine) -> None:
    """A release gives capacity back at once: the local deny-until is forgotten."""
    grant = engine.acquire([TOKENS], tokens=50_000)
    with pytest.raises(QuotaExceeded):
        engine.acquire([TOKENS], tokens=10_000)
    engine.release(grant)
    assert engine.acquire([TOKENS], tokens=10_000).remaining[0] >= 40_000


def test_a_refund_that_times_out_still_clears_the_cached_denial(engine: QuotaEngine) -> None:
    """A release whose reply is lost may still have refunded: the deny cache forgets.

    The refund lands after a denial was cached meanwhile (another request of this
    process), then the reply times out. The engine used to forget the cached
    levels only after a successful reply, so that denial kept being answered
    locally although Redis had the capacity back.
    """
    grant = engine.acquire([TOKENS], tokens=50_000)
    assert engine._redis is not None
    connected = engine._redis._client()
    adjust_script = connected.adjust

    def lost_reply(**kwargs: Any) -> Any:
        with pytest.raises(QuotaExceeded):  # decided by Redis, then cached
            engine.acquire([TOKENS], tokens=10_000)
        adjust_script(**kwargs)
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    engine._redis._sync = connected._replace(adjust=lost_reply)
    assert engine.release(grant)
    assert engine.stats.storage_errors == 1
    assert engine.acquire([TOKENS], tokens=10_000).remaining[0] >= 40_000


def test_an_async_refund_that_times_out_still_clears_the_cached_denial(
    engine: QuotaEngine,
) -> None:
    """The same on the asyncio client."""

    async def run() -> int:
        grant = await engine.acquire_async([TOKENS], tokens=50_000)
        assert engine._redis is not None
        connected = await engine._redis._aclient()
        adjust_script = connected.adjust

        async def lost_reply(**kwargs: Any) -> Any:
            with pytest.raises(QuotaExceeded):
                await engine.acquire_async([TOKENS], tokens=10_000)
            await adjust_script(**kwargs)
            raise redis.exceptions.TimeoutError("Timeout reading from socket")

        loop = asyncio.get_running_loop()
        engine._redis._async.clients[loop] = connected._replace(adjust=lost_reply)
        assert await engine.release_async(grant)
        try:
            return (await engine.acquire_async([TOKENS], tokens=10_000)).remaining[0]
        finally:
            await engine.aclose()

    assert asyncio.run(run()) >= 40_000
    assert engine.stats.storage_errors == 1


def test_settle_costs_at_most_one_round_trip(engine: QuotaEngine) -> None:
    """Settling is one call, and none when the estimate was exact."""
    exact = engine.acquire([REQUESTS, TOKENS], tokens=500)
    before = engine.stats.round_trips
    engine.settle(exact, 500)
    assert engine.stats.round_trips == before
    off = engine.acquire([REQUESTS, TOKENS, KEY_TOKENS], tokens=500)
    before = engine.stats.round_trips
    engine.settle(off, 120)
    assert engine.stats.round_trips == before + 1


def test_buckets_expire_by_themselves(
    engine: QuotaEngine, client: redis.Redis, redis_prefix: str
) -> None:
    """Each bucket key expires when it would be full again: nothing to sweep."""
    engine.acquire([TOKENS], tokens=5_000)  # 6 s of a 50k/min bucket
    ttl = client.pttl(f"{redis_prefix}:{TOKENS.key}")
    assert 0 < ttl <= 6_001


def test_refunds_do_not_keep_a_bucket_past_the_reservation_ttl(
    engine: QuotaEngine, client: redis.Redis, redis_prefix: str
) -> None:
    """Reserving a whole bucket and releasing it at once, 20 times, moves its TAT
    without refunds (charged) 1,000 s ahead; the key still expires within the
    reservation ttl (120 s): every grant it could still refund is void by then.
    It used to live until charged passed."""
    budget = Limit("tenant-tokens", "{acme}:tokens", "tokens", 600)
    held = engine.acquire([budget], tokens=100)  # 10 s of the bucket stay charged
    for _ in range(20):
        assert engine.release(engine.acquire([budget], tokens=500))
    assert 10_000 < client.pttl(f"{redis_prefix}:{budget.key}") <= 121_000
    assert engine.release(held)  # still refunded within the ttl: the bucket is full again
    assert engine.acquire([budget], tokens=0).remaining == [600]


def test_async_path_uses_the_async_client(engine: QuotaEngine) -> None:
    """acquire_async never touches the blocking client."""

    async def run() -> None:
        grant = await engine.acquire_async(ALL_FOUR, tokens=100)
        await engine.settle_async(grant, 50)
        await engine.aclose()

    asyncio.run(run())
    assert engine._redis is not None
    assert engine._redis._sync is None


def test_a_loops_client_closes_with_the_loop(
    redis_url: str, redis_prefix: str, client: redis.Redis
) -> None:
    """Each ``asyncio.run`` is a new loop with a client of its own, closed with the loop.

    The backend used to replace the client without closing the old one, whose
    connections stay in reference cycles until the cyclic GC runs: one more Redis
    connection per loop (with the GC off, as it may be for a while). A loop closed
    without shutting its async generators down has its client's sockets shut when
    the next loop starts.
    """
    engine = QuotaEngine(
        QuotaSettings(storage_uri=redis_url),
        key_prefix=redis_prefix,
        storage_options={"client_name": redis_prefix},
    )

    async def admit() -> None:
        await engine.acquire_async([TOKENS], tokens=1)

    def connected() -> int:
        return sum(1 for c in client.client_list() if c.get("name") == redis_prefix)

    gc.disable()
    try:
        for _ in range(4):
            asyncio.run(admit())  # the app never closes the engine on this loop
            assert connected() == 0
        bare = asyncio.new_event_loop()
        bare.run_until_complete(admit())
        bare.close()  # no shutdown_asyncgens: the client is left open
        assert connected() == 1
        asyncio.run(admit())
        for _ in range(200):  # the server sees the shut sockets' EOF at once
            if connected() == 0:
                break
            time.sleep(0.01)
        assert connected() == 0
        engine.close()
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # the shut sockets' objects
            gc.enable()
            gc.collect()


def test_a_running_loop_keeps_its_client(engine: QuotaEngine) -> None:
    """A loop in another thread keeps its client while a second loop uses the engine.

    The backend used to replace the client whenever another loop asked, under the
    first loop's calls in flight.
    """
    assert engine._redis is not None
    backend = engine._redis
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever)
    thread.start()

    async def client_of() -> Any:
        await engine.acquire_async([TOKENS], tokens=1)
        return await backend._aclient()

    try:
        first = asyncio.run_coroutine_threadsafe(client_of(), other).result(5)
        asyncio.run(client_of())
        assert asyncio.run_coroutine_threadsafe(client_of(), other).result(5) is first
        asyncio.run_coroutine_threadsafe(engine.aclose(), other).result(5)
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join()
        other.close()


def test_tenant_keys_share_a_cluster_slot() -> None:
    """All the keys of one tenant carry the same hash tag (one Lua call on a cluster)."""
    from tenantkit.quotas import limits_for
    from tenantkit.types import Identity, TenantConfig

    tenant = TenantConfig(
        id="acme", name="Acme", quota_requests_per_minute=1, quota_tokens_per_minute=1
    )
    identity = Identity(
        tenant_id="acme",
        source="api_key",
        api_key_id="k1",
        api_key_rate_limit=1,
        api_key_token_limit=1,
    )
    keys = [limit.key for limit in limits_for(tenant, identity)]
    assert len(keys) == 4
    assert all(key.startswith("{acme}:") for key in keys)


# -- storage failure ------------------------------------------------------------------


@pytest.mark.parametrize("on_failure", ["fail_closed", "fail_open"])
def test_redis_down(on_failure: str, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A closed port gives 503 with Retry-After (fail_closed) or an admission (fail_open)."""
    engine = QuotaEngine(
        QuotaSettings(storage_uri="redis://127.0.0.1:1/0", on_failure=on_failure)  # type: ignore[arg-type]
    )
    with caplog.at_level(logging.ERROR, logger="tenantkit.quotas"):
        if on_failure == "fail_closed":
            with pytest.raises(ServiceUnavailable) as caught:
                engine.acquire(ALL_FOUR, tokens=10)
            assert caught.value.status == 503
            assert caught.value.headers["Retry-After"] == "1"
        else:
            grant = engine.acquire(ALL_FOUR, tokens=10)
            assert grant.degraded
            assert not engine.settle(grant, 5)
            assert engine.stats.fail_open_admissions == 1
    assert "quota storage error" in caplog.text
    assert engine.stats.storage_errors == 1
    assert not engine.health()


@pytest.mark.parametrize("on_failure", ["fail_closed", "fail_open"])
def test_redis_down_async(on_failure: str, redis_url: str) -> None:
    """The async path fails the same way, never with another exception."""
    engine = QuotaEngine(
        QuotaSettings(storage_uri="redis://127.0.0.1:1/0", on_failure=on_failure)  # type: ignore[arg-type]
    )

    async def run() -> bool:
        try:
            grant = await engine.acquire_async(ALL_FOUR, tokens=10)
        except ServiceUnavailable:
            return False
        assert grant.degraded
        return True

    assert asyncio.run(run()) is (on_failure == "fail_open")
    assert not asyncio.run(engine.health_async())


@pytest.fixture
def private_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A throwaway redis-server this test may kill."""
    with redis_server() as started:
        yield started


def test_redis_stopped_mid_flight(private_redis: tuple[str, subprocess.Popen[bytes]]) -> None:
    """Redis dying between requests: the next admission is a 503, a settle is only logged."""
    url, proc = private_redis
    engine = QuotaEngine(QuotaSettings(storage_uri=url))
    grant = engine.acquire(ALL_FOUR, tokens=10)
    assert engine.health()
    proc.kill()
    proc.wait()
    engine.settle(grant, 3)
    with pytest.raises(ServiceUnavailable):
        engine.acquire(ALL_FOUR, tokens=10)
    assert not engine.health()


# -- several processes ----------------------------------------------------------------


def _hammer(url: str, prefix: str, mode: str, start: Any, results: Any) -> None:
    engine = QuotaEngine(QuotaSettings(storage_uri=url), key_prefix=prefix)
    limit = Limit("tenant-requests", "{shared}:requests", "requests", 20)
    start.wait()

    def once(_: int) -> int:
        try:
            engine.acquire([limit], tokens=0)
        except QuotaExceeded:
            return 0
        return 1

    async def gathered() -> int:
        async def one() -> int:
            try:
                await engine.acquire_async([limit], tokens=0)
            except QuotaExceeded:
                return 0
            return 1

        total = sum(await asyncio.gather(*(one() for _ in range(60))))
        await engine.aclose()
        return total

    if mode == "threads":
        with ThreadPoolExecutor(max_workers=8) as pool:
            results.put(sum(pool.map(once, range(60))))
    else:
        results.put(asyncio.run(gathered()))


def test_two_processes_admit_exactly_the_limit(
    redis_url: str, redis_prefix: str, client: redis.Redis
) -> None:
    """Two processes (threads and asyncio) sharing Redis admit 20 of 120 requests for 20/min."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_hammer, args=(redis_url, redis_prefix, mode, start, results))
        for mode in ("threads", "asyncio")
    ]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    began = time.monotonic()
    start.set()
    admitted = results.get(timeout=60) + results.get(timeout=60)
    elapsed = time.monotonic() - began
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    # One more unit refills every 3 s; the hammering itself takes milliseconds.
    assert 20 <= admitted <= 20 + int(elapsed * 20 / 60)


@pytest.mark.parametrize(
    "uri",
    [
        "redis+cluster://127.0.0.1:1",
        "redis+sentinel://127.0.0.1:1/mymaster",
        "rediss://127.0.0.1:1/0",
        "redis+unix:///nonexistent/redis.sock",
    ],
)
def test_every_storage_scheme_fails_closed(uri: str, redis_url: str) -> None:
    """Cluster, sentinel, TLS and socket URIs that cannot connect give a 503, sync and async."""
    engine = QuotaEngine(QuotaSettings(storage_uri=uri))
    with pytest.raises(ServiceUnavailable):
        engine.acquire(ALL_FOUR, tokens=1)

    async def run() -> None:
        with pytest.raises(ServiceUnavailable):
            await engine.acquire_async(ALL_FOUR, tokens=1)

    asyncio.run(run())
    assert not engine.health()


def _clients_of(port: int) -> int:
    """How many app connections a Redis (or sentinel) has, once closes have been seen.

    Neither this probe nor a sentinel's own links to the master count.
    """
    with redis.Redis(port=port) as probe:
        for _ in range(100):  # the server sees a close a moment after the client
            count = sum(
                not client["name"].startswith("sentinel-") for client in probe.client_list()
            )
            count -= 1
            if count == 0:
                break
            time.sleep(0.01)
        return count


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_closing_a_sentinel_engine_closes_its_sentinel_connections(
    asynchronous: bool, redis_url: str
) -> None:
    """close() and aclose() also close the connections to the sentinels, not only the master's."""
    with redis_sentinel() as (master, sentinel):
        uri = f"redis+sentinel://127.0.0.1:{sentinel}/{SENTINEL_SERVICE}"
        engine = QuotaEngine(QuotaSettings(storage_uri=uri, timeout_seconds=2.0))

        async def run() -> int:
            await engine.acquire_async(ALL_FOUR, tokens=1)
            opened = _clients_of(sentinel)
            await engine.aclose()
            return opened

        if asynchronous:
            opened = asyncio.run(run())
        else:
            engine.acquire(ALL_FOUR, tokens=1)
            opened = _clients_of(sentinel)
            engine.close()
        assert opened >= 1
        assert _clients_of(sentinel) == 0
        assert _clients_of(master) == 0


def test_settle_soon_leaves_the_request_without_a_round_trip(engine: QuotaEngine) -> None:
    """On Redis the settle is a task of its own: the caller spends no round trip on it."""

    async def run() -> tuple[int, int]:
        grant = await engine.acquire_async([TOKENS], tokens=5_000)
        before = engine.stats.round_trips
        engine.settle_soon(grant, 10)
        during = engine.stats.round_trips - before
        await engine.aclose()  # drains first
        return during, engine.stats.round_trips - before

    during, after = asyncio.run(run())
    assert (during, after) == (0, 1)


def _remaining_in(exc: pytest.ExceptionInfo[QuotaExceeded], name: str) -> int:
    header = exc.value.headers["RateLimit"]
    return int(header.split(f'"{name}";r=', 1)[1].split(";", 1)[0])


def test_a_cached_denial_reports_the_refill(engine: QuotaEngine) -> None:
    """A local denial computes r from the bucket's level now, not at the cached denial."""
    budget = Limit("tenant-tokens", "{acme}:tokens", "tokens", 6_000)  # 100 a second
    engine.acquire([budget], tokens=6_000)
    with pytest.raises(QuotaExceeded) as first:
        engine.acquire([budget], tokens=1_000)
    assert first.value.extra["retry_after"] == 10
    time.sleep(0.3)
    before = engine.stats.round_trips
    with pytest.raises(QuotaExceeded) as cached:
        engine.acquire([budget], tokens=1_000)
    assert engine.stats.round_trips == before
    assert 20 <= _remaining_in(cached, "tenant-tokens") < 1_000
    assert cached.value.extra["retry_after"] == 10


def test_admissions_refresh_the_cached_levels(engine: QuotaEngine) -> None:
    """Admissions after a cached denial update what the cache knows of their buckets."""
    key = Limit("key-requests", "{acme}:key:k1:requests", "requests", 1)
    engine.acquire([key], tokens=0)
    with pytest.raises(QuotaExceeded) as first:
        engine.acquire([REQUESTS, key], tokens=0)
    assert _remaining_in(first, "tenant-requests") == 10
    for _ in range(3):
        engine.acquire([REQUESTS], tokens=0)
    before = engine.stats.round_trips
    with pytest.raises(QuotaExceeded) as cached:
        engine.acquire([REQUESTS, key], tokens=0)
    assert engine.stats.round_trips == before
    assert _remaining_in(cached, "tenant-requests") == 7


def test_a_limit_the_cache_does_not_know_goes_to_redis(engine: QuotaEngine) -> None:
    """A request with a limit the cache has no level for is decided by Redis."""
    engine.acquire([KEY_REQUESTS], tokens=0)
    limit = Limit("tenant-requests", "{acme}:requests", "requests", 1)
    engine.acquire([limit], tokens=0)
    with pytest.raises(QuotaExceeded):
        engine.acquire([limit], tokens=0)
    before = engine.stats.round_trips
    with pytest.raises(QuotaExceeded):
        engine.acquire([limit, KEY_REQUESTS], tokens=0)
    assert engine.stats.round_trips == before + 1


def test_buckets_written_before_exact_tats_are_read(
    engine: QuotaEngine, client: redis.Redis, redis_prefix: str
) -> None:
    """A bucket holding a plain integer TAT (the format before exact TATs) reads with rem 0."""
    seconds, micros = client.time()
    now = seconds * 1_000_000 + micros
    client.set(f"{redis_prefix}:{REQUESTS.key}", str(now + 30_000_000), px=31_000)
    # 30 s of a 10/min bucket is 5 requests; this one makes 6.
    assert engine.acquire([REQUESTS], tokens=0).remaining == [4]


def test_exact_buckets_stay_numbers_for_older_readers(
    engine: QuotaEngine, client: redis.Redis, redis_prefix: str
) -> None:
    """A TAT with a remainder is stored as "<tat>.<rem><q>": tonumber() reads it within 1 µs."""
    limit = Limit("tenant-requests", "{acme}:requests", "requests", 7)
    engine.acquire([limit], tokens=0)
    raw = client.get(f"{redis_prefix}:{limit.key}")
    assert raw is not None
    whole, digits = raw.split(b".")
    tat, rem, q = int(whole), int(digits[:10]), int(digits[10:])
    assert len(digits) == 20
    assert (q, rem) == (7, 60_000_000 % 7)
    read = client.eval(
        "return string.format('%.3f', tonumber(redis.call('GET', KEYS[1])))",
        1,
        f"{redis_prefix}:{limit.key}",
    )
    assert abs(float(read) - tat) <= 1


def test_a_refunded_bucket_keeps_how_far_it_moved_back_and_its_refund_log(
    engine: QuotaEngine, client: redis.Redis, redis_prefix: str
) -> None:
    """A refund stores "<tat>.<rem><q><rw><rr>" and then its refund log, 51 digits a
    refund (where its charge started, the amount): how far refunds moved the TAT
    back and whose they were, which a later refund needs. tonumber() still reads the
    TAT within 1 µs, so older readers keep deciding on it."""
    limit = Limit("tenant-tokens", "{acme}:tokens", "tokens", 7)
    grants = [engine.acquire([limit], tokens=1) for _ in range(3)]
    unit = 60_000_000 // 7  # one token of 7 a minute, in whole µs
    assert engine.release(grants[2])  # the newest: logged, as older charges lie ahead
    raw = client.get(f"{redis_prefix}:{limit.key}")
    assert raw is not None
    whole, digits = raw.split(b".")
    assert len(digits) == 45 + 51
    rem, q, moved = int(digits[:10]), int(digits[10:20]), int(digits[20:35])
    assert q == 7 and rem == (2 * 60_000_000) % 7 and moved == unit
    start, amount = digits[45:71], int(digits[71:86])
    assert amount == unit and start == whole + digits[:10]  # it started where the TAT is now
    read = client.eval(
        "return string.format('%.3f', tonumber(redis.call('GET', KEYS[1])))",
        1,
        f"{redis_prefix}:{limit.key}",
    )
    assert abs(float(read) - int(whole)) <= 1
    # The oldest comes back whole too: the newer refund did not move its charge.
    assert engine.release(grants[0])
    assert engine.acquire([limit], tokens=0).remaining[0] == 6


def test_exact_buckets_of_the_previous_format_are_read(
    engine: QuotaEngine, client: redis.Redis, redis_prefix: str
) -> None:
    """A bucket stored as "<tat>.<rem>" (without its q) is read with rem clamped below q."""
    seconds, micros = client.time()
    now = seconds * 1_000_000 + micros
    client.set(f"{redis_prefix}:{REQUESTS.key}", f"{now + 30_000_000}.999", px=31_000)
    assert engine.acquire([REQUESTS], tokens=0).remaining == [4]


@pytest.mark.parametrize(
    ("rem", "written", "q"),
    [
        (2_147_483_646, 2_147_483_647, 2_147_483_629),  # rem·q is far past 2^53
        (1_999_999_999, 2_000_000_000, 1_999_999_998),  # ceil(rem·q/written) == q: a carry
        (3, 7, 1003),
        (1_234_567, 9_999_999_999, 7),
    ],
)
def test_a_remainder_is_rescaled_exactly_to_a_new_quota(
    client: redis.Redis, redis_prefix: str, rem: int, written: int, q: int
) -> None:
    """The script rounds rem·q/written up exactly, although Lua computes in doubles."""
    from tenantkit._quota_lua import _LUA_BUCKETS

    key = f"{redis_prefix}:{{acme}}:tokens"
    client.set(key, f"5000000.{rem:010d}{written:010d}")
    script = _LUA_BUCKETS + "local tat, rem = load(KEYS[1], tonumber(ARGV[1]))\nreturn {tat, rem}"
    tat, got = client.eval(script, 1, key, q)
    assert divmod(5_000_000 * q + -(-rem * q // written), q) == (tat, got)


def test_a_huge_debt_is_capped(engine: QuotaEngine) -> None:
    """Settling an absurd count stays exact in Lua's doubles: the bucket just stays in debt."""
    grant = engine.acquire([TOKENS], tokens=1)
    engine.settle(grant, 10**18)
    with pytest.raises(QuotaExceeded) as caught:
        engine.acquire([TOKENS], tokens=0)
    assert caught.value.extra["retry_after"] > 10**8


# -- health and configuration ----------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        ("--replicaof", "127.0.0.1", "1"),  # a read-only replica (of a master it never reaches)
        ("--maxmemory", "1", "--maxmemory-policy", "noeviction"),  # out of memory
    ],
    ids=["read-only-replica", "out-of-memory"],
)
def test_health_fails_where_admissions_fail(options: tuple[str, ...]) -> None:
    """A Redis that answers PING but refuses writes reports unhealthy, as admissions fail."""
    with redis_server(*options) as (url, _):
        engine = QuotaEngine(QuotaSettings(storage_uri=url))
        with pytest.raises(ServiceUnavailable):
            engine.acquire(ALL_FOUR, tokens=10)
        with redis.Redis.from_url(url) as plain:
            assert plain.ping()
        assert not engine.health()
        assert not asyncio.run(checked_async(engine))


def test_health_passes_on_a_writable_redis(engine: QuotaEngine) -> None:
    """A healthy Redis passes both checks (the health key expires by itself)."""
    assert engine.health()
    assert asyncio.run(checked_async(engine))


async def checked_async(engine: QuotaEngine) -> bool:
    """``health_async`` on a fresh loop, closing the engine's clients before the loop ends."""
    try:
        return await engine.health_async()
    finally:
        await engine.aclose()
