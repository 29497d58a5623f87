"""The quota engine on a real Redis Cluster (three masters) and a real Sentinel.

Each topology is started once for the module (``tests/_redis_server.py``); every
test uses its own key prefix. The engine's async path goes through the
``async+redis+cluster://`` and ``async+redis+sentinel://`` clients of ``limits``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tests._redis_server import SENTINEL_SERVICE, redis_cluster, redis_sentinel

from tenantkit.asgi import TenantKitMiddleware
from tenantkit.errors import QuotaExceeded, ServiceUnavailable
from tenantkit.quotas import Grant, Limit, QuotaEngine, QuotaStats, limits_for
from tenantkit.settings import QuotaSettings
from tenantkit.types import Identity, TenantConfig

pytestmark = pytest.mark.redis

TIMEOUT = 2.0
"""Seconds per Redis call: generous, as the machines running the suite are small and
shared (the default 50 ms is for production latencies, not for the topology under test)."""


def tenant_limits(
    tenant_id: str = "acme",
    *,
    requests: int = 10,
    tokens: int = 50_000,
    key_requests: int = 5,
    key_tokens: int = 20_000,
    key_id: str = "k-7f3a",
) -> list[Limit]:
    """The four limits the pipeline builds for an API-key request on ``tenant_id``."""
    tenant = TenantConfig(
        id=tenant_id,
        name=tenant_id.title(),
        quota_requests_per_minute=requests,
        quota_tokens_per_minute=tokens,
    )
    identity = Identity(
        tenant_id=tenant_id,
        source="api_key",
        api_key_id=key_id,
        api_key_rate_limit=key_requests,
        api_key_token_limit=key_tokens,
    )
    return limits_for(tenant, identity)


# -- topologies -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_ports(redis_url: str) -> Iterator[list[int]]:
    """A three-master Redis Cluster for this module (skips, or fails in CI, as Redis does)."""
    with redis_cluster() as ports:
        yield ports


@pytest.fixture(scope="module")
def cluster_uri(cluster_ports: list[int]) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in cluster_ports)


@pytest.fixture(scope="module")
def sentinel_ports(redis_url: str) -> Iterator[tuple[int, int]]:
    """A master and a sentinel monitoring it, for this module: (master, sentinel)."""
    with redis_sentinel() as ports:
        yield ports


@pytest.fixture(scope="module")
def sentinel_uri(sentinel_ports: tuple[int, int]) -> str:
    return f"redis+sentinel://127.0.0.1:{sentinel_ports[1]}/{SENTINEL_SERVICE}"


@pytest.fixture(params=["cluster", "sentinel"])
def storage_uri(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_uri"))


class Driver:
    """A ``QuotaEngine`` driven through its blocking or its asyncio methods.

    The asyncio calls run on one private loop, which the engine's async client
    belongs to; ``close`` closes the engine on it.
    """

    def __init__(self, engine: QuotaEngine, *, asynchronous: bool) -> None:
        self.engine = engine
        self._loop = asyncio.new_event_loop() if asynchronous else None

    def acquire(self, limits: Sequence[Limit], tokens: int = 0) -> Grant:
        if self._loop is None:
            return self.engine.acquire(limits, tokens=tokens)
        return self._loop.run_until_complete(self.engine.acquire_async(limits, tokens=tokens))

    def settle(self, grant: Grant, used: int) -> bool:
        if self._loop is None:
            return self.engine.settle(grant, used)
        return self._loop.run_until_complete(self.engine.settle_async(grant, used))

    def release(self, grant: Grant) -> bool:
        if self._loop is None:
            return self.engine.release(grant)
        return self._loop.run_until_complete(self.engine.release_async(grant))

    def health(self) -> bool:
        if self._loop is None:
            return self.engine.health()
        return self._loop.run_until_complete(self.engine.health_async())

    def denied(self, limits: Sequence[Limit], tokens: int = 0) -> QuotaExceeded:
        with pytest.raises(QuotaExceeded) as caught:
            self.acquire(limits, tokens)
        return caught.value

    @property
    def stats(self) -> QuotaStats:
        return self.engine.stats

    @property
    def client(self) -> Any:
        """The Redis client the engine's chosen path (sync or async) connected."""
        backend = self.engine._redis
        assert backend is not None
        if self._loop is None:
            assert backend._sync is not None
            return backend._sync.client
        return backend._async.clients[self._loop].client

    def close(self) -> None:
        if self._loop is None:
            self.engine.close()
            return
        self._loop.run_until_complete(self.engine.aclose())
        self._loop.close()


