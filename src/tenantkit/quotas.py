"""Request and token quotas per tenant and per API key, decided together.

Each limit is a GCRA bucket (a token bucket over virtual time): ``q`` units per
minute refill evenly and the bucket holds ``burst = q·(60 + burst_seconds)/60``
units, by default one minute's quota. Over any interval of Δ seconds a limit
admits at most ``burst + q·Δ/60`` units. All the limits of a request are
charged together or not at all; tokens are reserved before the request and
settled with the real count after it. See ``docs/quotas.md``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ._quota_core import PERIOD_SECONDS, Backend, Outcome
from ._quota_grant import Grant, QuotaStats
from ._quota_limits import Limit, LimitName, LimitSet, Unit, limits_for
from ._quota_memory import MemoryBackend
from ._ratelimit_headers import RETRY_AFTER, HeaderRenderer
from .errors import (
    ConfigurationError,
    QuotaExceeded,
    ServiceUnavailable,
    StorageError,
    ValidationError,
)
from .settings import QuotaSettings

if TYPE_CHECKING:
    from ._quota_redis import RedisBackend

log = logging.getLogger("tenantkit.quotas")

STORAGE_RETRY_AFTER = 1
"""Seconds a 503 asks clients to wait when the quota storage is down (fail_closed)."""

_SCHEMES = {"memory": "memory"} | dict.fromkeys(
    ("redis", "rediss", "redis+unix", "redis+cluster", "redis+sentinel"), "redis"
)


class QuotaEngine:
    """Admit, settle and release requests against their limits on the configured storage.

    ``clock`` (seconds) drives the memory backend (tests pass a fake one); Redis
    always uses the server's clock. ``key_prefix`` prefixes Redis keys;
    ``max_keys`` caps the memory backend; ``storage_options`` go to the Redis client.
    """

    def __init__(
        self,
        settings: QuotaSettings | None = None,
        *,
        clock: Callable[[], float] | None = None,
        key_prefix: str = "tenantkit",
        max_keys: int = 1_000_000,
        storage_options: dict[str, object] | None = None,
    ) -> None:
        self.settings = settings = settings or QuotaSettings()
        _validate(settings, max_keys)
        # limits spells its asyncio storages async+redis://...: the same storage here,
        # as the engine takes the asyncio client on the event loop and the sync one elsewhere.
        uri = settings.storage_uri.removeprefix("async+")
        kind = _SCHEMES.get(urlsplit(uri).scheme)
        if kind is None:
            raise ConfigurationError(
                f"unknown quota storage {settings.storage_uri!r}; use memory:// or a redis URL"
            )
        # Whole microseconds: both backends then agree on every bucket's capacity.
        self._burst_us = round(settings.burst_seconds * 1_000_000)
        burst = self._burst_us / 1_000_000
        self._backend: Backend
        self._memory: MemoryBackend | None = None
        self._redis: RedisBackend | None = None
        if kind == "memory":
            self._memory = MemoryBackend(
                burst_seconds=burst, clock=clock or time.monotonic, max_keys=max_keys
            )
            self._backend = self._memory
        else:
            from ._quota_redis import RedisBackend

            self._redis = RedisBackend(
                uri, settings, key_prefix=key_prefix, options=dict(storage_options or {})
            )
            self._backend = self._redis
        self._renderer = HeaderRenderer(
            openai=settings.openai_headers, legacy=settings.legacy_headers
        )
        self._ttl = float(settings.reservation_ttl_seconds)
        self._fail_open = settings.on_failure == "fail_open"
        self._stats = QuotaStats()
        self._last_failure_log = -1e9
        self._pending: set[asyncio.Task[None]] = set()
        self._denied: dict[str, bool] = {}  # request limits denied since they last admitted

    # -- admission ----------------------------------------------------------------------

    def capacity(self, limit: Limit) -> int:
        """Return the most units ``limit``'s bucket holds (its burst)."""
        return limit.per_minute * (60_000_000 + self._burst_us) // 60_000_000

    def acquire(self, limits: Sequence[Limit], *, tokens: int) -> Grant:
        """Charge every limit or none: 1 per request limit, ``tokens`` per token limit.

        Raises ``QuotaExceeded`` (429) or, with ``fail_closed`` storage errors,
        ``ServiceUnavailable`` (503). A reservation larger than a token bucket is
        clamped to the bucket; the settle charges the real count.
        """
        if not limits:
            return Grant(limits, (), Outcome(True, (), ()), self._renderer)
        costs = self._costs(limits, tokens)
        try:
            outcome = self._backend.acquire(limits, costs)
        except StorageError as exc:
            return self._storage_failed(limits, costs, exc)
        if outcome.admitted:
            return Grant(limits, costs, outcome, self._renderer)
        return self._decide(limits, costs, outcome)

    async def acquire_async(self, limits: Sequence[Limit], *, tokens: int) -> Grant:
        """``acquire`` for the event loop (Redis through the asyncio client)."""
        if not limits:
            return Grant(limits, (), Outcome(True, (), ()), self._renderer)
        costs = self._costs(limits, tokens)
        try:
            outcome = await self._backend.acquire_async(limits, costs)
        except StorageError as exc:
            return self._storage_failed(limits, costs, exc)
        if outcome.admitted:
            return Grant(limits, costs, outcome, self._renderer)
        return self._decide(limits, costs, outcome)

    def precheck(self, limits: Sequence[Limit]) -> None:
        """Raise the 429 a request on ``limits`` gets now whatever it reserves; charge nothing.

        For a request whose body is not read yet, and only once one of its request
        limits has denied (until it admits again): else nothing is peeked. Only a
        denial the reservation cannot change is given: a request limit refuses, and
        every token bucket is full again by the Retry-After (else ``acquire``
        decides, with the body). Memory reads its buckets; Redis its deny cache only.
        """
        denied = self._denied
        if not denied or not any([limit.key in denied for limit in limits]):
            return  # the hot path: no request limit of these denied lately
        costs = (limits if isinstance(limits, LimitSet) else LimitSet(tuple(limits))).floor_costs
        outcome = self._backend.peek(limits, costs)
        if outcome is None or limits[outcome.blocker].unit != "requests":
            for limit in limits:
                denied.pop(limit.key, None)
            return
        for limit, reset in zip(limits, outcome.reset, strict=True):
            if limit.unit == "tokens" and reset > outcome.retry_after:
                return
        self._decide(limits, costs, outcome)

    @property
    def waits(self) -> bool:
        """Whether admissions wait on a network storage (else ``acquire`` never blocks)."""
        return self._memory is None

    # -- after the response -------------------------------------------------------------

    def settle(self, grant: Grant, tokens_used: int) -> bool:
        """Reconcile the token reservation with the real count; return whether it applied.

        At most one storage round trip, none when the estimate was exact. A grant
        is settled or released once; later calls do nothing.
        """
        deltas = grant._settle_deltas(tokens_used)
        if deltas is None:
            return False
        self._adjust(grant, deltas)
        return True

    async def settle_async(self, grant: Grant, tokens_used: int) -> bool:
        """``settle`` on the asyncio client."""
        deltas = grant._settle_deltas(tokens_used)
        if deltas is None:
            return False
        await self._adjust_async(grant, deltas)
        return True

    def release(self, grant: Grant) -> bool:
        """Give back the token reservation (the app raised, was cancelled or lost its client).

        The request itself stays counted: it reached the app.
        """
        deltas = grant._release_deltas()
        if deltas is None:
            return False
        self._adjust(grant, deltas)
        return True

    async def release_async(self, grant: Grant) -> bool:
        """``release`` on the asyncio client."""
        deltas = grant._release_deltas()
        if deltas is None:
            return False
        await self._adjust_async(grant, deltas)
        return True

    def settle_soon(self, grant: Grant, tokens_used: int) -> None:
        """Settle in a background task of the running loop (memory: at once); never raises.

        For the ASGI path: the request's task returns without waiting for Redis.
        ``drain()`` or ``aclose()`` waits for what is still pending.
        """
        deltas = grant._settle_deltas(tokens_used)
        if deltas is not None:
            self._schedule(grant, deltas)

    def release_soon(self, grant: Grant) -> None:
        """Release in a background task of the running loop (memory: at once)."""
        deltas = grant._release_deltas()
        if deltas is not None:
            self._schedule(grant, deltas)

    async def drain(self) -> None:
        """Wait for every settle or release scheduled with ``*_soon``."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def _schedule(self, grant: Grant, deltas: list[int]) -> None:
        if self._redis is None or not any(deltas):
            self._adjust(grant, deltas)
            return
        task = asyncio.get_running_loop().create_task(self._adjust_async(grant, deltas))
        self._pending.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("tenantkit: settling a reservation failed", exc_info=task.exception())

    # -- health and lifecycle -----------------------------------------------------------

    def health(self) -> bool:
        """Return whether the storage answers (memory always does)."""
        return self._backend.health()

    async def health_async(self) -> bool:
        """``health`` without blocking the event loop."""
        return await self._backend.health_async()

    @property
    def stats(self) -> QuotaStats:
        """A snapshot of the counters."""
        snap = QuotaStats(**vars(self._stats))
        if self._memory is not None:
            snap.evicted_keys = self._memory.evicted
            snap.stored_keys = len(self._memory)
        if self._redis is not None:
            snap.round_trips = self._redis.round_trips
            snap.local_denials = self._redis.local_denials
        return snap

    def close(self) -> None:
        """Release the storage's connections (memory: drop every bucket)."""
        self._backend.close()

    async def aclose(self) -> None:
        """Finish pending settles, then release the storage's connections."""
        await self.drain()
        await self._backend.aclose()

    # -- internals ----------------------------------------------------------------------

    def _costs(self, limits: Sequence[Limit], tokens: int) -> list[int]:
        if type(tokens) is not int or tokens < 0:
            raise ValidationError("tokens must be a non-negative integer", field="tokens")
        window = 60_000_000 + self._burst_us
        costs = []
        for limit in limits:
            if limit.unit == "requests":
                costs.append(1)
            else:
                capacity = limit.per_minute * window // 60_000_000
                costs.append(tokens if tokens < capacity else capacity)
        return costs

    def _decide(self, limits: Sequence[Limit], costs: Sequence[int], outcome: Outcome) -> Grant:
        if outcome.admitted:
            return Grant(limits, costs, outcome, self._renderer)
        self._stats.denied += 1
        limit = limits[outcome.blocker]
        retry = outcome.retry_after
        headers = dict(self._renderer.render(limits, outcome.remaining, outcome.reset))
        headers[RETRY_AFTER] = str(retry)
        if limit.unit == "requests":
            if len(self._denied) >= 100_000:  # bounded: forgetting only costs a body read
                self._denied.clear()
            self._denied[limit.key] = True
            detail = f"{limit.name} quota of {limit.per_minute} requests per minute exceeded"
        else:
            detail = (
                f"{limit.name} quota of {limit.per_minute} tokens per minute exceeded "
                f"(this request reserves {costs[outcome.blocker]})"
            )
        raise QuotaExceeded(
            f"{detail}; retry in {retry} s",
            headers=headers,
            reason="quota_exceeded",
            limit=limit.name,
            unit=limit.unit,
            quota=limit.per_minute,
            retry_after=retry,
        )

    def _storage_failed(
        self, limits: Sequence[Limit], costs: list[int], exc: StorageError
    ) -> Grant:
        self._stats.storage_errors += 1
        if self._fail_open:
            self._stats.fail_open_admissions += 1
            self._log_failure(exc, "admitting without quota checks (fail_open)")
            return Grant(limits, costs, None, self._renderer)
        self._log_failure(exc, "rejecting with 503 (fail_closed)")
        raise ServiceUnavailable(
            "the quota storage is unavailable",
            headers={RETRY_AFTER: str(STORAGE_RETRY_AFTER)},
            reason="quota_storage_unavailable",
            retry_after=STORAGE_RETRY_AFTER,
        ) from exc

    def _log_failure(self, exc: BaseException, action: str) -> None:
        now = time.monotonic()
        # Once per 10 s: an outage must not flood the log, the counters keep the total.
        if now - self._last_failure_log >= 10.0:
            self._last_failure_log = now
            log.error(
                "tenantkit quota storage error (%d so far), %s: %s",
                self._stats.storage_errors,
                action,
                exc,
            )

    def _adjust(self, grant: Grant, deltas: list[int]) -> None:
        if not any(deltas):
            return
        try:
            self._backend.adjust(grant.limits, deltas, grant._marks, grant.stamp, self._ttl)
        except StorageError as exc:
            self._stats.storage_errors += 1
            self._log_failure(exc, "the token reservation stays as estimated")
        finally:
            if self._redis is not None:  # memory caches no denials: nothing to forget
                # Even a call that failed or timed out may have refunded: forget the levels.
                self._backend.forget_denial(_refunded(grant.limits, deltas))

    async def _adjust_async(self, grant: Grant, deltas: list[int]) -> None:
        if not any(deltas):
            return
        try:
            await self._backend.adjust_async(
                grant.limits, deltas, grant._marks, grant.stamp, self._ttl
            )
        except StorageError as exc:
            self._stats.storage_errors += 1
            self._log_failure(exc, "the token reservation stays as estimated")
        finally:
            # Even a call that failed or timed out may have refunded: forget the levels.
            self._backend.forget_denial(_refunded(grant.limits, deltas))


def _refunded(limits: Sequence[Limit], deltas: Sequence[int]) -> list[Limit]:
    return [limit for limit, delta in zip(limits, deltas, strict=True) if delta < 0]


def _validate(settings: QuotaSettings, max_keys: int) -> None:
    if settings.on_failure not in ("fail_closed", "fail_open"):
        raise ConfigurationError("quota on_failure must be 'fail_closed' or 'fail_open'")
    if not settings.timeout_seconds > 0:
        raise ConfigurationError("quota timeout_seconds must be positive")
    if not 0 <= settings.burst_seconds <= 86_400:
        raise ConfigurationError("quota burst_seconds must be between 0 and 86400")
    if settings.reservation_ttl_seconds <= 0:
        raise ConfigurationError("quota reservation_ttl_seconds must be positive")
    if settings.default_token_estimate < 0:
        raise ConfigurationError("quota default_token_estimate must not be negative")
    if max_keys < 1:
        raise ConfigurationError("max_keys must be at least 1")


__all__ = [
    "PERIOD_SECONDS",
    "Grant",
    "Limit",
    "LimitName",
    "QuotaEngine",
    "QuotaStats",
    "Unit",
    "limits_for",
]
