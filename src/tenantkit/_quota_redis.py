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
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ._quota_clients import LoopClients
from ._quota_core import Mark, Outcome, seconds_to_full, seconds_to_wait, units_left
from ._quota_denials import DenyCache
from ._quota_lua import ACQUIRE_LUA, ADJUST_LUA, PERIOD_US, US, charge
from .errors import ConfigurationError, StorageError

if TYPE_CHECKING:
    from .quotas import Limit
    from .settings import QuotaSettings

POOL_SIZE = 16
"""Connections per client. A few in flight keep the event loop's latency under the
timeout; more would time out spuriously under a burst. Requests beyond wait for one."""
POOL_TIMEOUT = 1.0
"""Seconds a request may wait for a free connection before it counts as a failure."""
BASIC_SCHEMES = ("redis", "rediss", "redis+unix")
HEALTH_TTL_MS = 10_000
log = logging.getLogger("tenantkit")


class Connected(NamedTuple):
    """One path's client, its two registered scripts, and the sentinel clients behind it."""

    client: Any
    acquire: Any
    adjust: Any
    sentinels: tuple[Any, ...]
    """A Sentinel's own connections to its sentinels: the client's close leaves them open."""


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
        settings: QuotaSettings,
        *,
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
        self._window = PERIOD_US + round(settings.burst_seconds * US)
        self._ttl = round(settings.reservation_ttl_seconds * US)
        timeout = self._timeout = settings.timeout_seconds
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
        self._check_uri()
        self._lock = threading.Lock()
        self._sync: Connected | None = None
        self._async = LoopClients(lambda: self._connect("async+" + self._uri))
        self._cache = DenyCache(self._prefix, self._window)
        self.round_trips = 0

    # -- clients ----------------------------------------------------------------------

    def _check_uri(self) -> None:
        """Refuse at start-up a URI no request could use (clients connect lazily)."""
        uri = self._uri
        scheme, _, rest = uri.partition("://")
        where, _, path = rest.partition("/")
        try:
            if scheme in BASIC_SCHEMES:
                db = path.partition("?")[0]
                if scheme != "redis+unix" and db and not db.isdigit():
                    raise ValueError(f"the database {db!r} is not a number")
                self._pool(False)  # parses host, port and options; connects nothing
                return
            for host in where.rpartition("@")[2].split(","):
                port = host.rpartition(":")[2] if ":" in host else "0"
                if not host or not port.isdigit():
                    raise ValueError(f"{host!r} is not host:port")
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"quota storage {uri!r}: {exc}") from exc
        service = path.partition("?")[0] or self._options.get("service_name")
        if scheme.startswith("redis+sentinel") and not service:
            raise ConfigurationError(
                f"quota storage {uri!r}: name the sentinel service, redis+sentinel://host:port/name"
            )

    def _client(self) -> Connected:
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    self._sync = self._connect(self._uri)
        return self._sync

    async def _aclient(self) -> Connected:
        # An asyncio connection belongs to the loop that opened it: one client per loop.
        connected: Connected = await self._async.get()
        return connected

    def _connect(self, uri: str) -> Connected:
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
            owner = storage.bridge if is_async else storage
            client = owner.get_connection()
            sentinel = getattr(owner, "sentinel", None)
            return Connected(
                client,
                client.register_script(ACQUIRE_LUA),
                client.register_script(ADJUST_LUA),
                tuple(sentinel.sentinels) if sentinel is not None else (),
            )
        except (LimitsConfigurationError, ValueError, TypeError) as exc:
            # Past the start-up check, a client that cannot be built is an outage
            # (503 or fail_open), never an error page.
            raise StorageError(f"quota storage {self._uri!r} is misconfigured: {exc}") from exc
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
        if self._cache and (cached := self._cache.answer(limits, costs)) is not None:
            return cached
        keys, args = self._acquire_args(limits, costs)
        script = self._client().acquire
        sent = time.monotonic_ns()
        try:
            self.round_trips += 1
            reply = script(keys=keys, args=args)
        except self._errors as exc:
            raise StorageError(f"quota storage failed: {exc}") from exc
        return self._outcome(limits, costs, reply, sent)

    def peek(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome | None:
        """The denial the deny cache gives now (no round trip, no charge), else ``None``."""
        return self._cache.answer(limits, costs) if self._cache else None

    async def acquire_async(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome:
        """``acquire`` on the asyncio client; never blocks the event loop."""
        if self._cache and (cached := self._cache.answer(limits, costs)) is not None:
            return cached
        keys, args = self._acquire_args(limits, costs)
        try:
            script = (await self._aclient()).acquire
            sent = time.monotonic_ns()
            self.round_trips += 1
            reply = await script(keys=keys, args=args)
        except self._errors as exc:
            raise StorageError(f"quota storage failed: {exc}") from exc
        return self._outcome(limits, costs, reply, sent)

    def adjust(
        self,
        limits: Sequence[Limit],
        deltas: Sequence[int],
        marks: Sequence[Mark],
        stamp: float,
        ttl: float,
    ) -> None:
        """Charge or refund in one round trip; refunds of grants older than ``ttl`` are void."""
        keys, args = self._adjust_args(limits, deltas, marks, stamp, ttl)
        script = self._client().adjust
        try:
            self.round_trips += 1
            script(keys=keys, args=args)
        except self._errors as exc:
            raise StorageError(f"quota storage failed: {exc}") from exc

    async def adjust_async(
        self,
        limits: Sequence[Limit],
        deltas: Sequence[int],
        marks: Sequence[Mark],
        stamp: float,
        ttl: float,
    ) -> None:
        """``adjust`` on the asyncio client."""
        keys, args = self._adjust_args(limits, deltas, marks, stamp, ttl)
        try:
            script = (await self._aclient()).adjust
            self.round_trips += 1
            await script(keys=keys, args=args)
        except self._errors as exc:
            raise StorageError(f"quota storage failed: {exc}") from exc

    def forget_denial(self, limits: Sequence[Limit]) -> None:
        """Drop the cached levels of ``limits`` (capacity was just given back)."""
        self._cache.forget(limits)

    @property
    def local_denials(self) -> int:
        """Requests the deny cache answered without a round trip."""
        return self._cache.local_denials

    # -- helpers ----------------------------------------------------------------------

    def _acquire_args(
        self, limits: Sequence[Limit], costs: Sequence[int]
    ) -> tuple[list[str], list[int]]:
        prefix = self._prefix
        keys = [prefix + limit.key for limit in limits]
        args = [self._window, self._ttl]
        for limit, cost in zip(limits, costs, strict=True):
            q = limit.per_minute
            charged = charge(cost, q)
            args.append(q)
            args.extend(charged)
            args.extend(charged if cost > 0 else charge(1, q))
        return keys, args

    def _adjust_args(
        self,
        limits: Sequence[Limit],
        deltas: Sequence[int],
        marks: Sequence[Mark],
        stamp: float,
        ttl: float,
    ) -> tuple[list[str], list[int]]:
        # Whatever is cached about these buckets is about to be wrong: forget it first
        # (a call that times out may still have run).
        self.forget_denial([limit for limit, delta in zip(limits, deltas, strict=True) if delta])
        prefix = self._prefix
        keys = [prefix + limit.key for limit in limits]
        args = [round(stamp * US), round(ttl * US)]
        for i, (limit, delta) in enumerate(zip(limits, deltas, strict=True)):
            q = limit.per_minute
            args.append(q)
            args.append((delta > 0) - (delta < 0))
            args.extend(charge(abs(delta), q))
            if delta < 0 and q > 0:  # where its charge ends and starts (_quota_core.refund)
                args.extend(divmod(marks[i][0], q))
                args.extend(divmod(marks[i][1], q))
            else:
                args.extend((0, 0, 0, 0))
        return keys, args

    def _outcome(
        self, limits: Sequence[Limit], costs: Sequence[int], reply: Any, sent: int
    ) -> Outcome:
        admitted, now = int(reply[0]), int(reply[1])
        window = self._window
        levels: list[int] = []
        marks: list[Mark] = []
        remaining: list[int] = []
        reset: list[int] = []
        for i, limit in enumerate(limits):
            q = limit.per_minute
            at = 4 * i + 2  # level, then how far refunds moved it back: whole µs, remainder
            level = int(reply[at]) * q + int(reply[at + 1]) if q > 0 else 0
            levels.append(level)
            moved = int(reply[at + 2]) * q + int(reply[at + 3])
            mark = now * q + level + moved
            marks.append((mark, mark - costs[i] * PERIOD_US))
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
        self._cache.remember(limits, levels, sent, retry, admitted)
        return Outcome(bool(admitted), remaining, reset, retry, blocker, now / US, marks)

    # -- lifecycle --------------------------------------------------------------------

    def health(self) -> bool:
        """Write a short-lived key within the timeout: a replica or a full Redis is unhealthy.

        A ``PING`` is answered by a read-only replica and by a Redis out of memory,
        both of which refuse every admission. On a cluster, every master must also
        answer a ``PING``: one down refuses the tenants whose slots it holds.
        """
        try:
            client = self._client().client
            self.round_trips += 1
            if not client.set(self._prefix + "health", "1", px=HEALTH_TTL_MS):
                return False
            if hasattr(client, "get_primaries"):  # a cluster: every master holds tenants
                self.round_trips += 1
                return bool(client.ping(target_nodes=client.PRIMARIES))
            return True
        except Exception:  # any failure to answer is the answer
            log.warning("tenantkit: quota storage health check failed", exc_info=True)
            return False

    async def health_async(self) -> bool:
        """``health`` on the asyncio client."""
        try:
            client = (await self._aclient()).client
            self.round_trips += 1
            if not await client.set(self._prefix + "health", "1", px=HEALTH_TTL_MS):
                return False
            if hasattr(client, "get_primaries"):
                self.round_trips += 1
                return bool(await client.ping(target_nodes=client.PRIMARIES))
            return True
        except Exception:  # any failure to answer is the answer
            log.warning("tenantkit: quota storage health check failed", exc_info=True)
            return False

    def close(self) -> None:
        """Close the sync client and its sentinels' connections, and closed loops' clients."""
        self._async.drop_closed()
        if self._sync is not None:
            client, _, _, sentinels = self._sync
            self._sync = None
            client.close()
            pool = getattr(client, "connection_pool", None)  # a cluster client has none
            if pool is not None:
                pool.disconnect()
            for sentinel in sentinels:
                sentinel.close()

    async def aclose(self) -> None:
        """Close the sync client's and the asyncio clients' connections."""
        self.close()
        await self._async.aclose()
