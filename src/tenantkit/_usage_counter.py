"""Count API calls per tenant in memory and persist them in batches.

The middleware calls ``counter.add(tenant_id)`` once per request: a dictionary
increment under a lock, no database write. A background thread (or, with
``background=False``, the ``add`` that crosses a threshold) flushes when
``max_pending`` calls are buffered or ``flush_interval`` seconds have passed.
Each flushed chunk is one usage event with its own idempotency key, kept
across retries, so a flush that failed after its commit is never counted
twice. ``close()`` (registered with ``atexit``) flushes what is left.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ._db import utcnow
from ._stores import storage_errors
from ._tenant_incarnation import register_counter
from ._usage_alerts import UsageAlerts
from ._usage_cycle import cycle_bounds, cycle_of
from .context import no_tenant
from .plans import Plan
from .types import TenantConfig, validate_tenant_id

if TYPE_CHECKING:
    from .usage import UsageRecorder

logger = logging.getLogger("tenantkit.usage")

Chunk = tuple[str, str, int]  # tenant, cycle, calls


class ApiCallCounter:
    """Buffer API calls per tenant and billing cycle; flush them as usage events.

    ``plan_of`` and ``alerts`` (both optional) turn on the 80%/100% alerts
    after each flush. Thread-safe; one instance per process.
    """

    def __init__(
        self,
        recorder: UsageRecorder,
        *,
        usage_type: str = "api_calls",
        max_pending: int = 1000,
        flush_interval: float = 10.0,
        background: bool = True,
        alerts: UsageAlerts | None = None,
        plan_of: Callable[[str], str | Plan | TenantConfig] | None = None,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_pending <= 0 or flush_interval <= 0:
            raise ValueError("max_pending and flush_interval must be positive")
        self._recorder = recorder
        self.usage_type = usage_type
        self.max_pending = max_pending
        self.flush_interval = flush_interval
        self._alerts = alerts
        self._plan_of = plan_of
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._flush_lock = threading.RLock()
        self._pending: dict[tuple[str, str], int] = {}
        self._pending_total = 0
        self._retry: dict[str, Chunk] = {}
        # Calls a flush is writing right now: still counted while in flight.
        self._inflight: dict[tuple[str, str], int] = {}
        self._base: dict[tuple[str, str], int] = {}
        self._last_flush = monotonic()
        self._closed = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._run, name="tenantkit-api-call-counter", daemon=True
            )
            self._thread.start()
        atexit.register(self.close)
        register_counter(self)

    def add(self, tenant_id: str, calls: int = 1) -> None:
        """Count ``calls`` API calls for ``tenant_id`` (no database write)."""
        validate_tenant_id(tenant_id)
        if isinstance(calls, bool) or not isinstance(calls, int) or calls <= 0:
            raise ValueError("calls must be a positive integer")
        key = (tenant_id, cycle_of(self._clock()))
        with self._lock:
            self._pending[key] = self._pending.get(key, 0) + calls
            self._pending_total += calls
            due = self._pending_total >= self.max_pending or (
                self._monotonic() - self._last_flush >= self.flush_interval
            )
            closed = self._closed
        if closed:
            self.flush()
        elif due:
            if self._thread is not None:
                self._wake.set()
            else:
                self.flush()

    def pending(self, tenant_id: str | None = None) -> int:
        """Return calls counted but not yet persisted (for one tenant, or all)."""
        with self._lock:
            chunks = [(t, n) for (t, _), n in self._pending.items()]
            chunks += [(t, n) for t, _, n in self._retry.values()]
        return sum(n for t, n in chunks if tenant_id is None or t == tenant_id)

    def cycle_count(self, tenant_id: str, now: datetime | None = None) -> int:
        """Return the tenant's API calls this cycle: persisted (read once) plus buffered.

        The first call per tenant and cycle reads the store (``StorageError``
        if it fails); later ones answer from memory, even during a flush.
        """
        key = (tenant_id, cycle_of(now or self._clock()))
        count = self._cached_count(key)
        if count is not None:
            return count
        # No flush runs while the store is read, so its total and our buffers agree.
        with self._flush_lock:
            if self._cached_count(key) is None:
                start, end = cycle_bounds(key[1])
                with no_tenant(), storage_errors("usage store"):
                    total = self._recorder.total(self.usage_type, start, end, tenant_id=tenant_id)
                with self._lock:
                    self._base[key] = total
        count = self._cached_count(key)
        assert count is not None  # the base was just stored
        return count

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop a deleted tenant's buffered calls and cached count (its id may come back)."""
        with self._lock:
            for key in [k for k in self._pending if k[0] == tenant_id]:
                self._pending_total -= self._pending.pop(key)
            for idem in [i for i, chunk in self._retry.items() if chunk[0] == tenant_id]:
                del self._retry[idem]
            for key in [k for k in self._base if k[0] == tenant_id]:
                del self._base[key]

    def check_nowait(self, tenant: TenantConfig, now: datetime | None = None) -> bool:
        """``check`` from memory only; return ``False`` (nothing checked) if a store read is due."""
        moment = now or self._clock()
        count = self._cached_count((tenant.id, cycle_of(moment)))
        if count is None:
            return False
        self._recorder.plans.monthly_cap_check(tenant, count + 1, moment)
        return True

    def _cached_count(self, key: tuple[str, str]) -> int | None:
        with self._lock:
            base = self._base.get(key)
            if base is None:
                return None
            retried = sum(n for t, c, n in self._retry.values() if (t, c) == key)
            return base + self._inflight.get(key, 0) + self._pending.get(key, 0) + retried

    def check(self, tenant: TenantConfig, now: datetime | None = None) -> None:
        """Raise ``QuotaExceeded`` if one more call passes the tenant's hard monthly cap."""
        moment = now or self._clock()
        count = self.cycle_count(tenant.id, moment) + 1
        self._recorder.plans.monthly_cap_check(tenant, count, moment)

    def flush(self) -> int:
        """Persist every buffered call now; return how many calls were written."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending, self._pending_total = self._pending, {}, 0
                chunks, self._retry = self._retry, {}
                self._last_flush = self._monotonic()
                for (tenant, cycle), calls in batch.items():
                    chunks[f"{self.usage_type}:{uuid.uuid4().hex}"] = (tenant, cycle, calls)
                for tenant, cycle, calls in chunks.values():
                    key = (tenant, cycle)
                    self._inflight[key] = self._inflight.get(key, 0) + calls
            written = 0
            flushed: set[tuple[str, str]] = set()
            with no_tenant():
                for idem, (tenant, cycle, calls) in chunks.items():
                    key = (tenant, cycle)
                    try:
                        self._write(idem, tenant, cycle, calls)
                    except Exception:
                        logger.exception("could not persist %d API calls of %s", calls, tenant)
                        stored = False
                    else:
                        stored = True
                    with self._lock:
                        self._inflight[key] -= calls
                        if not self._inflight[key]:
                            del self._inflight[key]
                        if not stored:
                            self._retry[idem] = (tenant, cycle, calls)
                            continue
                        if key in self._base:
                            self._base[key] += calls
                    written += calls
                    flushed.add(key)
            self._alert(flushed)
            return written

    def close(self) -> None:
        """Stop the flusher thread and persist everything still buffered (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()
        left = self.pending()
        if left:
            logger.error("%d API calls could not be persisted at shutdown", left)
        atexit.unregister(self.close)

    def _write(self, idem: str, tenant: str, cycle: str, calls: int) -> None:
        now = self._clock()
        start, end = cycle_bounds(cycle)
        occurred = now if start <= now < end else end - timedelta(microseconds=1)
        self._recorder.record(
            self.usage_type,
            calls,
            tenant_id=tenant,
            occurred_at=occurred,
            idempotency_key=idem,
            metadata={"source": "api_call_counter"},
        )

    def _alert(self, flushed: set[tuple[str, str]]) -> None:
        if self._alerts is None or self._plan_of is None:
            return
        current = cycle_of(self._clock())
        for tenant, cycle in flushed:
            if cycle != current:
                continue
            try:
                used = self.cycle_count(tenant)
                self._alerts.check(tenant, self._plan_of(tenant), "api_calls", used)
            except Exception:
                logger.exception("usage alerts failed for tenant %s", tenant)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.flush()
            except Exception:
                logger.exception("background flush of API calls failed")
