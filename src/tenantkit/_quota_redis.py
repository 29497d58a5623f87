"""GCRA buckets in Redis, shared by every process: one Lua call per decision.

The clients come from ``limits`` (``storage_from_string`` understands
``redis://``, ``rediss://``, ``redis+unix://``, ``redis+cluster://`` and
``redis+sentinel://``, and their ``async+`` variants through redis-py's asyncio
client); tenantkit adds what ``limits`` lacks: several limits decided in one
atomic script, reservations that are settled or refunded later, and a local
deny cache. Each bucket is a string key holding its exact TAT in microseconds
of the Redis server's clock (``TIME`` inside the script, so app clocks never
matter), expiring when the bucket is full again. A tenant's keys share the
hash tag ``{tenant}`` so a cluster keeps them on one slot.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._quota_core import (
    PERIOD_SECONDS,
    Outcome,
    seconds_to_full,
    seconds_to_wait,
    units_left,
)
from .errors import ConfigurationError, StorageError

if TYPE_CHECKING:
    from .quotas import Limit

US = 1_000_000
PERIOD_US = PERIOD_SECONDS * US
NS_PER_US = 1_000
NS_PER_S = 1_000_000_000
PERIOD_NS = PERIOD_SECONDS * NS_PER_S
MAX_DENIALS = 10_000
POOL_SIZE = 16
"""Connections per client. A few in flight keep the event loop's latency under the
timeout; more would time out spuriously under a burst. Requests beyond wait for one."""
POOL_TIMEOUT = 1.0
"""Seconds a request may wait for a free connection before it counts as a failure."""
BASIC_SCHEMES = ("redis", "rediss", "redis+unix")

MAX_DEBT_US = 2**49
"""The furthest a TAT may run ahead of now (about 17.8 years of debt, which no client
outlives). Lua numbers are doubles, exact for integers below 2^53; with this cap
every value the scripts compute stays below ``now + 2·MAX_DEBT_US < 2^53`` until
the year 2200 (``now`` is about 1.7e15 µs in 2024, and ``2^53`` is 9.0e15)."""

# Bucket values: the exact TAT is ``tat + rem/q`` µs (0 <= rem < q), stored as the
# string "<tat>" when rem is 0 and "<tat>.<rem>" otherwise. The digits after the dot
# are the integer rem, not a decimal fraction: the code before exact TATs read
# buckets with tonumber(), and still reads such a value as a TAT within 1 µs of the
# truth, so a rolling upgrade neither resets nor misreads a bucket; keys written
# before (a plain integer) are read with rem 0. A rem stored under a larger q (a plan
# change) is clamped to q - 1, an error below 1 µs.
#
# No product or quotient of large numbers is computed in Lua: Python divides each
# charge ``cost·60e6/q`` µs into whole µs and a remainder in 1/q µs (``divmod``, exact
# on integers), capped at MAX_DEBT_US, and the scripts only add and compare. The
# largest remainder sum, ``2q``, stays exact for any q below 2^52 (quotas are stored
# as 32-bit integers).
_LUA_BUCKETS = """
local function load(key, q)
  local v = redis.call('GET', key)
  if not v then return 0, 0 end
  local dot = string.find(v, '.', 1, true)
  if dot == nil then return tonumber(v) or 0, 0 end
  local rem = tonumber(string.sub(v, dot + 1)) or 0
  if rem >= q then rem = q - 1 end
  if rem < 0 then rem = 0 end
  return tonumber(string.sub(v, 1, dot - 1)) or 0, rem
end
local function add(tat, rem, q, inc, irem)
  tat, rem = tat + inc, rem + irem
  if rem >= q then tat, rem = tat + 1, rem - q end
  return tat, rem
end
local function store(key, tat, rem, now)
  if tat < now or (tat == now and rem == 0) then
    redis.call('DEL', key)
    return
  end
  if tat > now + MAX_DEBT then tat, rem = now + MAX_DEBT, 0 end
  local v = string.format('%.0f', tat)
  if rem > 0 then v = v .. '.' .. string.format('%.0f', rem) end
  redis.call('SET', key, v, 'PX', math.ceil((tat - now) / 1000) + 1)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
""".replace("MAX_DEBT", str(MAX_DEBT_US))

# KEYS: one bucket per limit. ARGV[1]: window µs; then per limit q, the charge (whole
# µs and remainder) and the admission check's charge (the cost, or 1 unit if it is 0).
# Returns {admitted, now µs, then per limit its level: whole µs and remainder}, the
# levels after the charge if admitted, before it (as stored) if not.
ACQUIRE_LUA = (
    _LUA_BUCKETS
    + """
