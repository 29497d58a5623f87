"""The exact queue of a bucket's charges, to check the quota engine's refunds against."""

from __future__ import annotations

from collections import deque
from fractions import Fraction
from typing import Any

from tenantkit.quotas import Grant, Limit, QuotaEngine


class QueueModel:
    """A bucket as the queue of its charges (exact, in seconds): time consumes the
    oldest first, a refund cuts its own charge and moves every later one back."""

    def __init__(self, per_minute: int) -> None:
        self.unit = Fraction(60, per_minute)
        self.start = Fraction(0)
        self.queue: deque[list[Any]] = deque()  # [grant or None, seconds still ahead]
        self.ahead = Fraction(0)  # the queue's total
        self.where: dict[int, list[Any]] = {}  # id(grant) -> its queue entry

    def tat(self, now: Fraction) -> Fraction:
        elapsed = now - self.start
        while self.queue and elapsed >= self.queue[0][1]:
            entry = self.queue.popleft()
            if self.where.get(id(entry[0])) is entry:  # (a later grant may reuse the id)
                del self.where[id(entry[0])]
            elapsed -= entry[1]
            self.ahead -= entry[1]
        if self.queue:
            self.queue[0][1] -= elapsed
            self.ahead -= elapsed
        self.start = now
        return now + self.ahead

    def charge(self, now: Fraction, grant: Grant | None, units: int) -> None:
        self.tat(now)
        if units:
            entry = [grant, units * self.unit]
            self.queue.append(entry)
            self.ahead += entry[1]
            if grant is not None:
                self.where[id(grant)] = entry

    def refund(self, now: Fraction, grant: Grant, units: int) -> Fraction:
        """Cut the grant's charge by ``units``, at most what of it is still ahead."""
        self.tat(now)
        entry = self.where.get(id(grant))
        if entry is None:
            return Fraction(0)
        back = min(units * self.unit, entry[1])
        entry[1] -= back
        self.ahead -= back
        return back


def engine_tat(engine: QuotaEngine, limit: Limit, now: Fraction) -> Fraction:
    entry = engine._memory._tat.get(limit.key)  # (tat·q, q, charged·q, refunds) in ns
    if entry is None:
        return now
    return max(Fraction(entry[0], entry[1] * 1_000_000_000), now)
