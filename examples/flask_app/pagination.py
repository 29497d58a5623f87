"""Opaque cursors for keyset pagination: ``?limit=`` and ``?cursor=`` on every list."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from tenantkit.errors import UnprocessableEntity

T = TypeVar("T")
K = TypeVar("K", str, int)
MAX_KEY = 2**31 - 1  # the largest INTEGER key (PostgreSQL's int4) a cursor continues after


def encode_cursor(after: str | int) -> str:
    """Return the cursor that continues after the row whose sort key is ``after``."""
    raw = json.dumps({"after": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: type[K]) -> K | None:
    """Return the sort key a cursor continues after; a forged or foreign cursor is a 422."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        after = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))["after"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeEncodeError):
        after = None
    if isinstance(after, bool) or not isinstance(after, kind) or not _comparable(after):
        raise UnprocessableEntity("cursor is not valid", field="cursor")
    found: K = after
    return found


def _comparable(after: str | int) -> bool:
    """Return whether every database can compare a column with ``after``."""
    if isinstance(after, int):
        return abs(after) <= MAX_KEY  # past an INTEGER column: an error, not "no rows"
    try:
        after.encode("utf-8")  # refuses an unpaired surrogate
    except UnicodeEncodeError:
        return False
    return "\x00" not in after  # PostgreSQL refuses NUL in text


def filtered_page(
    fetch: Callable[[K | None, int], Sequence[T]],
    keep: Callable[[T], bool],
    key: Callable[[T], K],
    *,
    limit: int,
    after: K | None,
) -> tuple[list[T], K | None]:
    """Return one page of rows passing ``keep`` and the key to continue after, if any.

    ``fetch(after, n)`` returns up to ``n`` rows after ``after`` in key order.
    Rows are filtered here (a check SQL cannot express portably), so it
    fetches until the page is full or the rows run out: a short page never
    hides the rows that follow it.
    """
    kept: list[T] = []
    while True:
        batch = fetch(after, limit + 1)
        for row in batch:
            if keep(row):
                kept.append(row)
                if len(kept) > limit:
                    return kept[:limit], key(kept[limit - 1])
        if len(batch) <= limit:
            return kept, None
        after = key(batch[-1])
