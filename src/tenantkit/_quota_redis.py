"""GCRA buckets in Redis, shared by every process: one Lua call per decision.

The clients come from ``limits`` (``storage_from_string`` understands
``redis://``, ``rediss://``, ``redis+unix://``, ``redis+cluster://`` and
``redis+sentinel://``, and their ``async+`` variants through redis-py's asyncio
client); tenantkit adds what ``limits`` lacks: several limits decided in one
atomic script, reservations that are settled or refunded later, and a local
deny-until cache. Each bucket is a string key holding its TAT in microseconds
of the Redis server's clock (``TIME`` inside the script, so app clocks never
matter), expiring when the bucket is full again. A tenant's keys share the
hash tag ``{tenant}`` so a cluster keeps them on one slot.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._quota_core import PERIOD_SECONDS, Outcome
from ._ratelimit_headers import UNKNOWN
from .errors import ConfigurationError, StorageError

if TYPE_CHECKING:
    from .quotas import Limit

US = 1_000_000
PERIOD_US = PERIOD_SECONDS * US
MAX_DENIALS = 10_000
POOL_SIZE = 16
"""Connections per client. A few in flight keep the event loop's latency under the
timeout; more would time out spuriously under a burst. Requests beyond wait for one."""
POOL_TIMEOUT = 1.0
"""Seconds a request may wait for a free connection before it counts as a failure."""
BASIC_SCHEMES = ("redis", "rediss", "redis+unix")

# KEYS: one bucket per limit. ARGV[1]: window µs; then q and cost per limit.
# Returns {admitted, blocker (1-based, 0 if admitted), wait µs, now µs, level µs per limit}.
ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local staged, base, new = {}, {}, {}
local wait, blocker = 0, 0
for i = 1, #KEYS do
  local q = tonumber(ARGV[2 * i])
  local cost = tonumber(ARGV[2 * i + 1])
  local tat = staged[KEYS[i]] or (tonumber(redis.call('GET', KEYS[i]) or '0') or 0)
  if tat < now then tat = now end
  base[i] = tat
  new[i] = tat
  if q <= 0 then
    if wait < 60000000 then wait = 60000000; blocker = i end
  else
    local over = math.ceil(tat + math.max(cost, 1) * 60000000 / q) - now - window
    if over > wait then wait = over; blocker = i end
    new[i] = math.ceil(tat + cost * 60000000 / q)
    staged[KEYS[i]] = new[i]
  end
end
local out = {blocker == 0 and 1 or 0, blocker, wait, now}
local level = new
if blocker > 0 then level = base end
for i = 1, #KEYS do
  out[4 + i] = level[i] - now
  if blocker == 0 and new[i] > now then
    redis.call('SET', KEYS[i], string.format('%.0f', new[i]),
               'PX', math.ceil((new[i] - now) / 1000) + 1)
  end
end
return out
"""

# KEYS: one bucket per limit. ARGV[1]: grant stamp µs, ARGV[2]: ttl µs; then q and delta.
ADJUST_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local fresh = now - tonumber(ARGV[1]) <= tonumber(ARGV[2])
for i = 1, #KEYS do
  local q = tonumber(ARGV[2 * i + 1])
  local delta = tonumber(ARGV[2 * i + 2])
  if q > 0 and delta ~= 0 and (delta > 0 or fresh) then
    local tat = (tonumber(redis.call('GET', KEYS[i]) or '0') or 0)
    local nt = nil
    if delta < 0 then
      if tat > now then nt = tat - math.floor(-delta * 60000000 / q) end
    else
      if tat < now then tat = now end
      nt = math.ceil(tat + delta * 60000000 / q)
    end
    if nt ~= nil then
      if nt > now then
        redis.call('SET', KEYS[i], string.format('%.0f', nt),
                   'PX', math.ceil((nt - now) / 1000) + 1)
      else
        redis.call('DEL', KEYS[i])
      end
    end
  end
