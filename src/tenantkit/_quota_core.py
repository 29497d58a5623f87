"""What every quota backend returns and implements (the engine's side of the contract).

A backend keeps one GCRA bucket per limit key and decides all the limits of a
request at once: either every bucket is charged or none is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .quotas import Limit

PERIOD_SECONDS = 60
"""Every quota is per minute: ``q`` units refill evenly over this many seconds."""

MAX_DEBT_US = 2**49
"""The furthest a TAT may run ahead of now, in µs (about 17.8 years of debt, which no
client outlives), on both backends: Redis for its doubles (see ``_quota_lua``), memory
so that it decides alike and every reset stays a 15-digit structured-field integer."""

# Exact GCRA arithmetic, shared by the backends so that they answer alike. A unit of
# a limit of ``q`` per minute spends ``period/q`` time units of TAT, which is rarely
# a whole number of nanoseconds (memory) or microseconds (Redis): rounding each
# charge up would make ``q`` units cost more than the period (``q = 7`` would admit
# 6 at once) and would accumulate while a bucket is never full. So a TAT is kept
# exactly, as ``tat + rem/q`` time units with ``0 <= rem < q``, and these helpers
# take a bucket's *level* (its exact TAT minus now, at least 0) scaled by ``q``:
# ``level_q = level·q``, an integer.


def units_left(level_q: int, q: int, window: int, period: int) -> int:
    """Whole units the bucket still holds: ``floor((window - level)·q / period)``."""
    if q <= 0:
        return 0
    left = (window * q - level_q) // period
    return left if left > 0 else 0


def seconds_to_full(level_q: int, q: int, second: int) -> int:
    """Whole seconds (rounded up) until the bucket is full again; ``second`` in time units.

    A quota of 0 never refills: it says a minute, as its ``Retry-After`` does, not
    "now" (which would send a client that trusts it straight back).
    """
    if q <= 0:
        return PERIOD_SECONDS
    if level_q <= 0:
        return 0
    return -(-level_q // (q * second))


def seconds_to_wait(level_q: int, q: int, cost: int, window: int, period: int, second: int) -> int:
    """Whole seconds until ``cost`` fits (0 if it fits now; 60 if ``q`` is 0).

    A cost fits iff ``level + max(cost, 1)·period/q <= window``: even a zero-cost
    reservation needs one unit left. The answer is exact: ``ceil(over / second)``.
    """
    if q <= 0:
        return PERIOD_SECONDS
    over = level_q + (cost if cost > 0 else 1) * period - window * q
    return -(-over // (q * second)) if over > 0 else 0


Mark = tuple[int, int]
"""What a refund needs of an admitted limit: its bucket's ``charged`` just after and
just before the charge, scaled by its ``q`` in the backend's time unit (see ``refund``)."""

Refunds = tuple[tuple[int, int], ...]
"""A bucket's log of refunds: ``(start, amount)`` by ascending start, scaled by ``q``."""

MAX_LOGGED = 128
"""Refunds a bucket logs at most; past it the two closest merge (see ``refund``)."""


def refund(amount_q: int, ahead_q: int) -> int:
    """How much of a refund of ``amount_q`` still applies (all scaled by ``q``).

    ``ahead_q`` is how far the end of the grant's own charge is ahead of now. The
    part of the charge behind now has been refilled by time already, whatever was
    charged after it: crediting it again would let the bucket admit more than its
    bound. So a refund gives back at most ``ahead_q``, and nothing once the charge
    lies wholly in the past (at the latest ``window`` after the admission). Never
    more than was charged: ``amount_q`` is at most the charge.

    Where that end is now, whatever order grants settle in: refunds of *older*
    grants since the admission moved it back, refunds of newer ones did not. Each
    bucket keeps ``charged``, its TAT as if nothing had been refunded (charges move
    both, a refund only the TAT), so charges have fixed places on it: a grant's
    ``Mark`` is ``charged`` just after and just before its charge. The bucket logs
    each refund at the place its charge started, for as long as an older charge may
    still be ahead of now (the refunded charge's own start is). A grant's end is then
    its mark less ``charged - tat`` plus the logged refunds of newer grants
    (``grant_end``): exact, in any order. Past ``MAX_LOGGED`` the two closest
    logged refunds merge into the lower place: the grants between them, if any,
    count the upper one as older from then on, which can only give back less.
    A bucket found full (its TAT passed) restarts: ``charged`` from now
    if it had passed too, an empty log; the grants before it get nothing back.
    """
    if ahead_q <= 0:
        return 0
    return amount_q if amount_q < ahead_q else ahead_q


