"""Passwords (argon2id), TOTP second factors (RFC 6238) and one-time invitation tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.profiles import CHEAPEST, RFC_9106_LOW_MEMORY

TOTP_DIGITS = 6
TOTP_PERIOD = 30
TOTP_SECRET_BYTES = 20  # 160 bits, the HMAC-SHA1 block the RFC recommends
TOTP_WINDOW = 1  # accept the previous and next step: clocks drift, people are slow


class Passwords:
    """Hash and verify passwords with argon2id; ``fast`` is for tests only."""

    def __init__(self, *, fast: bool = False) -> None:
        self._hasher = PasswordHasher.from_parameters(CHEAPEST if fast else RFC_9106_LOW_MEMORY)
        # Verifying against a dummy hash when the user does not exist keeps the
        # response time the same, so timing does not reveal registered emails.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        """Return the argon2id hash of ``password``."""
        return self._hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """Return whether ``password`` matches ``stored`` (``None``: no password set)."""
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False


@dataclass(frozen=True, slots=True)
class TOTP:
    """A time-based one-time password generator (RFC 6238, HMAC-SHA1, 6 digits, 30 s)."""

    secret: str  # base32, no padding

    @classmethod
    def generate(cls) -> TOTP:
        """Return a TOTP with a new random secret."""
        raw = secrets.token_bytes(TOTP_SECRET_BYTES)
        return cls(base64.b32encode(raw).decode().rstrip("="))

    def code_at(self, step: int) -> str:
        """Return the code of time step ``step`` (RFC 4226 dynamic truncation)."""
        key = base64.b32decode(self.secret + "=" * (-len(self.secret) % 8))
        digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
        offset = digest[-1] & 0x0F
        number = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
        return str(number % 10**TOTP_DIGITS).zfill(TOTP_DIGITS)

    def verify(self, code: str, now: float, *, last_step: int = 0) -> int | None:
        """Return the matching step if ``code`` is valid at ``now`` and newer than ``last_step``."""
        if not isinstance(code, str) or len(code) != TOTP_DIGITS or not code.isdigit():
            return None
        current = int(now // TOTP_PERIOD)
        for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
            if step > last_step and hmac.compare_digest(self.code_at(step), code):
                return step
        return None

    def uri(self, account: str, issuer: str) -> str:
        """Return the ``otpauth://`` URI authenticator apps read from a QR code."""
        label = quote(f"{issuer}:{account}")
        query = urlencode(
            {
                "secret": self.secret,
                "issuer": issuer,
                "algorithm": "SHA1",
                "digits": TOTP_DIGITS,
                "period": TOTP_PERIOD,
            }
        )
        return f"otpauth://totp/{label}?{query}"


def new_invitation_token(org_id: str) -> tuple[str, str]:
    """Return ``(token, sha256 hex)``; the token names its organization before the dot."""
    token = f"{org_id}.{secrets.token_urlsafe(32)}"
    return token, token_digest(token)


def split_invitation_token(token: str) -> str | None:
    """Return the organization id a token names, or ``None`` if it is not token-shaped."""
    org_id, dot, secret = token.partition(".")
    if not dot or len(secret) < 20 or len(token) > 200:
        return None
    return org_id


def token_digest(token: str) -> str:
    """Return the SHA-256 hex digest stored in place of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_id(prefix: str) -> str:
    """Return a random, URL-safe identifier like ``usr_3kTq...``."""
    return f"{prefix}_{secrets.token_hex(10)}"