@pytest.fixture(params=["sync", "async"])
def quotas(request: pytest.FixtureRequest, storage_uri: str, redis_prefix: str) -> Iterator[Driver]:
    """An engine on each topology, through its sync and its async methods."""
    settings = QuotaSettings(storage_uri=storage_uri, timeout_seconds=TIMEOUT)
    driver = Driver(
        QuotaEngine(settings, key_prefix=redis_prefix), asynchronous=request.param == "async"
    )
    yield driver
    driver.close()


# -- one tenant -------------------------------------------------------------------------


def test_all_limits_are_decided_in_one_round_trip(quotas: Driver) -> None:
    """Tenant and API-key limits, requests and tokens, are charged by one script call."""
    limits = tenant_limits()
    assert [limit.name for limit in limits] == [
        "tenant-requests",
        "key-requests",
        "tenant-tokens",
        "key-tokens",
    ]
    grant = quotas.acquire(limits, tokens=1_000)
    assert list(grant.remaining) == [9, 4, 49_000, 19_000]
    assert quotas.stats.round_trips == 1
    assert quotas.stats.storage_errors == 0


def test_tenant_and_key_buckets_share_one_cluster_slot(redis_prefix: str) -> None:
    """Every bucket of a request, the API key's included, hashes to the tenant's slot."""
    keys = [f"{redis_prefix}:{limit.key}" for limit in tenant_limits()]
    slots = {redis.cluster.key_slot(key.encode()) for key in keys}
    assert slots == {redis.cluster.key_slot(b"{acme}")}


def test_the_async_path_uses_the_topologys_async_client(quotas: Driver, storage_uri: str) -> None:
    """Each path talks through the client of its topology (sync, or the async+ variant)."""
    quotas.acquire(tenant_limits())
    client = quotas.client
    asynchronous = quotas._loop is not None
    if storage_uri.startswith("redis+cluster"):
        expected = (
            redis.asyncio.cluster.RedisCluster if asynchronous else redis.cluster.RedisCluster
        )
        assert isinstance(client, expected)
    else:
        pool = (
            redis.asyncio.sentinel.SentinelConnectionPool
            if asynchronous
            else redis.sentinel.SentinelConnectionPool
        )
        assert isinstance(client.connection_pool, pool)


def test_exactly_the_limit_is_admitted(quotas: Driver) -> None:
    """The key's 5 requests a minute are admitted, the 6th is refused with Retry-After 12."""
    limits = tenant_limits()
    remaining = [quotas.acquire(limits).remaining[1] for _ in range(5)]
    assert remaining == [4, 3, 2, 1, 0]
    denied = quotas.denied(limits)
    assert denied.status == 429
    assert denied.extra["limit"] == "key-requests"
    assert denied.headers["Retry-After"] == "12"  # 60 s / 5, less the milliseconds spent
    assert denied.extra["retry_after"] == 12


def test_a_denial_charges_no_limit(quotas: Driver) -> None:
    """All or nothing: the request refused by the key's tokens charges the tenant nothing."""
    limits = tenant_limits()
    quotas.acquire(limits, tokens=15_000)
    denied = quotas.denied(limits, tokens=15_000)
    assert denied.extra["limit"] == "key-tokens"
    assert denied.headers["Retry-After"] == "30"  # 10,000 tokens of 20,000 a minute
    tenant_only = [limit for limit in limits if limit.name.startswith("tenant-")]
    after = quotas.acquire(tenant_only, tokens=0).remaining
    assert after[0] == 8  # the admitted request and this one
    assert 35_000 <= after[1] < 36_000  # 15,000 charged once, and a little refill


