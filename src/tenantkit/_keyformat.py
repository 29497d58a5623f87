"""The API key format: generate, parse and recognise ``tk_live_``/``tk_test_`` keys.

A key reads ``tk_live_`` or ``tk_test_``, then 43 base62 characters holding
32 random bytes, then a 6-character base62 CRC32 of everything before it.
The fixed shape and the checksum let secret scanners spot a leaked key and
let a store refuse a mistyped one without a database read. This module
knows no storage; ``apikeys`` re-exports its public names.
"""

from __future__ import annotations

import hmac
import re
import secrets
import zlib
from dataclasses import dataclass
from typing import Final, Literal, TypeGuard

from .errors import ValidationError

__all__ = [
    "KEY_PREFIXES",
    "Environment",
    "ParsedKey",
    "base62",
    "generate_key",
    "looks_like_key",
    "parse_key",
]

Environment = Literal["live", "test"]

BASE62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ENTROPY_BYTES: Final = 32
BODY_LENGTH: Final = 43  # 62**43 > 2**256: room for 32 bytes at a fixed width
CHECKSUM_LENGTH: Final = 6  # 62**6 > 2**32: room for a CRC32
KEY_PREFIXES: Final = ("tk_live_", "tk_test_")
KEY_LENGTH: Final = len("tk_live_") + BODY_LENGTH + CHECKSUM_LENGTH
KEY_PATTERN: Final = re.compile(
    rf"tk_(live|test)_([0-9A-Za-z]{{{BODY_LENGTH}}})([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})"
)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A well-formed key's public parts: its environment and display pieces."""

    environment: Environment
    prefix: str
    last4: str


def looks_like_key(value: object) -> bool:
    """Return whether ``value`` is meant as a tenantkit key (``tk_live_``/``tk_test_``)."""
    return isinstance(value, str) and value.startswith(KEY_PREFIXES)


def could_be_key(value: object) -> TypeGuard[str]:
    """Return whether ``value`` has a key's type and length, in ASCII (no checksum read).

    The cheap test before a key is digested: a store finds a cached key by its
    digest and checks shape and checksum only on a miss, before it reads.
    """
    return type(value) is str and len(value) == KEY_LENGTH and value.isascii()


def parse_key(key: object) -> ParsedKey:
    """Check a key's shape and checksum; raise ``ValidationError`` if either is wrong."""
    check_key(key)
    assert isinstance(key, str)
    environment: Environment = "live" if key.startswith("tk_live_") else "test"
    return ParsedKey(environment=environment, prefix=key[: len("tk_live_") + 4], last4=key[-4:])


def check_key(key: object) -> None:
    """``parse_key`` without building its result: the check a verification needs."""
    match = KEY_PATTERN.fullmatch(key) if isinstance(key, str) else None
    if match is None or not isinstance(key, str):
        raise ValidationError("not a tenantkit API key", field="key")
    if not hmac.compare_digest(match.group(3), _checksum(key[:-CHECKSUM_LENGTH])):
        raise ValidationError("API key checksum does not match", field="key")


def generate_key(environment: Environment = "live") -> str:
    """Return a new random key for ``environment``."""
    body = f"tk_{environment}_" + base62(secrets.token_bytes(ENTROPY_BYTES), BODY_LENGTH)
    return body + _checksum(body)


def base62(data: bytes, width: int) -> str:
    """Return ``data`` as a big-endian base62 number, zero-padded to ``width`` digits."""
    return _base62_int(int.from_bytes(data, "big"), width)


def _base62_int(number: int, width: int) -> str:
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(BASE62[rest])
    if len(digits) > width:
        raise ValueError("number does not fit the width")
    return "".join(reversed(digits)).rjust(width, "0")


# Every two-digit base62 string in order: a CRC32 (< 62**6) is three of them.
_PAIRS: Final = tuple(a + b for a in BASE62 for b in BASE62)


def _checksum(body: str) -> str:
    """``_base62_int(crc32(body), 6)`` in three table lookups (it runs on every verification)."""
    high, low = divmod(zlib.crc32(body.encode()), 3844)
    high, middle = divmod(high, 3844)
    return _PAIRS[high] + _PAIRS[middle] + _PAIRS[low]
