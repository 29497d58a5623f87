"""Opaque cursors for keyset pagination: ``?limit=`` and ``?cursor=`` on every list."""

from __future__ import annotations

import base64
import binascii
import json

from tenantkit.errors import UnprocessableEntity


def encode_cursor(after: str | int) -> str:
    """Return the cursor that continues after the row whose sort key is ``after``."""
    raw = json.dumps({"after": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: type[str] | type[int]) -> str | int | None:
    """Return the sort key a cursor continues after; a forged or foreign cursor is a 422."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        after = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))["after"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeEncodeError):
        after = None
    if isinstance(after, bool) or not isinstance(after, kind):
        raise UnprocessableEntity("cursor is not valid", field="cursor")
    return after
