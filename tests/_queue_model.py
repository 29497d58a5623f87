"""The exact queue of a bucket's charges, to check the quota engine's refunds against."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from tenantkit.quotas import Grant, Limit, QuotaEngine


class QueueModel:
    """A bucket as the queue of its charges (exact, in seconds): time consumes the
    oldest first, a refund cuts its own charge and moves every later one back."""

    def __init__(self, per_minute: int) -> None:
        self.unit = Fraction(60, per_minute)
        self.start = Fraction(0)
        self.queue: list[list[Any]] = []  # [grant or None, seconds still ahead]

    def tat(self, now: Fraction) -> Fraction:
        elapsed = now - self.start
        while self.queue and elapsed >= self.queue[0][1]:
            elapsed -= self.queue.pop(0)[1]
        if self.queue:
            self.queue[0][1] -= elapsed
        self.start = now
        return now + sum((seconds for _, seconds in self.queue), Fraction(0))

    def charge(self, now: Fraction, grant: Grant | None, units: int) -> None:
        self.tat(now)
        if units:
            self.queue.append([grant, units * self.unit])

    def refund(self, now: Fraction, grant: Grant, units: int) -> Fraction:
        """Cut the grant's charge by ``units``, at most what of it is still ahead."""
        self.tat(now)
        for entry in self.queue:
            if entry[0] is grant:
                back = min(units * self.unit, entry[1])
                entry[1] -= back
                return back
        return Fraction(0)


def engine_tat(engine: QuotaEngine, limit: Limit, now: Fraction) -> Fraction:
    entry = engine._memory._tat.get(limit.key)  # (tat·q, q, charged·q) in ns
    if entry is None:
        return now
    return max(Fraction(entry[0], entry[1] * 1_000_000_000), now)
