"""API keys: issue, verify, list and revoke; only an HMAC of each key is stored.

The key format (``tk_live_``/``tk_test_``, 32 random bytes in base62, a
CRC32 checksum) lives in ``_keyformat``: the checksum lets ``verify`` refuse
a mistyped key without a database read. The database holds
HMAC-SHA256(server secret, key), the display prefix (``tk_live_AbCd``) and
the last four characters, never the key. Every public name of the format and
record modules is importable from here.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from hashlib import sha256
from typing import Final

from cachetools import TTLCache
from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ._apikey_models import KEY_ID_PATTERN as KEY_ID_PATTERN
from ._apikey_models import SCOPE_PATTERN as SCOPE_PATTERN
from ._apikey_models import (
    APIKey,
    APIKeyRow,
    IssuedKey,
    api_key_to_dict,
    check_scopes,
    decode_key_cursor,
    encode_key_cursor,
)
from ._apikey_purge import forget_keys, purge_tenant_keys, register_cache
from ._cache import MISS, Miss, VersionedCache
from ._caller_tx import when_committed, write_session
from ._db import Base, utcnow
from ._keyformat import BASE62 as BASE62
from ._keyformat import BODY_LENGTH as BODY_LENGTH
from ._keyformat import CHECKSUM_LENGTH as CHECKSUM_LENGTH
from ._keyformat import ENTROPY_BYTES as ENTROPY_BYTES
from ._keyformat import KEY_PATTERN as KEY_PATTERN
from ._keyformat import KEY_PREFIXES as KEY_PREFIXES
from ._keyformat import (
    Environment,
    ParsedKey,
    base62,
    check_key,
    could_be_key,
    generate_key,
    looks_like_key,
    parse_key,
)
from ._stores import (
    check_limit,
    check_optional_int,
    check_optional_text,
    check_text,
    storage_errors,
)
from .errors import ConfigurationError, NotFound, StorageError, Unauthorized, ValidationError
from .settings import CacheSettings
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

MIN_SECRET_BYTES: Final = 32
INVALID_KEY: Final = "invalid API key"


@dataclass(frozen=True)
class _Entry:
    """What the cache holds per key hash, with the identity its record grants.

    Records are immutable, so the identity is built once per cached entry, not per request.
    """

    hash: str
    record: APIKey
    identity: Identity = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "identity", self.record.to_identity())


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
        self._keyed = hmac.new(secret.encode(), digestmod=sha256)
        self._now = now
        self._cache: VersionedCache[str, _Entry] = VersionedCache(
            version_of=lambda entry: 0 if entry.record.revoked_at is None else 1,
            ttl_seconds=cache.ttl_seconds,
            negative_ttl_seconds=cache.negative_ttl_seconds,
            maxsize=cache.maxsize,
            clock=clock,
        )
        register_cache(self._cache)
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
        session: Session | None = None,
    ) -> IssuedKey:
        """Create a key for ``tenant_id``; the returned ``key`` is the only copy.

        With ``session``, write in its transaction and leave the commit to the
        caller; the key verifies from the store's cache only once that commits.
        """
        tenant_id = validate_tenant_id(tenant_id)
        env = self.environment if environment is None else environment
        if env not in ("live", "test"):
            raise ValidationError("environment must be 'live' or 'test'", field="environment")
        row = APIKeyRow(
            id="key_" + base62(secrets.token_bytes(16), 22),
            tenant_id=tenant_id,
            name=check_text(name, "name", max_length=200),
            scopes=check_scopes(scopes),
            expires_at=self._expiry(expires_at),
            rate_limit=check_optional_int(rate_limit, "rate_limit", minimum=1),
            token_limit=check_optional_int(token_limit, "token_limit", minimum=1),
            project_id=check_optional_text(project_id, "project_id", max_length=100),
            created_at=self._now(),
        )
        key = generate_key(env)
        parsed = parse_key(key)
        digest = self._digest(key)
        row.prefix, row.last4, row.hash = parsed.prefix, parsed.last4, digest
        with _storage_errors(), self._writing(session) as db:
            db.add(row)
            db.flush()
            record = row.to_record()
        when_committed(session, lambda: self._cache.put(digest, _Entry(digest, record)))
        return IssuedKey(key=key, record=record)

    def verify(self, key: str) -> APIKey:
        """Return the record of a valid key; raise ``Unauthorized`` for anything else.

        Malformed, mistyped (checksum), unknown, revoked and expired keys all
        get the same answer, so the response reveals nothing about which. A
        cache hit does no I/O; ``last_used_at`` is written when a verification
        reads the store, at most once per ``touch_interval_seconds`` per key.
        """
        return self._verified(key).record

    def verify_identity(self, key: str) -> Identity:
        """``verify``, returning the identity the key grants (built once per cached entry)."""
        return self._verified(key).identity

    def _verified(self, key: str) -> _Entry:
        if not could_be_key(key):
            raise Unauthorized(INVALID_KEY)
        digest = self._digest(key)
        entry = self._cache.peek(digest)
        from_store = entry is MISS
        if entry is MISS:
            try:
                check_key(key)
            except ValidationError:
                raise Unauthorized(INVALID_KEY) from None
            entry = self._cache.get(digest, self._load)
        usable = self._usable(entry, digest)
        if usable is None:
            raise Unauthorized(INVALID_KEY)
        if from_store:
            # Only on the path that already did I/O: a cache hit stays non-blocking.
            self._touch(usable.record)
        return usable

    def peek(self, key: str) -> APIKey | Miss | None:
        """Answer from the cache only: the record if usable, ``None`` if not, or ``MISS``.

        ``None`` covers malformed, unknown, revoked and expired keys; on
        ``MISS`` call ``verify`` (in a thread when on an event loop).
        """
        entry = self._peeked(key)
        return entry if entry is MISS or entry is None else entry.record

    def peek_identity(self, key: str) -> Identity | Miss | None:
        """``peek``, answering with the identity the key grants instead of its record."""
        entry = self._peeked(key)
        return entry if entry is MISS or entry is None else entry.identity

    def _peeked(self, key: str) -> _Entry | Miss | None:
        if not could_be_key(key):
            return None
        digest = self._digest(key)
        entry = self._cache.peek(digest)
        if entry is MISS:
            try:
                check_key(key)
            except ValidationError:
                return None
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
            created_at, key_id = decode_key_cursor(cursor)
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
            return Page(items=records, next_cursor=encode_key_cursor(last))
        return Page(items=records)

    def get(self, tenant_id: str, key_id: str) -> APIKey:
        """Return one of a tenant's keys; ``NotFound`` if it is not this tenant's."""
        tenant_id = validate_tenant_id(tenant_id)
        with _storage_errors(), Session(self.engine) as session:
            row = self._owned(session, tenant_id, key_id)
            return row.to_record()

    def revoke(self, tenant_id: str, key_id: str, *, session: Session | None = None) -> APIKey:
        """Revoke a tenant's key (idempotent); it fails ``verify`` from the next call here.

        With ``session``, revoke in its transaction and leave the commit to the
        caller: the key keeps verifying until that commits, and fails from then.
        """
        tenant_id = validate_tenant_id(tenant_id)
        with _storage_errors(), self._writing(session) as db:
            row = self._owned(db, tenant_id, key_id)
            db.execute(
                update(APIKeyRow)
                .where(APIKeyRow.id == row.id, APIKeyRow.revoked_at.is_(None))
                .values(revoked_at=self._now())
                .execution_options(synchronize_session=False)
            )
            db.refresh(row)
            record, digest = row.to_record(), row.hash
        when_committed(session, lambda: self._revoked(digest, record))
        return record

    def _revoked(self, digest: str, record: APIKey) -> None:
        # Every key store in this process, not only this one, refuses it from now on.
        forget_keys([digest])
        self._cache.put(digest, _Entry(digest, record))

    def delete_for_tenant(self, tenant_id: str) -> int:
        """Delete every key of a tenant and return how many (``TenantStore.delete`` does it too)."""
        return len(purge_tenant_keys(self.engine, tenant_id))

    def clear_cache(self) -> None:
        """Drop every cached verification result."""
        self._cache.clear()

    def _writing(self, session: Session | None) -> AbstractContextManager[Session]:
        return write_session(self.engine, session, mapper=APIKeyRow)

    def _digest(self, key: str) -> str:
        mac = self._keyed.copy()  # keyed once: a copy skips hashing the secret into its pads
        mac.update(key.encode())
        return mac.hexdigest()

    def _load(self, digest: str) -> _Entry | None:
        with _storage_errors(), Session(self.engine) as session:
            row = session.scalars(select(APIKeyRow).where(APIKeyRow.hash == digest)).first()
            return None if row is None else _Entry(row.hash, row.to_record())

    def _usable(self, entry: _Entry | None, digest: str) -> _Entry | None:
        if entry is None or not hmac.compare_digest(entry.hash, digest):
            return None
        record = entry.record
        # The clock is read only for a key that can expire (most never do).
        if record.revoked or (record.expires_at is not None and record.expired(self._now())):
            return None
        return entry

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


def _storage_errors() -> AbstractContextManager[None]:
    return storage_errors("API key store")
