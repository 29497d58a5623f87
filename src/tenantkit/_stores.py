"""Helpers shared by the tenant and API-key stores: errors, paging, field checks.

One copy of each, so both stores fail, page and validate alike: SQLAlchemy
errors become ``StorageError``, page cursors are opaque URL-safe base64 JSON,
page sizes run from 1 to ``MAX_PAGE_SIZE``, and a bad field is a
``ValidationError`` naming it. A value no database can store (text holding
NUL or a lone surrogate, an integer past a 32-bit column) is a bad field too,
caught here rather than by the driver.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from .errors import StorageError, ValidationError

__all__ = [
    "MAX_COLUMN_INT",
    "MAX_CURSOR_LENGTH",
    "MAX_PAGE_SIZE",
    "UNSTORABLE",
    "check_limit",
    "check_text",
    "decode_cursor",
    "encode_cursor",
    "isoformat",
    "storable_text",
    "storage_errors",
]

T = TypeVar("T")

MAX_PAGE_SIZE: Final = 200
MAX_CURSOR_LENGTH: Final = 200
#: What no backend stores as text: PostgreSQL refuses NUL, and no UTF-8
#: database takes a lone surrogate (a JSON body can smuggle one in as "\ud800").
UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")
#: The largest value an ``Integer`` column holds on every backend (PostgreSQL: 32 bits).
MAX_COLUMN_INT: Final = 2**31 - 1


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
    """Return ``value`` if it is a non-blank, storable string of at most ``max_length`` chars."""
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise ValidationError(
            f"{field} must be a non-empty string of at most {max_length} characters", field=field
        )
    if not storable_text(value):
        raise ValidationError(
            f"{field} must not hold NUL characters or unpaired surrogates", field=field
        )
    return value


def check_optional_text(value: object, field: str, *, max_length: int) -> str | None:
    """``check_text`` for a field that may be ``None``."""
    return None if value is None else check_text(value, field, max_length=max_length)


def check_optional_int(value: object, field: str, *, minimum: int) -> int | None:
    """Return ``None`` or an int in ``minimum..MAX_COLUMN_INT`` (what the columns hold)."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not minimum <= value <= MAX_COLUMN_INT
    ):
        raise ValidationError(
            f"{field} must be an integer from {minimum} to {MAX_COLUMN_INT} or null", field=field
        )
    return value


def storable_text(value: str) -> bool:
    """Return whether every backend stores ``value`` as text: UTF-8 encodable, no NUL."""
    return UNSTORABLE.search(value) is None


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