end
return 1
"""


def _errors() -> tuple[type[BaseException], ...]:
    import redis.exceptions

    return (
        redis.exceptions.RedisError,
        redis.exceptions.RedisClusterException,  # not a RedisError
        OSError,
        TimeoutError,
        asyncio.TimeoutError,
    )


class RedisBackend:
    """Buckets in Redis through the sync and the asyncio clients ``limits`` builds."""

    def __init__(
        self,
        uri: str,
        *,
        burst_seconds: float,
        timeout: float,
        key_prefix: str,
        options: dict[str, Any] | None = None,
    ) -> None:
        try:
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                f"{uri.split(':', 1)[0]}:// quota storage needs tenantkit[redis]"
            ) from exc
        if "{" in key_prefix or "}" in key_prefix:
            raise ConfigurationError("the quota key prefix must not contain '{' or '}'")
        self._uri = uri
        self._window = PERIOD_US + round(burst_seconds * US)
        self._timeout = timeout
        self._prefix = key_prefix + ":"
        options = dict(options or {})
        self._pool_size = int(options.pop("max_connections", POOL_SIZE))
        self._pool_timeout = float(options.pop("pool_timeout", POOL_TIMEOUT))
        # One bounded attempt: a retry would multiply the timeout the settings promise.
        # Opening a connection takes a few round trips, so it gets a few timeouts.
        self._options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout * 4,
            "retry": Retry(NoBackoff(), 0),
            **options,
        }
        if uri.startswith("redis+sentinel"):
            self._options.setdefault(
                "sentinel_kwargs",
                {
                    "socket_timeout": timeout,
                    "socket_connect_timeout": timeout * 4,
                    "retry": Retry(NoBackoff(), 0),
                },
            )
        self._errors = _errors()
        self._lock = threading.Lock()
        self._sync: Any = None
        self._async: Any = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._denied: dict[str, tuple[float, int, int, float]] = {}
        self.round_trips = 0
        self.local_denials = 0

    # -- clients ----------------------------------------------------------------------

    def _client(self) -> Any:
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    self._sync = self._connect(self._uri)
        return self._sync

    def _aclient(self) -> Any:
        # An asyncio connection belongs to the loop that opened it: one client per loop.
        loop = asyncio.get_running_loop()
        if self._async is None or self._async_loop is not loop:
            self._async = self._connect("async+" + self._uri)
            self._async_loop = loop
        return self._async

    def _connect(self, uri: str) -> Any:
        from limits.errors import ConfigurationError as LimitsConfigurationError
        from limits.storage import storage_from_string

        is_async = uri.startswith("async+")
        options = dict(self._options)
        if is_async:
            options["implementation"] = "redispy"
        try:
            if self._uri.split("://", 1)[0] in BASIC_SCHEMES:
                options = {**options, "connection_pool": self._pool(is_async)}
            storage: Any = storage_from_string(uri, key_prefix=self._prefix[:-1], **options)
            client = storage.bridge.get_connection() if is_async else storage.get_connection()
            return (
                client,
                client.register_script(ACQUIRE_LUA),
                client.register_script(ADJUST_LUA),
            )
        except LimitsConfigurationError as exc:
            raise ConfigurationError(f"quota storage {self._uri!r}: {exc}") from exc
        except self._errors as exc:
            raise StorageError(f"quota storage {self._uri!r} is unreachable: {exc}") from exc

    def _pool(self, is_async: bool) -> Any:
        """A blocking pool of ``POOL_SIZE`` connections for a single Redis server."""
        import redis
        import redis.asyncio

        url = self._uri.replace("redis+unix", "unix")
        kwargs = {k: v for k, v in self._options.items() if k != "sentinel_kwargs"}
        cls = redis.asyncio.BlockingConnectionPool if is_async else redis.BlockingConnectionPool
        return cls.from_url(
            url, max_connections=self._pool_size, timeout=self._pool_timeout, **kwargs
        )

    # -- decisions --------------------------------------------------------------------

    def acquire(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome:
        """Decide every limit in one round trip (none if a cached denial still holds)."""
        if self._denied and (cached := self._cached_denial(limits, costs)) is not None:
            return cached
        keys, args = self._acquire_args(limits, costs)
        _, script, _ = self._client()
        try:
            self.round_trips += 1
            reply = script(keys=keys, args=args)
        except self._errors as exc:
            raise StorageError(f"quota storage failed: {exc}") from exc
        return self._outcome(limits, costs, reply)

    async def acquire_async(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome:
        """``acquire`` on the asyncio client; never blocks the event loop."""
        if self._denied and (cached := self._cached_denial(limits, costs)) is not None:
            return cached
        keys, args = self._acquire_args(limits, costs)
        try:
            _, script, _ = self._aclient()
            self.round_trips += 1
            reply = await script(keys=keys, args=args)
        except self._errors as exc:
            raise StorageError(f"quota storage failed: {exc}") from exc
        return self._outcome(limits, costs, reply)

    def adjust(
        self, limits: Sequence[Limit], deltas: Sequence[int], stamp: float, ttl: float
    ) -> None:
        """Charge or refund in one round trip; refunds of grants older than ``ttl`` are void."""
        keys, args = self._adjust_args(limits, deltas, stamp, ttl)
        _, _, script = self._client()
        try:
            self.round_trips += 1
            script(keys=keys, args=args)
        except self._errors as exc:
            raise StorageError(f"quota storage failed: {exc}") from exc

    async def adjust_async(
        self, limits: Sequence[Limit], deltas: Sequence[int], stamp: float, ttl: float
    ) -> None:
        """``adjust`` on the asyncio client."""
        keys, args = self._adjust_args(limits, deltas, stamp, ttl)
        try:
            _, _, script = self._aclient()
            self.round_trips += 1
            await script(keys=keys, args=args)
        except self._errors as exc:
            raise StorageError(f"quota storage failed: {exc}") from exc

    def forget_denial(self, limits: Sequence[Limit]) -> None:
        """Drop cached denials of ``limits`` (capacity was just given back)."""
        for limit in limits:
            self._denied.pop(self._prefix + limit.key, None)

    # -- helpers ----------------------------------------------------------------------

    def _acquire_args(
        self, limits: Sequence[Limit], costs: Sequence[int]
    ) -> tuple[list[str], list[int]]:
        prefix = self._prefix
        keys = [prefix + limit.key for limit in limits]
        args = [self._window]
        for limit, cost in zip(limits, costs, strict=True):
            args.append(limit.per_minute)
            args.append(cost)
        return keys, args

    def _adjust_args(
        self, limits: Sequence[Limit], deltas: Sequence[int], stamp: float, ttl: float
    ) -> tuple[list[str], list[int]]:
        prefix = self._prefix
        keys = [prefix + limit.key for limit in limits]
        args = [round(stamp * US), round(ttl * US)]
        for limit, delta in zip(limits, deltas, strict=True):
            args.append(limit.per_minute)
            args.append(delta)
        return keys, args

    def _outcome(self, limits: Sequence[Limit], costs: Sequence[int], reply: Any) -> Outcome:
        admitted, blocker, wait, now = (int(v) for v in reply[:4])
        window = self._window
        remaining: list[int] = []
        reset: list[int] = []
        for limit, level in zip(limits, reply[4:], strict=True):
            level = int(level)
            left = (window - level) * limit.per_minute // PERIOD_US
            remaining.append(left if left > 0 else 0)
            reset.append(-(-level // US) if level > 0 else 0)
        if admitted:
            return Outcome(True, remaining, reset, stamp=now / US)
        i = blocker - 1
        retry = max(1, -(-wait // US))
        if len(self._denied) >= MAX_DENIALS:
            self._denied.clear()
        mono = time.monotonic()
        self._denied[self._prefix + limits[i].key] = (
            mono + wait / US,
            costs[i],
            remaining[i],
            mono + reset[i],
        )
        return Outcome(False, remaining, reset, retry_after=retry, blocker=i, stamp=now / US)

    def _cached_denial(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome | None:
        mono = time.monotonic()
        for i, limit in enumerate(limits):
            key = self._prefix + limit.key
            entry = self._denied.get(key)
            if entry is None:
                continue
            until, cost, left, full_at = entry
            if until <= mono:
                del self._denied[key]
            elif costs[i] >= cost:
                self.local_denials += 1
                remaining = [UNKNOWN] * len(limits)
                reset = [UNKNOWN] * len(limits)
                remaining[i] = left
                reset[i] = max(0, math.ceil(full_at - mono))
                retry = max(1, math.ceil(until - mono))
                return Outcome(False, remaining, reset, retry_after=retry, blocker=i)
        return None

    # -- lifecycle --------------------------------------------------------------------

    def health(self) -> bool:
        """Ping Redis within the timeout."""
        try:
            client, _, _ = self._client()
            self.round_trips += 1
            return bool(client.ping())
        except StorageError:
            return False
        except self._errors:
            return False

    async def health_async(self) -> bool:
        """Ping Redis on the asyncio client within the timeout."""
        try:
            client, _, _ = self._aclient()
            self.round_trips += 1
            return bool(await client.ping())
        except StorageError:
            return False
        except self._errors:
            return False

    def close(self) -> None:
        """Close the sync client's connections."""
        if self._sync is not None:
            client = self._sync[0]
            self._sync = None
            client.close()
            pool = getattr(client, "connection_pool", None)  # a cluster client has none
            if pool is not None:
                pool.disconnect()

    async def aclose(self) -> None:
        """Close both clients' connections."""
        self.close()
        if self._async is not None:
            client = self._async[0]
            self._async = None
            await client.aclose()
            pool = getattr(client, "connection_pool", None)
            if pool is not None:
                await pool.disconnect()
