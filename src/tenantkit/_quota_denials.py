"""The Redis backend's local deny cache: bucket levels that answer repeat denials.

A denial caches the exact level (TAT) of every bucket of the request on this
process's monotonic clock; a request whose every limit is cached and denied is
then refused without a round trip, with the Retry-After Redis would give.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._quota_core import PERIOD_SECONDS, Outcome, seconds_to_full, seconds_to_wait, units_left

if TYPE_CHECKING:
    from .quotas import Limit

NS_PER_US = 1_000
NS_PER_S = 1_000_000_000
PERIOD_NS = PERIOD_SECONDS * NS_PER_S
MAX_DENIALS = 10_000


class DenyCache:
    """Cached bucket levels per Redis key, for the limits of recent denials."""

    def __init__(self, prefix: str, window_us: int) -> None:
        self._prefix = prefix
        self._window = window_us
        self._denied: dict[str, tuple[int, int, int]] = {}
        """Per bucket key: its q, its exact TAT in monotonic ns scaled by q, and until
        when (monotonic ns) the entry may be used."""
        self._forgot_at = 0
        self.local_denials = 0
        """Requests answered from the cache."""

    def __bool__(self) -> bool:
        return bool(self._denied)

    def forget(self, limits: Sequence[Limit]) -> None:
        """Drop the cached levels of ``limits`` (capacity was just given back)."""
        if limits:
            # A reply to a call sent before now may predate the change: it caches nothing.
            self._forgot_at = time.monotonic_ns()
        for limit in limits:
            self._denied.pop(self._prefix + limit.key, None)

    def remember(
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

    def answer(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome | None:
        """Answer locally iff every limit of the request has a cached level and they deny.

        Redis would decide from the same buckets with the same arithmetic, taking
        the longest wait over all the limits. Computing that maximum needs every
        limit's level: with one missing, the local answer could be shorter than
        Redis' (or name the wrong limit), so any limit without a live entry (or
        cached under another quota) sends the request to Redis. As the cached TATs
        are at or before the real ones (see ``remember``), a local denial is one
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
