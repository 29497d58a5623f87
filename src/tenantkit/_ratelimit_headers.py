"""Render rate-limit state as response headers.

Three dialects, from one snapshot of every limit that applies to a request:

- IETF ``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers-10,
  structured-field Lists of Items): ``"tenant-requests";q=100;w=60;qu="requests"`` and
  ``"tenant-requests";r=42;t=35``. Requests use the registered quota unit ``qu="requests"``;
  tokens are not a registered unit, so token policies carry the vendor parameter
  ``tk-unit="tokens"`` instead (the draft reserves unprefixed parameters for itself).
- OpenAI-style ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (opt-in), for the
  most constrained limit of each unit; the reset is a duration such as ``1m5s``.
- Legacy ``X-RateLimit-{Limit,Remaining,Reset}`` (opt-in), for the most constrained
  request limit (token limits when there is none); the reset is in delta seconds.

``t`` and every reset is the whole number of seconds until the limit is full again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .quotas import Limit

RATELIMIT_POLICY = "RateLimit-Policy"
RATELIMIT = "RateLimit"
RETRY_AFTER = "Retry-After"
UNKNOWN = -1
"""A remaining/reset value the engine does not know (a locally cached denial)."""


def policy_item(name: str, per_minute: int, unit: str) -> str:
    """Return one ``RateLimit-Policy`` list member for a per-minute limit."""
    if unit == "requests":
        return f'"{name}";q={per_minute};w=60;qu="requests"'
    return f'"{name}";q={per_minute};w=60;tk-unit="{unit}"'


def duration(seconds: int) -> str:
    """Format whole seconds as an OpenAI-style duration: ``0s``, ``45s``, ``1m5s``."""
    minutes, rest = divmod(seconds, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


class HeaderRenderer:
    """Render snapshots as header lists; which optional dialects is fixed at start-up."""

    __slots__ = ("legacy", "openai")

    def __init__(self, *, openai: bool = False, legacy: bool = False) -> None:
        self.openai = openai
        self.legacy = legacy

    def render(
        self,
        limits: Sequence[Limit],
        remaining: Sequence[int],
        reset: Sequence[int],
    ) -> list[tuple[str, str]]:
        """Return the headers for ``limits`` with their remaining units and reset seconds."""
        if not limits:
            return []
        # A LimitSet carries its policy header and item prefixes, built once.
        policy: str | None = getattr(limits, "policy_header", None)
        if policy is None:
            policy = ", ".join([limit.policy_item for limit in limits])
            prefixes = [f'"{limit.name}";r=' for limit in limits]
        else:
            prefixes = limits.item_prefixes  # type: ignore[attr-defined]
        headers = [(RATELIMIT_POLICY, policy)]
        items = []
        for i, left in enumerate(remaining):  # a loop: a comprehension is a call per request
            if left != UNKNOWN:
                items.append(f"{prefixes[i]}{left};t={reset[i]}")
        if items:
            headers.append((RATELIMIT, ", ".join(items)))
        if self.openai:
            _openai(headers, limits, remaining, reset)
        if self.legacy:
            _legacy(headers, limits, remaining, reset)
        return headers


def _tightest(limits: Sequence[Limit], remaining: Sequence[int], unit: str | None) -> int | None:
    """Index of the known limit of ``unit`` (any unit if ``None``) with least remaining."""
    best: int | None = None
    for i, limit in enumerate(limits):
        if remaining[i] == UNKNOWN or (unit is not None and limit.unit != unit):
            continue
        if best is None or remaining[i] < remaining[best]:
            best = i
    return best


def _openai(
    out: list[tuple[str, str]],
    limits: Sequence[Limit],
    remaining: Sequence[int],
    reset: Sequence[int],
) -> None:
    for unit in ("requests", "tokens"):
        i = _tightest(limits, remaining, unit)
        if i is None:
            continue
        out.append((f"x-ratelimit-limit-{unit}", str(limits[i].per_minute)))
        out.append((f"x-ratelimit-remaining-{unit}", str(remaining[i])))
        out.append((f"x-ratelimit-reset-{unit}", duration(reset[i])))


def _legacy(
    out: list[tuple[str, str]],
    limits: Sequence[Limit],
    remaining: Sequence[int],
    reset: Sequence[int],
) -> None:
    i = _tightest(limits, remaining, "requests")
    if i is None:
        i = _tightest(limits, remaining, None)
    if i is None:
        return
    out.append(("X-RateLimit-Limit", str(limits[i].per_minute)))
    out.append(("X-RateLimit-Remaining", str(remaining[i])))
    out.append(("X-RateLimit-Reset", str(reset[i])))