def test_settle_and_release_give_tokens_back(quotas: Driver) -> None:
    """Settling below the estimate and releasing refund tokens; requests stay counted."""
    limits = tenant_limits()
    grant = quotas.acquire(limits, tokens=10_000)
    assert quotas.settle(grant, 2_000)
    settled = quotas.acquire(limits, tokens=0).remaining
    assert settled[:2] == [8, 3]
    assert 48_000 <= settled[2] < 48_500
    assert 18_000 <= settled[3] < 18_500
    grant = quotas.acquire(limits, tokens=5_000)
    assert quotas.release(grant)
    released = quotas.acquire(limits, tokens=0).remaining
    assert released[:2] == [6, 1]
    assert 48_000 <= released[2] < 48_500
    assert not quotas.release(grant)  # once only


def test_health_writes_to_the_topology(quotas: Driver) -> None:
    """health() is true on a working cluster or sentinel-managed master."""
    assert quotas.health()


def test_repeat_denials_are_answered_locally(quotas: Driver) -> None:
    """After a denial, the same request is refused without a round trip, until a refund."""
    limits = tenant_limits(tokens=6_000)  # 100 tokens a second
    grant = quotas.acquire(limits, tokens=6_000)
    first = quotas.denied(limits, tokens=3_000)
    assert first.extra["limit"] == "tenant-tokens"
    before = quotas.stats.round_trips
    again = quotas.denied(limits, tokens=3_000)
    assert quotas.stats.round_trips == before
    assert quotas.stats.local_denials == 1
    assert again.extra["limit"] == "tenant-tokens"
    assert int(again.headers["Retry-After"]) <= int(first.headers["Retry-After"]) == 30
    assert quotas.release(grant)
    before = quotas.stats.round_trips
    assert quotas.acquire(limits, tokens=3_000).remaining[2] >= 3_000
    assert quotas.stats.round_trips == before + 1


# -- the cluster's nodes ----------------------------------------------------------------


def tenants_on_two_nodes(ports: list[int]) -> dict[str, int]:
    """Two tenant ids whose slots are served by different masters: id -> that node's port."""
    with redis.cluster.RedisCluster(host="127.0.0.1", port=ports[0]) as cluster:
        found: dict[str, int] = {}
        for candidate in ("acme", "globex", "initech", "umbrella", "hooli", "zeta"):
            node = cluster.get_node_from_key(f"{{{candidate}}}")
            if node.port not in found.values():
                found[candidate] = node.port
            if len(found) == 2:
                return found
    raise AssertionError("no two candidate tenants on different nodes")


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_tenants_on_different_nodes(
    asynchronous: bool, cluster_uri: str, cluster_ports: list[int], redis_prefix: str
) -> None:
    """Tenants whose slots live on different masters are each decided on their own node."""
    settings = QuotaSettings(storage_uri=cluster_uri, timeout_seconds=TIMEOUT)
    quotas = Driver(QuotaEngine(settings, key_prefix=redis_prefix), asynchronous=asynchronous)
    try:
        placed = tenants_on_two_nodes(cluster_ports)
        for tenant_id in placed:
            limits = tenant_limits(tenant_id, requests=2)
            assert quotas.acquire(limits, tokens=100).remaining[:2] == [1, 4]
            assert quotas.acquire(limits, tokens=100).remaining[:2] == [0, 3]
            assert quotas.denied(limits).extra["limit"] == "tenant-requests"
        assert quotas.stats.storage_errors == 0
    finally:
        quotas.close()
    for tenant_id, port in placed.items():
        with redis.Redis(port=port) as node:
            assert node.exists(f"{redis_prefix}:{{{tenant_id}}}:requests")
            assert node.exists(f"{redis_prefix}:{{{tenant_id}}}:key:k-7f3a:tokens")


