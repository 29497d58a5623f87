"""What an admission hands back: the grant to settle and its headers; the engine's counters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ._quota_core import Mark, Outcome
from ._quota_limits import Limit
from ._ratelimit_headers import UNKNOWN, HeaderRenderer
from .errors import ValidationError


class Grant:
    """An admission: what was charged and each limit's state, for headers and settling."""

    __slots__ = (
        "_marks",
        "_open",
        "_renderer",
        "costs",
        "degraded",
        "limits",
        "remaining",
        "reset",
        "stamp",
    )

    def __init__(
        self,
        limits: Sequence[Limit],
        costs: Sequence[int],
        outcome: Outcome | None,
        renderer: HeaderRenderer,
    ) -> None:
        self.limits = limits
        self.costs = costs
        """Units charged per limit: 1 per request limit, the reservation per token limit."""
        self._renderer = renderer
        self.remaining: Sequence[int]
        self.reset: Sequence[int]
        if outcome is None:
            self.remaining = self.reset = [UNKNOWN] * len(limits)
            self.stamp = 0.0
            self._marks: Sequence[Mark] = ()
            self.degraded = True
            """Admitted without the storage (``fail_open``): nothing to settle or release."""
            self._open = False
        else:
            self.remaining = outcome.remaining
            self.reset = outcome.reset
            self.stamp = outcome.stamp
            self._marks = outcome.marks
            self.degraded = False
            self._open = bool(limits)

    @property
    def reserved_tokens(self) -> int:
        """The largest token reservation among the token limits (0 if none)."""
        return max(
            (c for limit, c in zip(self.limits, self.costs, strict=True) if limit.unit == "tokens"),
            default=0,
        )

    @property
    def open(self) -> bool:
        """Whether the reservation still awaits ``settle`` or ``release``."""
        return self._open

    def headers(self) -> list[tuple[str, str]]:
        """Return the rate-limit response headers for this admission."""
        return self._renderer.render(self.limits, self.remaining, self.reset)

    def _close(self) -> bool:
        was_open = self._open
        self._open = False
        return was_open

    def _settle_deltas(self, tokens_used: int) -> list[int] | None:
        """What settling with ``tokens_used`` adds per limit; ``None`` if already closed."""
        if type(tokens_used) is not int or tokens_used < 0:
            raise ValidationError("tokens_used must be a non-negative integer", field="tokens_used")
        if not self._close():
            return None
        return [
            tokens_used - cost if limit.unit == "tokens" else 0
            for limit, cost in zip(self.limits, self.costs, strict=True)
        ]

    def _release_deltas(self) -> list[int] | None:
        """What releasing adds per limit (the reservation back); ``None`` if already closed."""
        if not self._close():
            return None
        return [
            -cost if limit.unit == "tokens" else 0
            for limit, cost in zip(self.limits, self.costs, strict=True)
        ]


@dataclass
class QuotaStats:
    """Counters since start-up (for metrics and the benchmark)."""

    denied: int = 0
    storage_errors: int = 0
    fail_open_admissions: int = 0
    local_denials: int = 0
    round_trips: int = 0
    stored_keys: int = 0
    evicted_keys: int = 0
