"""Cursor pagination: ``?limit=`` (default 50, max 200) and an opaque ``?cursor=``.

Ids are time-ordered, so a cursor is just "after this id", base64-wrapped so
clients treat it as opaque.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Any

from starlette.requests import Request

from .models import is_id
from .validation import invalid, query_int

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def page_params(request: Request) -> tuple[int, str | None]:
    """Return ``(limit, after_id)`` from the query string; 422 naming a bad one."""
    limit = query_int(request, "limit", DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
    cursor = request.query_params.get("cursor")
    if cursor is None:
        return limit, None
    try:
        after = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after = ""
    if not is_id(after):
        raise invalid([{"field": "cursor", "message": "is not a cursor this API returned"}])
    return limit, after


def page(
    rows: Sequence[Any], limit: int, render: Callable[[Any], Any] | None = None
) -> dict[str, Any]:
    """Return ``{"items", "next_cursor"}`` from ``limit + 1`` rows fetched in id order.

    Each shown row becomes ``render(row)``, by default ``row.to_dict()``.
    """
    more = len(rows) > limit
    shown = rows[:limit]
    next_cursor = None
    if more and shown:
        next_cursor = base64.urlsafe_b64encode(shown[-1].id.encode()).decode().rstrip("=")
    items = [render(row) if render else row.to_dict() for row in shown]
    return {"items": items, "next_cursor": next_cursor}
