"""API keys: issue, verify, list and revoke; only an HMAC of each key is stored.

A key reads ``tk_live_`` or ``tk_test_``, then 43 base62 characters holding
32 random bytes, then a 6-character base62 CRC32 of everything before it.
The fixed shape and the checksum let secret scanners spot a leaked key and
let ``verify`` refuse a mistyped one without a database read. The database
holds HMAC-SHA256(server secret, key), the display prefix (``tk_live_AbCd``)
and the last four characters, never the key.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256
from typing import Any, Final, Literal

from cachetools import TTLCache
from sqlalchemy import JSON, Integer, String, and_, delete, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from ._cache import MISS, Miss, VersionedCache
from ._db import Base, UTCDateTime, utcnow
from .errors import ConfigurationError, NotFound, StorageError, Unauthorized, ValidationError
from .settings import CacheSettings
from .tenants import check_limit
from .types import Identity, Page, validate_tenant_id

__all__ = [
    "MISS",
    "APIKey",
    "APIKeyRow",
    "APIKeyStore",
    "IssuedKey",
    "ParsedKey",
    "api_key_to_dict",
    "generate_key",
    "looks_like_key",
    "parse_key",
    "purge_tenant_keys",
]

log = logging.getLogger(__name__)

Environment = Literal["live", "test"]

BASE62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ENTROPY_BYTES: Final = 32
BODY_LENGTH: Final = 43  # 62**43 > 2**256: room for 32 bytes at a fixed width
CHECKSUM_LENGTH: Final = 6  # 62**6 > 2**32: room for a CRC32
KEY_PREFIXES: Final = ("tk_live_", "tk_test_")
KEY_PATTERN: Final = re.compile(
    rf"tk_(live|test)_([0-9A-Za-z]{{{BODY_LENGTH}}})([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})"
)
KEY_ID_PATTERN: Final = re.compile(r"key_[0-9A-Za-z]{22}")
SCOPE_PATTERN: Final = re.compile(r"[A-Za-z0-9:._*/-]{1,100}")
MIN_SECRET_BYTES: Final = 32
INVALID_KEY: Final = "invalid API key"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A well-formed key's public parts: its environment and display pieces."""

    environment: Environment
    prefix: str
    last4: str


def looks_like_key(value: object) -> bool:
    """Return whether ``value`` is meant as a tenantkit key (``tk_live_``/``tk_test_``)."""
    return isinstance(value, str) and value.startswith(KEY_PREFIXES)


def parse_key(key: object) -> ParsedKey:
    """Check a key's shape and checksum; raise ``ValidationError`` if either is wrong."""
    match = KEY_PATTERN.fullmatch(key) if isinstance(key, str) else None
    if match is None or not isinstance(key, str):
        raise ValidationError("not a tenantkit API key", field="key")
    body = key[:-CHECKSUM_LENGTH]
    if not hmac.compare_digest(match.group(3), _checksum(body)):
        raise ValidationError("API key checksum does not match", field="key")
    environment: Environment = "live" if match.group(1) == "live" else "test"
    return ParsedKey(environment=environment, prefix=key[: len("tk_live_") + 4], last4=key[-4:])


def generate_key(environment: Environment = "live") -> str:
    """Return a new random key for ``environment``."""
    body = f"tk_{environment}_" + _base62(secrets.token_bytes(ENTROPY_BYTES), BODY_LENGTH)
    return body + _checksum(body)


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


@dataclass(frozen=True)
class _Entry:
    """What the cache holds per key hash."""

    hash: str
    record: APIKey


