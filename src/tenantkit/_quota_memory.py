"""In-process GCRA buckets: O(1) per limit, bounded memory, no background thread.

Each bucket is its theoretical arrival time (TAT) in nanoseconds of the engine's
clock, kept exactly as ``(tat·q, q, charged·q, refunds)``: scaled by the quota ``q``
it was written under, so a charge never rounds (after a plan change it is rescaled
to the new ``q``, rounded up, see ``_exact``). ``charged`` and ``refunds`` place a
later refund (see ``_quota_core.refund``). A limit of ``q`` per
minute spends ``60/q`` seconds of TAT per unit and tolerates a TAT up to
``window`` ahead of now (``window`` = 60 s plus the configured burst seconds),
which is a token bucket of ``q·window/60`` units refilled at ``q/60`` per
second. All integer arithmetic, without rounding a charge: ``q`` units cost
exactly the period, and Retry-After is exact.

A bucket whose ``charged`` has passed is full and carries no information, so it
can be dropped. Keys sit in a ring: every new key first inspects the two oldest
entries, dropping the expired and rotating the live, which keeps the table near
the number of keys active in the last window. ``max_keys`` is a hard cap: past
it the oldest key is evicted (its bucket restarts full) and ``evicted`` counts it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ._quota_core import (
    MAX_DEBT_US,
    PERIOD_SECONDS,
    Mark,
    Outcome,
    Refunds,
    grant_end,
    log_refund,
    refund,
    seconds_to_full,
    units_left,
)

if TYPE_CHECKING:
    from .quotas import Limit

NS = 1_000_000_000
PERIOD_NS = PERIOD_SECONDS * NS
MAX_DEBT_NS = MAX_DEBT_US * 1_000

Entry = tuple[int, int, int, Refunds]
"""A bucket: ``(tat·q, q, charged·q, refunds)``, its exact TAT, its TAT without
refunds and its refund log, in ns scaled by the ``q`` they were written under."""


class MemoryBackend:
    """Buckets in a dict guarded by one lock (safe under threads and on the event loop)."""

    def __init__(self, *, burst_seconds: float, clock: Callable[[], float], max_keys: int) -> None:
        self._window = PERIOD_NS + round(burst_seconds * NS)
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._tat: dict[str, Entry] = {}
        self._ring: deque[str] = deque()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._tat)

    def acquire(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome:
        """Charge every limit its cost, or none if any would exceed its bucket."""
        now = round(self._clock() * NS)
        window = self._window
        remaining: list[int] = []
        reset: list[int] = []
        marks: list[Mark] = []
        retry = 0
        blocker = -1
        staged: dict[str, Entry] = {}
        with self._lock:
            tat = self._tat
            for i, limit in enumerate(limits):
                q = limit.per_minute
                if q <= 0:
                    if retry < PERIOD_SECONDS:
                        retry, blocker = PERIOD_SECONDS, i
                    remaining.append(0)
                    reset.append(0)
                    marks.append((0, 0))
                    continue
                cost = costs[i]
                key = limit.key
                prior = staged.get(key) or tat.get(key)
                # Scaled by q: the exact TAT is tat·q + rem, the window window·q (inlined
                # seconds_to_wait, units_left and seconds_to_full: this is the hot path).
                now_q = now * q
                if prior is None:
                    base = charged = now_q
                    log: Refunds = ()
                else:  # _exact, inlined for an unchanged q
                    scaled, written, charged, log = prior
                    if written != q:
                        scaled, charged, log = _exact(prior, q)
                    if scaled < now_q:  # full: restart (see refund)
                        base, log = now_q, ()
                        if charged < now_q:
                            charged = now_q
                    else:
                        base = scaled
                charge = cost * PERIOD_NS
                level = base - now_q + charge
                over = (level if cost else level + PERIOD_NS) - window * q
                if over > 0:
                    wait = -(-over // (q * NS))
                    if wait > retry:
                        retry, blocker = wait, i
                marks.append((charged + charge, charged))
                charged += charge
                staged[key] = (base + charge, q, charged, log)
                left = (window * q - level) // PERIOD_NS
                remaining.append(left if left > 0 else 0)
                reset.append(-(-level // (q * NS)))
            if blocker < 0:
                for key, value in staged.items():
                    if key not in tat:
                        self._make_room(now)
                        self._ring.append(key)
                    tat[key] = value
                return Outcome(True, remaining, reset, 0, -1, now / NS, marks)
            # Denied: report every limit as it stands, uncharged.
            remaining, reset = _state(limits, tat, now, window)
        return Outcome(False, remaining, reset, retry, blocker, now / NS)

    def peek(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome | None:
        """The denial ``acquire`` would give now, charging nothing; ``None`` if it admits.

        Lock-free: it writes nothing, and each bucket is one immutable tuple.
        """
        now = round(self._clock() * NS)
        window = self._window
        tat = self._tat
        retry, blocker = 0, -1
        for i, limit in enumerate(limits):
            q = limit.per_minute
            if q <= 0:
                if retry < PERIOD_SECONDS:
                    retry, blocker = PERIOD_SECONDS, i
                continue
            entry = tat.get(limit.key)
            level = 0
            if entry is not None:  # (seconds_to_wait inlined: this is on the hot path)
                level = (entry[0] if entry[1] == q else _exact(entry, q)[0]) - now * q
                level = level if level > 0 else 0
            over = level + (costs[i] or 1) * PERIOD_NS - window * q
            if over > 0:
                wait = -(-over // (q * NS))
                if wait > retry:
                    retry, blocker = wait, i
        if blocker < 0:
            return None
        remaining, reset = _state(limits, tat, now, window)
        return Outcome(False, remaining, reset, retry, blocker, now / NS)

    def adjust(
        self,
        limits: Sequence[Limit],
        deltas: Sequence[int],
        marks: Sequence[Mark],
        stamp: float,
        ttl: float,
    ) -> None:
        """Charge positive deltas; refund negative ones unless the grant is older than ``ttl``.

        A refund gives back what the same charge took, less what time has refilled
        since: at most the part of the charge still ahead of now (see ``refund``).
        """
        now_s = self._clock()
        now = round(now_s * NS)
        fresh = now_s - stamp <= ttl
        with self._lock:
            tat = self._tat
            for i, limit in enumerate(limits):
                delta = deltas[i]
                q = limit.per_minute
                if delta == 0 or q <= 0:
                    continue
                key = limit.key
                prior = tat.get(key)
                now_q = now * q
                if delta < 0:
                    # An absent bucket is full: nothing of the charge is ahead of now.
                    if fresh and prior is not None:
                        exact, written, charged, log = prior
                        if written != q:
                            exact, charged, log = _exact(prior, q)
                        mark, start = marks[i]
                        moved = charged - exact
                        end = grant_end(mark, moved, log) if log else mark - moved
                        back = refund(-delta * PERIOD_NS, end - now_q)
                        if back:
                            moved += back
                            # (an empty log stays empty if the charge now starts by now)
                            if log or start + back - moved > now_q:
                                log = log_refund(log, start, back, moved, now_q)
                            tat[key] = (exact - back, q, charged, log)
                    continue
                if prior is None:
                    self._make_room(now)
                    self._ring.append(key)
                    base = charged = now_q
                    log = ()
                else:
                    base, charged, log = _exact(prior, q)
                    if base < now_q:  # full: restart (see refund)
                        base, charged, log = now_q, max(charged, now_q), ()
                charge = delta * PERIOD_NS
                cap = now_q + MAX_DEBT_NS * q  # as on Redis: a debt of at most MAX_DEBT_US
                tat[key] = (min(base + charge, cap), q, min(charged + charge, cap), log)

    def _make_room(self, now: int) -> None:
        """Drop or rotate the two oldest keys; evict past ``max_keys`` (lock held)."""
        ring, tat = self._ring, self._tat
        for _ in range(min(2, len(ring))):
            key = ring.popleft()
            _, q, charged, _ = tat[key]
            if charged <= now * q:  # full, and no refund can apply any more
                del tat[key]
            else:
                ring.append(key)
        while len(tat) >= self._max_keys and ring:
            del tat[ring.popleft()]
            self.evicted += 1

    async def acquire_async(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome:
        """Same as ``acquire``: memory never blocks the loop."""
        return self.acquire(limits, costs)

    async def adjust_async(
        self,
        limits: Sequence[Limit],
        deltas: Sequence[int],
        marks: Sequence[Mark],
        stamp: float,
        ttl: float,
    ) -> None:
        """Same as ``adjust``."""
        self.adjust(limits, deltas, marks, stamp, ttl)

    def forget_denial(self, limits: Sequence[Limit]) -> None:
        """Nothing to forget: memory caches no denials."""

    def health(self) -> bool:
        """Memory is always available."""
        return True

    async def health_async(self) -> bool:
        """Memory is always available."""
        return True

    def close(self) -> None:
        """Nothing to release; the buckets stay valid."""

    async def aclose(self) -> None:
        """Nothing to release; the buckets stay valid."""


def _exact(entry: Entry, q: int) -> tuple[int, int, Refunds]:
    """A stored TAT, ``charged`` and refund log, scaled by ``q``: rounded up if written
    under another ``q``, and then without the log (its grants get no more back).

    After a plan change ``tat·q_old / q_old`` is rarely a multiple of ``1/q``; as every
    boundary a decision compares with is one, the ceiling decides exactly alike
    (as Redis does, see ``_quota_lua``).
    """
    scaled, written, charged, log = entry
    if written == q:
        return scaled, charged, log
    return -(-scaled * q // written), -(-charged * q // written), ()


def _state(
    limits: Sequence[Limit], tat: dict[str, Entry], now: int, window: int
) -> tuple[list[int], list[int]]:
    """Remaining whole units and whole seconds to full, per limit, without the charge."""
    remaining: list[int] = []
    reset: list[int] = []
    for limit in limits:
        q = limit.per_minute
        entry = tat.get(limit.key)
        level = max(_exact(entry, q)[0] - now * q, 0) if entry is not None and q > 0 else 0
        remaining.append(units_left(level, q, window, PERIOD_NS))
        reset.append(seconds_to_full(level, q, NS))
    return remaining, reset
