"""Helpers shared by the tenant and API-key stores: errors, paging, field checks.

One copy of each, so both stores fail, page and validate alike: SQLAlchemy
errors become ``StorageError``, page cursors are opaque URL-safe base64 JSON,
page sizes run from 1 to ``MAX_PAGE_SIZE``, and a bad field is a
``ValidationError`` naming it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from .errors import StorageError, ValidationError

__all__ = [
    "MAX_CURSOR_LENGTH",
    "MAX_PAGE_SIZE",
    "check_limit",
    "check_text",
    "decode_cursor",
    "encode_cursor",
    "isoformat",
    "storage_errors",
]

T = TypeVar("T")

MAX_PAGE_SIZE: Final = 200
MAX_CURSOR_LENGTH: Final = 200


@contextmanager
def storage_errors(store: str) -> Iterator[None]:
    """Re-raise SQLAlchemy errors as ``StorageError`` naming ``store`` (cause: the original)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StorageError(f"{store} failed: {type(exc).__name__}") from exc


def check_limit(limit: object) -> int:
    """Return a page size in 1..200, or raise ``ValidationError`` naming ``limit``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}", field="limit")
    return limit


def check_text(value: object, field: str, *, max_length: int) -> str:
    """Return ``value`` if it is a non-blank string of at most ``max_length`` characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise ValidationError(
            f"{field} must be a non-empty string of at most {max_length} characters", field=field
        )
    return value


def encode_cursor(position: Any) -> str:
    """Return an opaque cursor holding ``position`` (any JSON value)."""
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: object, parse: Callable[[Any], T]) -> T:
    """Return ``parse`` of the position in ``cursor``; ``ValidationError`` if either fails.

    ``parse`` signals a position it does not accept with ``ValueError``,
    ``KeyError`` or ``TypeError``.
    """
    try:
        if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError("not a cursor")
        padded = cursor + "=" * (-len(cursor) % 4)
        return parse(json.loads(base64.urlsafe_b64decode(padded.encode("ascii"))))
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ValidationError("cursor is not valid", field="cursor") from exc


def isoformat(value: datetime | None) -> str | None:
    """Return an RFC 3339 UTC time with a ``Z`` suffix, or ``None``."""
    return None if value is None else value.isoformat().replace("+00:00", "Z")
