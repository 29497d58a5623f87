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


class Outcome:
    """One decision: admitted or not, each limit's state after it, and the wait."""

    __slots__ = ("admitted", "blocker", "remaining", "reset", "retry_after", "stamp")

    def __init__(
        self,
        admitted: bool,
        remaining: Sequence[int],
        reset: Sequence[int],
        retry_after: int = 0,
        blocker: int = -1,
        stamp: float = 0.0,
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


class Backend(Protocol):
    """Bucket storage: memory in this process, or Redis shared by many."""

    def acquire(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome: ...

    async def acquire_async(self, limits: Sequence[Limit], costs: Sequence[int]) -> Outcome: ...

    def adjust(
        self, limits: Sequence[Limit], deltas: Sequence[int], stamp: float, ttl: float
    ) -> None: ...

    async def adjust_async(
        self, limits: Sequence[Limit], deltas: Sequence[int], stamp: float, ttl: float
    ) -> None: ...

    def forget_denial(self, limits: Sequence[Limit]) -> None: ...

    def health(self) -> bool: ...

    async def health_async(self) -> bool: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...