def test_a_dead_master_fails_closed_for_its_tenants_only(redis_url: str, redis_prefix: str) -> None:
    """With one master gone, its tenants get a 503 at once; the others are still decided.

    Sync only: after such a failure redis-py's asyncio cluster client (7.4) leaves a
    connection to a live node open past ``aclose()``.
    """
    with redis_cluster() as ports:  # a cluster of its own: this test stops a node
        uri = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)
        quotas = QuotaEngine(QuotaSettings(storage_uri=uri), key_prefix=redis_prefix)
        try:
            placed = tenants_on_two_nodes(ports)
            doomed, alive = placed
            for tenant_id in placed:
                assert quotas.acquire(tenant_limits(tenant_id), tokens=10).remaining[0] == 9
            # No retries: the default ones would wait seconds on the closed connection.
            with redis.Redis(port=placed[doomed], retry=Retry(NoBackoff(), 0)) as node:
                node.shutdown(nosave=True)
            began = time.monotonic()
            with pytest.raises(ServiceUnavailable):
                quotas.acquire(tenant_limits(doomed), tokens=10)
            assert time.monotonic() - began < 1.0  # refused, not retried for long
            assert quotas.acquire(tenant_limits(alive), tokens=10).remaining[0] == 8
            # The health check asks every master, not only the one its key lands on.
            assert quotas.health() is False
        finally:
            quotas.close()
        assert quotas.stats.storage_errors == 1


def test_sentinel_path_writes_to_the_master(
    sentinel_uri: str, sentinel_ports: tuple[int, int], redis_prefix: str
) -> None:
    """Through the sentinel, the buckets land on the master it names."""
    quotas = QuotaEngine(
        QuotaSettings(storage_uri=sentinel_uri, timeout_seconds=TIMEOUT), key_prefix=redis_prefix
    )
    try:
        quotas.acquire(tenant_limits(), tokens=10)
    finally:
        quotas.close()
    with redis.Redis(port=sentinel_ports[0]) as master:
        assert master.exists(f"{redis_prefix}:{{acme}}:key:k-7f3a:requests")


# -- through the ASGI middleware ----------------------------------------------------------

CHAT = "/api/chat/completions"


async def chat(request: Request) -> Response:
    doc = json.loads(await request.body())
    return JSONResponse({"model": doc["model"]}, headers={"X-TenantKit-Tokens-Used": "40"})


def test_asgi_middleware_on_the_cluster(
    make_kit: Callable[..., Any], cluster_uri: str, redis_prefix: str
) -> None:
    """A kit on the cluster admits, settles and refuses through the ASGI middleware."""
    kit = make_kit(
        tenants={"acme": {"quota_requests_per_minute": 2, "quota_tokens_per_minute": 10_000}},
        policy_paths=(CHAT,),
        quota=QuotaSettings(
            storage_uri=cluster_uri, timeout_seconds=TIMEOUT, key_prefix=redis_prefix
        ),
    )
    issued = kit.api_keys.issue("acme", name="test", rate_limit=5, token_limit=5_000)
    headers = {"X-API-Key": issued.key, "Content-Type": "application/json"}
    payload = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    )
    app = Starlette(routes=[Route(CHAT, chat, methods=["POST"])])
    transport = httpx.ASGITransport(app=TenantKitMiddleware(app, kit))

    async def run() -> tuple[list[httpx.Response], dict[str, str], list[int]]:
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                sent = [await client.post(CHAT, content=payload, headers=headers) for _ in range(3)]
            health = await kit.health_async()
            await kit.quotas.drain()
            limits = tenant_limits(
                requests=2, tokens=10_000, key_tokens=5_000, key_id=issued.record.id
            )
            probe = [limit for limit in limits if limit.unit == "tokens"]
            left = list((await kit.quotas.acquire_async(probe, tokens=0)).remaining)
            return sent, health, left
        finally:
            await kit.quotas.aclose()

    sent, health, left = asyncio.run(run())
    assert [response.status_code for response in sent] == [200, 200, 429]
    assert sent[1].headers["ratelimit"].startswith('"tenant-requests";r=0;')
    assert sent[2].headers["retry-after"] == "30"
    assert sent[2].json()["limit"] == "tenant-requests"
    assert health["quota_storage"] == "ok"
    # Each admitted request reserved its estimate and settled at the 40 tokens it used.
    assert 9_920 <= left[0] <= 10_000
    assert 4_920 <= left[1] <= 5_000