class APIKeyStore:
    """Issue, verify, list and revoke API keys; verification is cached by key hash.

    ``secret`` (at least 32 bytes) keys the HMAC; changing it invalidates every
    key. ``now`` (wall clock) decides expiry; ``clock`` (monotonic) drives the
    cache TTLs. ``touch_interval_seconds`` bounds how often ``verify`` writes
    ``last_used_at`` for one key (0 turns that off).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        secret: str | None,
        cache: CacheSettings = CacheSettings(),  # noqa: B008 - frozen value object
        environment: Environment = "live",
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
        touch_interval_seconds: float = 60.0,
    ) -> None:
        if not isinstance(secret, str) or len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"the API key secret (TENANTKIT_API_KEY_SECRET) must be at least "
                f"{MIN_SECRET_BYTES} bytes; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if environment not in ("live", "test"):
            raise ConfigurationError("api_key_environment must be 'live' or 'test'")
        self.engine = engine
        self.environment: Environment = environment
        self._secret = secret.encode()
        self._now = now
        self._cache: VersionedCache[str, _Entry] = VersionedCache(
            version_of=lambda entry: 0 if entry.record.revoked_at is None else 1,
            ttl_seconds=cache.ttl_seconds,
            negative_ttl_seconds=cache.negative_ttl_seconds,
            maxsize=cache.maxsize,
            clock=clock,
        )
        self._touch_lock = threading.Lock()
        self._touched: TTLCache[str, bool] | None = (
            TTLCache(cache.maxsize, touch_interval_seconds, timer=clock)
            if touch_interval_seconds > 0 and cache.maxsize > 0
            else None
        )

    def create_all(self) -> None:
        """Create the API keys table if it does not exist."""
        with _storage_errors():
            Base.metadata.create_all(self.engine, tables=[APIKeyRow.__table__])  # type: ignore[list-item]

    def issue(
        self,
        tenant_id: str,
        *,
        name: str,
        scopes: Sequence[str] = (),
        expires_at: datetime | None = None,
        rate_limit: int | None = None,
        token_limit: int | None = None,
        project_id: str | None = None,
        environment: Environment | None = None,
    ) -> IssuedKey:
        """Create a key for ``tenant_id``; the returned ``key`` is the only copy."""
        tenant_id = validate_tenant_id(tenant_id)
        env = self.environment if environment is None else environment
        if env not in ("live", "test"):
            raise ValidationError("environment must be 'live' or 'test'", field="environment")
        row = APIKeyRow(
            id="key_" + _base62(secrets.token_bytes(16), 22),
            tenant_id=tenant_id,
            name=_text(name, "name", 200),
            scopes=_scopes(scopes),
            expires_at=self._expiry(expires_at),
            rate_limit=_positive(rate_limit, "rate_limit"),
            token_limit=_positive(token_limit, "token_limit"),
            project_id=None if project_id is None else _text(project_id, "project_id", 100),
            created_at=self._now(),
        )
        key = generate_key(env)
        parsed = parse_key(key)
        digest = self._digest(key)
        row.prefix, row.last4, row.hash = parsed.prefix, parsed.last4, digest
        with _storage_errors(), Session(self.engine) as session, session.begin():
            session.add(row)
            session.flush()
            record = row.to_record()
        self._cache.put(digest, _Entry(digest, record))
        return IssuedKey(key=key, record=record)

    def verify(self, key: str) -> APIKey:
        """Return the record of a valid key; raise ``Unauthorized`` for anything else.

        Malformed, mistyped (checksum), unknown, revoked and expired keys all
        get the same answer, so the response reveals nothing about which. A
        cache hit does no I/O; ``last_used_at`` is written when a verification
        reads the store, at most once per ``touch_interval_seconds`` per key.
        """
        try:
            parse_key(key)
        except ValidationError:
            raise Unauthorized(INVALID_KEY) from None
        digest = self._digest(key)
        entry = self._cache.peek(digest)
        from_store = entry is MISS
        if entry is MISS:
            entry = self._cache.get(digest, self._load)
        record = self._usable(entry, digest)
        if record is None:
            raise Unauthorized(INVALID_KEY)
        if from_store:
            # Only on the path that already did I/O: a cache hit stays non-blocking.
            self._touch(record)
        return record

    def peek(self, key: str) -> APIKey | Miss | None:
        """Answer from the cache only: the record if usable, ``None`` if not, or ``MISS``.

        ``None`` covers malformed, unknown, revoked and expired keys; on
        ``MISS`` call ``verify`` (in a thread when on an event loop).
        """
        try:
            parse_key(key)
        except ValidationError:
            return None
        digest = self._digest(key)
        entry = self._cache.peek(digest)
        if entry is MISS:
            return MISS
        return self._usable(entry, digest)

    def list(self, tenant_id: str, *, limit: int = 50, cursor: str | None = None) -> Page[APIKey]:
        """Return one page of a tenant's keys, newest first (revoked ones included)."""
        tenant_id = validate_tenant_id(tenant_id)
        limit = check_limit(limit)
        query = (
            select(APIKeyRow)
            .where(APIKeyRow.tenant_id == tenant_id)
            .order_by(APIKeyRow.created_at.desc(), APIKeyRow.id.desc())
            .limit(limit + 1)
        )
        if cursor is not None:
            created_at, key_id = _decode_cursor(cursor)
            query = query.where(
                or_(
                    APIKeyRow.created_at < created_at,
                    and_(APIKeyRow.created_at == created_at, APIKeyRow.id < key_id),
                )
            )
        with _storage_errors(), Session(self.engine) as session:
            records = [row.to_record() for row in session.scalars(query)]
        if len(records) > limit:
            records = records[:limit]
            last = records[-1]
            return Page(items=records, next_cursor=_encode_cursor(last.created_at, last.id))
        return Page(items=records)

    def get(self, tenant_id: str, key_id: str) -> APIKey:
        """Return one of a tenant's keys; ``NotFound`` if it is not this tenant's."""
        tenant_id = validate_tenant_id(tenant_id)
        with _storage_errors(), Session(self.engine) as session:
            row = self._owned(session, tenant_id, key_id)
            return row.to_record()

    def revoke(self, tenant_id: str, key_id: str) -> APIKey:
        """Revoke a tenant's key (idempotent); it fails ``verify`` from the next call here."""
        tenant_id = validate_tenant_id(tenant_id)
        with _storage_errors(), Session(self.engine) as session, session.begin():
            row = self._owned(session, tenant_id, key_id)
            session.execute(
                update(APIKeyRow)
                .where(APIKeyRow.id == row.id, APIKeyRow.revoked_at.is_(None))
                .values(revoked_at=self._now())
                .execution_options(synchronize_session=False)
            )
            session.refresh(row)
            record, digest = row.to_record(), row.hash
        self._cache.put(digest, _Entry(digest, record))
        return record

    def delete_for_tenant(self, tenant_id: str) -> int:
        """Delete every key of a tenant (when the tenant goes); return how many."""
        hashes = purge_tenant_keys(self.engine, validate_tenant_id(tenant_id))
        for digest in hashes:
            self._cache.invalidate(digest)
        return len(hashes)

    def clear_cache(self) -> None:
        """Drop every cached verification result."""
        self._cache.clear()

    def _digest(self, key: str) -> str:
        return hmac.new(self._secret, key.encode(), sha256).hexdigest()

    def _load(self, digest: str) -> _Entry | None:
        with _storage_errors(), Session(self.engine) as session:
            row = session.scalars(select(APIKeyRow).where(APIKeyRow.hash == digest)).first()
            return None if row is None else _Entry(row.hash, row.to_record())

    def _usable(self, entry: _Entry | None, digest: str) -> APIKey | None:
        if entry is None or not hmac.compare_digest(entry.hash, digest):
            return None
        record = entry.record
        if record.revoked or record.expired(self._now()):
            return None
        return record

    def _owned(self, session: Session, tenant_id: str, key_id: str) -> APIKeyRow:
        # Another tenant's key and a missing one answer alike: existence is not revealed.
        row = None
        if isinstance(key_id, str) and KEY_ID_PATTERN.fullmatch(key_id):
            row = session.get(APIKeyRow, key_id)
        if row is None or row.tenant_id != tenant_id:
            raise NotFound("API key not found")
        return row

    def _touch(self, record: APIKey) -> None:
        if self._touched is None:
            return
        with self._touch_lock:
            if record.id in self._touched:
                return
            self._touched[record.id] = True
        try:
            with _storage_errors(), self.engine.begin() as conn:
                conn.execute(
                    update(APIKeyRow)
                    .where(APIKeyRow.id == record.id)
                    .values(last_used_at=self._now())
                )
        except StorageError:
            # Bookkeeping only: a failed write must not turn a valid key away.
            log.warning("could not record last use of API key %s", record.id, exc_info=True)

    def _expiry(self, expires_at: datetime | None) -> datetime | None:
        if expires_at is None:
            return None
        if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
            raise ValidationError(
                "expires_at must be a timezone-aware datetime", field="expires_at"
            )
        if expires_at <= self._now():
            raise ValidationError("expires_at must be in the future", field="expires_at")
        return expires_at