local window = tonumber(ARGV[1])
local tats, rems, stored = {}, {}, {}
local out = {1, now}
for i = 1, #KEYS do
  local a = 5 * i - 3
  local q = tonumber(ARGV[a])
  local key = KEYS[i]
  local tat, rem = tats[key], rems[key]
  if tat == nil then tat, rem = load(key, q) end
  if tat < now then tat, rem = now, 0 end
  if stored[key] == nil then stored[key] = {tat - now, rem} end
  out[2 * i + 1], out[2 * i + 2] = tat - now, rem
  if q <= 0 then
    out[1] = 0
  else
    local nt, nr = add(tat, rem, q, tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]))
    if nt > now + window or (nt == now + window and nr > 0) then out[1] = 0 end
    tats[key], rems[key] = add(tat, rem, q, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]))
    out[2 * i + 1], out[2 * i + 2] = tats[key] - now, rems[key]
  end
end
if out[1] == 1 then
  for key, tat in pairs(tats) do
    if tat ~= stored[key][1] + now or rems[key] ~= stored[key][2] then
      store(key, tat, rems[key], now)
    end
  end
else
  for i = 1, #KEYS do
    out[2 * i + 1], out[2 * i + 2] = stored[KEYS[i]][1], stored[KEYS[i]][2]
  end
end
return out
"""
)

# KEYS: one bucket per limit. ARGV[1]: grant stamp µs, ARGV[2]: ttl µs; then per
# limit q, the sign of the delta and its size (whole µs and remainder).
ADJUST_LUA = (
    _LUA_BUCKETS
    + """
local fresh = now - tonumber(ARGV[1]) <= tonumber(ARGV[2])
for i = 1, #KEYS do
  local a = 4 * i - 1
  local q = tonumber(ARGV[a])
  local sign = tonumber(ARGV[a + 1])
  if q > 0 and sign ~= 0 and (sign > 0 or fresh) then
    local tat, rem = load(KEYS[i], q)
    local inc, irem = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    if sign < 0 then
      -- A refund beyond a full bucket is meaningless; an absent bucket is full.
      if tat > now or (tat == now and rem > 0) then
        tat, rem = tat - inc, rem - irem
        if rem < 0 then tat, rem = tat - 1, rem + q end
        store(KEYS[i], tat, rem, now)
      end
    else
      if tat < now then tat, rem = now, 0 end
      tat, rem = add(tat, rem, q, inc, irem)
      store(KEYS[i], tat, rem, now)
    end
  end
