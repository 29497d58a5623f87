"""API key records: the stored row (an HMAC, never the key) and its public views.

``apikeys`` re-exports every public name here; import them from there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ._db import Base, UTCDateTime, utcnow
from ._keyformat import Environment
from ._stores import decode_cursor, encode_cursor, isoformat
from .errors import ValidationError
from .types import Identity

__all__ = ["APIKey", "APIKeyRow", "IssuedKey", "api_key_to_dict"]

KEY_ID_PATTERN: Final = re.compile(r"key_[0-9A-Za-z]{22}")


class APIKeyRow(Base):
    """One issued key as stored: its HMAC, never the key."""

    __tablename__ = "tenantkit_api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(63), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    last4: Mapped[str] = mapped_column(String(4), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rate_limit: Mapped[int | None] = mapped_column(Integer)
    token_limit: Mapped[int | None] = mapped_column(Integer)
    project_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def to_record(self) -> APIKey:
        """Return the public, secret-free view of this row."""
        return APIKey(
            id=self.id,
            tenant_id=self.tenant_id,
            name=self.name,
            prefix=self.prefix,
            last4=self.last4,
            scopes=tuple(self.scopes or ()),
            created_at=self.created_at,
            expires_at=self.expires_at,
            revoked_at=self.revoked_at,
            last_used_at=self.last_used_at,
            rate_limit=self.rate_limit,
            token_limit=self.token_limit,
            project_id=self.project_id,
        )


@dataclass(frozen=True)
class APIKey:
    """An issued key's metadata (no secret): who owns it and what it may do."""

    id: str
    tenant_id: str
    name: str
    prefix: str
    last4: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    rate_limit: int | None = None
    token_limit: int | None = None
    project_id: str | None = None

    @property
    def environment(self) -> Environment:
        """``"live"`` or ``"test"``, from the key's prefix."""
        return "test" if self.prefix.startswith("tk_test_") else "live"

    @property
    def revoked(self) -> bool:
        """Return whether the key has been revoked."""
        return self.revoked_at is not None

    def expired(self, now: datetime) -> bool:
        """Return whether the key has expired at ``now``."""
        return self.expires_at is not None and self.expires_at <= now

    def to_identity(self) -> Identity:
        """Return the authenticated identity this key grants."""
        return Identity(
            tenant_id=self.tenant_id,
            source="api_key",
            authenticated=True,
            scopes=frozenset(self.scopes),
            api_key_id=self.id,
            api_key_rate_limit=self.rate_limit,
            api_key_token_limit=self.token_limit,
            claims={"project_id": self.project_id} if self.project_id else {},
        )


@dataclass(frozen=True)
class IssuedKey:
    """A newly issued key: ``key`` is shown once and cannot be recovered later."""

    key: str
    record: APIKey


def api_key_to_dict(record: APIKey) -> dict[str, Any]:
    """Return a JSON-ready dict of a key's metadata (never the key)."""
    return {
        "id": record.id,
        "tenant_id": record.tenant_id,
        "name": record.name,
        "prefix": record.prefix,
        "last4": record.last4,
        "environment": record.environment,
        "scopes": list(record.scopes),
        "rate_limit": record.rate_limit,
        "token_limit": record.token_limit,
        "project_id": record.project_id,
        "created_at": isoformat(record.created_at),
        "expires_at": isoformat(record.expires_at),
        "revoked_at": isoformat(record.revoked_at),
        "last_used_at": isoformat(record.last_used_at),
    }


SCOPE_PATTERN: Final = re.compile(r"[A-Za-z0-9:._*/-]{1,100}")


def check_scopes(value: object) -> list[str]:
    """Return the scopes as a sorted list without repeats, or raise ``ValidationError``."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
        raise ValidationError("scopes must be a list of strings", field="scopes")
    items = list(value)
    if not all(isinstance(s, str) and SCOPE_PATTERN.fullmatch(s) for s in items):
        raise ValidationError(
            f"each scope must match {SCOPE_PATTERN.pattern}, e.g. 'write:resources'",
            field="scopes",
        )
    return sorted(set(items))


def encode_key_cursor(last: APIKey) -> str:
    """Return the page cursor that continues after ``last`` (newest first)."""
    return encode_cursor([last.created_at.isoformat(), last.id])


def decode_key_cursor(cursor: object) -> tuple[datetime, str]:
    """Return the ``(created_at, id)`` a cursor continues after; ``ValidationError`` if bad."""
    return decode_cursor(cursor, _cursor_position)


def _cursor_position(position: Any) -> tuple[datetime, str]:
    stamp, key_id = position
    created_at = datetime.fromisoformat(stamp)
    if created_at.tzinfo is None or not KEY_ID_PATTERN.fullmatch(key_id):
        raise ValueError("bad cursor")
    return created_at, key_id