def grant_end(mark: int, moved: int, log: Refunds) -> int:
    """Where the charge ending at ``mark`` ends now: ``mark`` less ``moved`` (the
    bucket's ``charged - tat``), plus the logged refunds of newer grants."""
    end = mark - moved
    for start, amount in log:
        if start >= mark:
            end += amount
    return end


def log_refund(log: Refunds, start: int, amount: int, moved: int, now: int) -> Refunds:
    """Log a refund of ``amount`` of the charge that started at ``start``.

    ``moved`` is the bucket's ``charged - tat`` after the refund. A logged charge
    now starts at its place plus its own refund, less ``moved``, plus the newer
    refunds; starts grow with places, so the refunds kept are those above the
    newest whose charge starts at or before now (older charges have all ended).
    """
    entries = sorted((*log, (start, amount)))
    kept: list[tuple[int, int]] = []
    newer = 0
    for place, back in reversed(entries):
        if place + back - moved + newer <= now:
            break
        kept.append((place, back))
        newer += back
    kept.reverse()
    if len(kept) > MAX_LOGGED:
        # Merge the two closest into the lower place: only the grants between them
        # (none if their charges were adjacent) then count the upper refund as older.
        at = min(range(1, len(kept)), key=lambda j: kept[j][0] - kept[j - 1][0])
        kept[at - 1 : at + 1] = [(kept[at - 1][0], kept[at - 1][1] + kept[at][1])]
    return tuple(kept)


class Outcome:
    """One decision: admitted or not, each limit's state after it, and the wait."""

    __slots__ = ("admitted", "blocker", "marks", "remaining", "reset", "retry_after", "stamp")

    def __init__(
        self,
        admitted: bool,
        remaining: Sequence[int],
        reset: Sequence[int],
        retry_after: int = 0,
        blocker: int = -1,
        stamp: float = 0.0,
        marks: Sequence[Mark] = (),
    ) -> None:
        self.admitted = admitted
        self.remaining = remaining
        """Whole units each limit could still admit (after the charge, if admitted)."""
        self.reset = reset
        """Whole seconds until each limit's bucket is full again."""
        self.retry_after = retry_after
        """Whole seconds (>= 1) until the same request would be admitted; 0 if it was."""
        self.blocker = blocker
        """Index of the limit that waits longest; -1 if admitted."""
        self.stamp = stamp
        """The backend's clock at the decision, in seconds (reservation age is measured on it)."""
        self.marks = marks
        """If admitted: what a refund needs of each limit (see ``Mark``)."""


class Backend(Protocol):
    """Bucket storage: memory in this process, or Redis shared by many."""

    def acquire(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome: ...

    def peek(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome | None: ...

    async def acquire_async(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome: ...

    def adjust(
        self,
        limits: Sequence[Limit],
        deltas: Sequence[int],
        marks: Sequence[Mark],
        stamp: float,
        ttl: float,
    ) -> None: ...

    async def adjust_async(
        self,
        limits: Sequence[Limit],
        deltas: Sequence[int],
        marks: Sequence[Mark],
        stamp: float,
        ttl: float,
    ) -> None: ...

    def forget_denial(self, limits: Sequence[Limit]) -> None: ...

    def health(self) -> bool: ...

    async def health_async(self) -> bool: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...