end
return 1
"""
)


def _charge(cost: int, q: int) -> tuple[int, int]:
    """``cost`` units of a limit of ``q`` per minute in µs: whole µs and remainder (1/q µs)."""
    if q <= 0:
        return 0, 0
    whole, rem = divmod(cost * PERIOD_US, q)
    return (whole, rem) if whole < MAX_DEBT_US else (MAX_DEBT_US, 0)


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
        self._denied: dict[str, tuple[int, int, int]] = {}
        """Per bucket key: its q, its exact TAT in monotonic ns scaled by q, and until
        when (monotonic ns) the entry may be used."""
        self._forgot_at = 0
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
        """Decide every limit in one round trip (none if cached levels show a denial)."""
        if self._denied and (cached := self._cached_denial(limits, costs)) is not None:
            return cached
        keys, args = self._acquire_args(limits, costs)
        _, script, _ = self._client()
        sent = time.monotonic_ns()
        try:
            self.round_trips += 1
            reply = script(keys=keys, args=args)
        except self._errors as exc:
            raise StorageError(f"quota storage failed: {exc}") from exc
        return self._outcome(limits, costs, reply, sent)

    async def acquire_async(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome:
        """``acquire`` on the asyncio client; never blocks the event loop."""
        if self._denied and (cached := self._cached_denial(limits, costs)) is not None:
            return cached
        keys, args = self._acquire_args(limits, costs)
        try:
            _, script, _ = self._aclient()
            sent = time.monotonic_ns()
            self.round_trips += 1
            reply = await script(keys=keys, args=args)
        except self._errors as exc:
            raise StorageError(f"quota storage failed: {exc}") from exc
        return self._outcome(limits, costs, reply, sent)

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
        """Drop the cached levels of ``limits`` (capacity was just given back)."""
        if limits:
            # A reply to a call sent before now may predate the change: it caches nothing.
            self._forgot_at = time.monotonic_ns()
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
            q = limit.per_minute
            charge = _charge(cost, q)
            args.append(q)
            args.extend(charge)
            args.extend(charge if cost > 0 else _charge(1, q))
        return keys, args

    def _adjust_args(
        self, limits: Sequence[Limit], deltas: Sequence[int], stamp: float, ttl: float
    ) -> tuple[list[str], list[int]]:
        # Whatever is cached about these buckets is about to be wrong: forget it first
        # (a call that times out may still have run).
        self.forget_denial([limit for limit, delta in zip(limits, deltas, strict=True) if delta])
        prefix = self._prefix
        keys = [prefix + limit.key for limit in limits]
        args = [round(stamp * US), round(ttl * US)]
        for limit, delta in zip(limits, deltas, strict=True):
            q = limit.per_minute
            args.append(q)
            args.append((delta > 0) - (delta < 0))
            args.extend(_charge(abs(delta), q))
        return keys, args

    def _outcome(
        self, limits: Sequence[Limit], costs: Sequence[int], reply: Any, sent: int
    ) -> Outcome:
        admitted, now = int(reply[0]), int(reply[1])
        window = self._window
        levels: list[int] = []
        remaining: list[int] = []
        reset: list[int] = []
        for i, limit in enumerate(limits):
            q = limit.per_minute
            level = int(reply[2 * i + 2]) * q + int(reply[2 * i + 3]) if q > 0 else 0
            levels.append(level)
            remaining.append(units_left(level, q, window, PERIOD_US))
            reset.append(seconds_to_full(level, q, US))
        retry, blocker = 0, -1
        if not admitted:
            for i, limit in enumerate(limits):
                wait = seconds_to_wait(levels[i], limit.per_minute, costs[i], window, PERIOD_US, US)
                if wait > retry:
                    retry, blocker = wait, i
            # The script and this arithmetic agree exactly; never report a 0 s wait anyway.
            retry, blocker = max(retry, 1), max(blocker, 0)
        self._remember(limits, levels, sent, retry, admitted)
        return Outcome(bool(admitted), remaining, reset, retry, blocker, now / US)

    def _remember(
        self, limits: Sequence[Limit], levels: list[int], sent: int, retry: int, admitted: int
    ) -> None:
        """Cache each bucket's exact TAT on the local monotonic clock (scaled by its q).

        A denial caches every limit of the request; an admission refreshes the limits
        already cached (and caches nothing new), so no cached TAT is older than this
        process's last decision on its bucket. The server's clock is read somewhere
        between ``sent`` and the reply, so anchoring the level at ``sent`` places the
        cached TAT at or before the real one: the cache never denies what Redis would
        admit (it may answer a Retry-After up to that round trip's duration short).
        """
        denied = self._denied
        if admitted and not denied:
            return
        if sent <= self._forgot_at:
            # Sent before a refund: the levels may predate it. Cache nothing of them.
            for limit in limits:
                denied.pop(self._prefix + limit.key, None)
            return
        if len(denied) >= MAX_DENIALS:
            denied.clear()
        prefix = self._prefix
        # An entry is kept while it may take part in a local denial: until its bucket is
        # full again, or for a denial until the request it refused would be admitted.
        until = sent + retry * NS_PER_S
        for limit, level in zip(limits, levels, strict=True):
            key = prefix + limit.key
            q = limit.per_minute
            if admitted:
                old = denied.get(key)
                if old is None:
                    continue
                live = old[2] if old[0] == q else sent
            else:
                live = until
            if q > 0:
                tat_q = sent * q + level * NS_PER_US
                live = max(live, -(-tat_q // q))
            else:
                tat_q = 0
            denied[key] = (q, tat_q, live)

    def _cached_denial(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome | None:
        """Answer locally iff every limit of the request has a cached level and they deny.

        Redis would decide from the same buckets with the same arithmetic, taking
        the longest wait over all the limits. Computing that maximum needs every
        limit's level: with one missing, the local answer could be shorter than
        Redis' (or name the wrong limit), so any limit without a live entry (or
        cached under another quota) sends the request to Redis. As the cached TATs
        are at or before the real ones (see ``_remember``), a local denial is one
        Redis would give too, and a wait of 0 on every limit goes to Redis.
        """
        mono = time.monotonic_ns()
        denied = self._denied
        prefix = self._prefix
        window = self._window * NS_PER_US
        remaining: list[int] = []
        reset: list[int] = []
        retry, blocker = 0, -1
        for i, limit in enumerate(limits):
            key = prefix + limit.key
            entry = denied.get(key)
            q = limit.per_minute
            if entry is None or entry[0] != q:
                return None
            if entry[2] <= mono:
                denied.pop(key, None)  # another thread may have dropped it already
                return None
            level = entry[1] - mono * q if q > 0 else 0
            if level < 0:
                level = 0
            wait = seconds_to_wait(level, q, costs[i], window, PERIOD_NS, NS_PER_S)
            if wait > retry:
                retry, blocker = wait, i
            remaining.append(units_left(level, q, window, PERIOD_NS))
            reset.append(seconds_to_full(level, q, NS_PER_S))
        if blocker < 0:
            return None
        self.local_denials += 1
        return Outcome(False, remaining, reset, retry_after=retry, blocker=blocker)

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