def purge_tenant_keys(engine: Engine, tenant_id: str) -> list[str]:
    """Delete every key of ``tenant_id`` without a store (e.g. from the CLI); return their hashes.

    Other processes' caches forget the keys within their TTL.
    """
    tenant_id = validate_tenant_id(tenant_id)
    with _storage_errors(), engine.begin() as conn:
        result = conn.execute(
            delete(APIKeyRow).where(APIKeyRow.tenant_id == tenant_id).returning(APIKeyRow.hash)
        )
        return [digest for (digest,) in result]


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
        "created_at": _isoformat(record.created_at),
        "expires_at": _isoformat(record.expires_at),
        "revoked_at": _isoformat(record.revoked_at),
        "last_used_at": _isoformat(record.last_used_at),
    }


def _base62(data: bytes, width: int) -> str:
    return _base62_int(int.from_bytes(data, "big"), width)


def _base62_int(number: int, width: int) -> str:
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(BASE62[rest])
    if len(digits) > width:
        raise ValueError("number does not fit the width")
    return "".join(reversed(digits)).rjust(width, "0")


def _checksum(body: str) -> str:
    return _base62_int(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def _text(value: object, field: str, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise ValidationError(
            f"{field} must be a non-empty string of at most {max_length} characters", field=field
        )
    return value


def _scopes(value: object) -> list[str]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
        raise ValidationError("scopes must be a list of strings", field="scopes")
    items = list(value)
    if not all(isinstance(s, str) and SCOPE_PATTERN.fullmatch(s) for s in items):
        raise ValidationError(
            f"each scope must match {SCOPE_PATTERN.pattern}, e.g. 'write:resources'",
            field="scopes",
        )
    return sorted(set(items))


def _positive(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{field} must be a positive integer or null", field=field)
    return value


def _isoformat(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _encode_cursor(created_at: datetime, key_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), key_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: object) -> tuple[datetime, str]:
    try:
        if not isinstance(cursor, str) or len(cursor) > 200:
            raise ValueError("bad cursor")
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, key_id = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None or not KEY_ID_PATTERN.fullmatch(key_id):
            raise ValueError("bad cursor")
        return created_at, key_id
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValidationError("cursor is not valid", field="cursor") from exc


@contextmanager
def _storage_errors() -> Iterator[None]:
    """Re-raise SQLAlchemy errors as ``StorageError`` (the original is the cause)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StorageError(f"API key store failed: {type(exc).__name__}") from exc
