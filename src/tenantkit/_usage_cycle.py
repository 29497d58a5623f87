"""Billing cycles: calendar months in UTC, named ``YYYY-MM``."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from .errors import UnprocessableEntity

_CYCLE = re.compile(r"^([0-9]{4})-(0[1-9]|1[0-2])$")
# The cycle after 9999-12 would start in year 10000, past what datetime holds.
_LAST_YEAR = 9998


def cycle_of(moment: datetime) -> str:
    """Return the billing cycle (``YYYY-MM``) that contains ``moment``."""
    utc = _aware(moment).astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


def cycle_bounds(cycle: str) -> tuple[datetime, datetime]:
    """Return ``[start, end)`` of a ``YYYY-MM`` cycle; a malformed cycle is a 422."""
    match = _CYCLE.fullmatch(cycle) if isinstance(cycle, str) else None
    if match is None:
        raise UnprocessableEntity(
            f"billing_cycle must look like YYYY-MM, got {cycle!r}", field="billing_cycle"
        )
    year, month = int(match.group(1)), int(match.group(2))
    if not 1970 <= year <= _LAST_YEAR:
        raise UnprocessableEntity(
            f"billing_cycle must lie in 1970 to {_LAST_YEAR}", field="billing_cycle"
        )
    start = datetime(year, month, 1, tzinfo=UTC)
    return start, _next_month(start)


def next_cycle_start(moment: datetime) -> datetime:
    """Return the first instant of the cycle after the one containing ``moment``."""
    utc = _aware(moment).astimezone(UTC)
    return _next_month(datetime(utc.year, utc.month, 1, tzinfo=UTC))


def seconds_until_next_cycle(moment: datetime) -> int:
    """Return whole seconds (rounded up, at least 1) until the next cycle starts."""
    delta = (next_cycle_start(moment) - _aware(moment)).total_seconds()
    return max(1, math.ceil(delta))


def _next_month(start: datetime) -> datetime:
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime; pass a timezone-aware value")
    return moment
