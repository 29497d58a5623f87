"""Tenant configs: the SQLAlchemy table, and a store that reads through a versioned cache.

Writes go straight to the database; reads go through a TTL + LRU
cache. An update or delete made through any store is seen by the next ``get``
of every store in this process; other processes see it once their cached
entry expires. Deleting a tenant deletes its API keys, billing account and usage
in the same transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Final

from sqlalchemy import JSON, CheckConstraint, Integer, String, delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from ._apikey_purge import delete_tenant_keys, forget_keys
from ._cache import MISS, CacheGroup, Miss, VersionedCache
from ._caller_tx import when_committed, write_session
from ._db import Base, UTCDateTime, utcnow
from ._stores import (
    MAX_COLUMN_INT,
    decode_cursor,
    encode_cursor,
    isoformat,
    storage_errors,
)
from ._stores import MAX_PAGE_SIZE as MAX_PAGE_SIZE
from ._stores import check_limit as check_limit
from ._tenant_fields import check_status as _status
from ._tenant_fields import clean_fields as _clean_fields
from ._tenant_incarnation import forget_tenant_usage, purge_tenant_billing
from .errors import Conflict, StorageError, TenantNotFound, ValidationError
from .settings import CacheSettings
from .types import Page, TenantConfig, TenantStatus, validate_tenant_id

__all__ = ["MISS", "TenantRow", "TenantStore", "tenant_to_dict"]

STATUSES: Final = ("active", "suspended")
UPDATABLE_FIELDS: Final = frozenset(
    {
        "name",
        "status",
        "plan",
        "quota_requests_per_minute",
        "quota_tokens_per_minute",
        "allowed_models",
        "allowed_tools",
        "metadata",
    }
)


class TenantRow(Base):
    """One tenant's stored configuration (``TenantConfig`` is its immutable snapshot)."""

    __tablename__ = "tenantkit_tenants"
    __table_args__ = (CheckConstraint("status IN ('active', 'suspended')", name="status"),)

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    plan: Mapped[str] = mapped_column(String(64), nullable=False, default="free")
    quota_requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    quota_tokens_per_minute: Mapped[int | None] = mapped_column(Integer)
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)
    allowed_tools: Mapped[list[str] | None] = mapped_column(JSON)
    # "metadata" is reserved on declarative classes; the column keeps the name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, nullable=False, default=dict)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    def to_config(self) -> TenantConfig:
        """Return the immutable snapshot of this row."""
        return TenantConfig(
            id=self.id,
            name=self.name,
            status=_status(self.status),
            plan=self.plan,
            quota_requests_per_minute=self.quota_requests_per_minute,
            quota_tokens_per_minute=self.quota_tokens_per_minute,
            allowed_models=_tuple_or_none(self.allowed_models),
            allowed_tools=_tuple_or_none(self.allowed_tools),
            metadata=dict(self.meta or {}),
            version=self.version,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


# Every store's cache: a write through one store is seen by all in this process.
_caches: CacheGroup[str] = CacheGroup()


class TenantStore:
    """Create, read, list, update and delete tenant configs; reads are cached.

    ``cache`` sets the TTL, the LRU size and how long an unknown id is
    remembered as unknown; ``clock`` (monotonic seconds) drives those TTLs.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        cache: CacheSettings = CacheSettings(),  # noqa: B008 - frozen value object
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self._cache: VersionedCache[str, TenantConfig] = VersionedCache(
            version_of=lambda config: config.version,
            ttl_seconds=cache.ttl_seconds,
            negative_ttl_seconds=cache.negative_ttl_seconds,
            maxsize=cache.maxsize,
            clock=clock,
        )
        _caches.register(self._cache)

    def create_all(self) -> None:
        """Create the tenants table if it does not exist."""
        with _storage_errors():
            Base.metadata.create_all(self.engine, tables=[TenantRow.__table__])  # type: ignore[list-item]

    def create(
        self,
        *,
        id: str,
        name: str | None = None,
        status: TenantStatus = "active",
        plan: str = "free",
        quota_requests_per_minute: int | None = None,
        quota_tokens_per_minute: int | None = None,
        allowed_models: Sequence[str] | None = None,
        allowed_tools: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        session: Session | None = None,
    ) -> TenantConfig:
        """Create a tenant; raise ``Conflict`` if the id is taken.

        With ``session``, write in its transaction and leave the commit to the
        caller; caches learn of the tenant only once that commits.
        """
        tenant_id = validate_tenant_id(id, field_name="id")
        values = _clean_fields(
            {
                "name": tenant_id if name is None else name,
                "status": status,
                "plan": plan,
                "quota_requests_per_minute": quota_requests_per_minute,
                "quota_tokens_per_minute": quota_tokens_per_minute,
                "allowed_models": allowed_models,
                "allowed_tools": allowed_tools,
                "metadata": {} if metadata is None else metadata,
            }
        )
        values["meta"] = values.pop("metadata")
        now = utcnow()
        row = TenantRow(id=tenant_id, version=1, created_at=now, updated_at=now, **values)
        try:
            with _storage_errors(), self._writing(session) as db:
                db.add(row)
                db.flush()
                config = row.to_config()
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise Conflict(f"tenant {tenant_id!r} already exists", tenant_id=tenant_id) from exc
            raise
        when_committed(session, lambda: self._publish(tenant_id, config))
        return config

    def get(self, tenant_id: str) -> TenantConfig:
        """Return a tenant's config (cached); raise ``TenantNotFound`` for an unknown id."""
        # Only well-formed ids are ever cached, so a hit needs no validation.
        if type(tenant_id) is str and (hit := self._cache.hit(tenant_id)) is not None:
            return hit
        tenant_id = validate_tenant_id(tenant_id)
        config = self._cache.get(tenant_id, self._load)
        if config is None:
            raise TenantNotFound(f"tenant {tenant_id!r} not found", tenant_id=tenant_id)
        return config

    def peek(self, tenant_id: str) -> TenantConfig | Miss | None:
        """Return the cached config, ``None`` if cached as unknown, or ``MISS``; never blocks."""
        if type(tenant_id) is str and (hit := self._cache.hit(tenant_id)) is not None:
            return hit
        return self._cache.peek(validate_tenant_id(tenant_id))

    def list(self, *, limit: int = 50, cursor: str | None = None) -> Page[TenantConfig]:
        """Return one page of tenants ordered by id; pass ``next_cursor`` back for the next."""
        limit = check_limit(limit)
        after = _decode_cursor(cursor)
        query = select(TenantRow).order_by(TenantRow.id).limit(limit + 1)
        if after is not None:
            query = query.where(TenantRow.id > after)
        with _storage_errors(), Session(self.engine) as session:
            configs = [row.to_config() for row in session.scalars(query)]
        if len(configs) > limit:
            configs = configs[:limit]
            return Page(items=configs, next_cursor=_encode_cursor(configs[-1].id))
        return Page(items=configs)

    def update(
        self,
        tenant_id: str,
        *,
        expected_version: int | None = None,
        session: Session | None = None,
        **fields: Any,
    ) -> TenantConfig:
        """Change the given fields and bump the version.

        With ``expected_version``, the write happens only if the stored version
        still equals it (compare-and-set in one SQL statement); otherwise
        ``Conflict``. With ``session``, write in its transaction and leave the
        commit to the caller; caches see the change only once that commits.
        """
        tenant_id = validate_tenant_id(tenant_id)
        unknown = sorted(set(fields) - UPDATABLE_FIELDS)
        if unknown:
            raise ValidationError(f"unknown field: {unknown[0]}", field=unknown[0])
        if not fields:
            raise ValidationError("no fields to update")
        if expected_version is not None and (
            isinstance(expected_version, bool)
            or not isinstance(expected_version, int)
            or abs(expected_version) > MAX_COLUMN_INT
        ):
            raise ValidationError("expected_version must be an integer", field="expected_version")
        values = _clean_fields(fields)
        if "metadata" in values:
            values["meta"] = values.pop("metadata")
        statement = (
            update(TenantRow)
            .where(TenantRow.id == tenant_id)
            .values(**values, version=TenantRow.version + 1, updated_at=utcnow())
            .returning(TenantRow)
            .execution_options(synchronize_session=False)
        )
        if expected_version is not None:
            statement = statement.where(TenantRow.version == expected_version)
        with _storage_errors(), self._writing(session) as db:
            row = db.scalars(statement).one_or_none()
            updated = row is not None
            if row is None:
                row = db.get(TenantRow, tenant_id)
            config = None if row is None else row.to_config()
        if updated or session is None:  # a failed write in the caller's transaction: no news
            when_committed(session, lambda: self._publish(tenant_id, config))
        if config is None:
            raise TenantNotFound(f"tenant {tenant_id!r} not found", tenant_id=tenant_id)
        if not updated:
            raise Conflict(
                f"tenant {tenant_id!r} is at version {config.version}, not {expected_version}",
                tenant_id=tenant_id,
                current_version=config.version,
            )
        return config

    def delete(self, tenant_id: str, *, session: Session | None = None) -> int:
        """Delete a tenant, its API keys, billing account and usage; return how many keys went.

        All go in one transaction, and every API key store in this process
        forgets the keys at once, so they fail verification from the next
        request, also after a tenant is re-created with the same id. Raise
        ``TenantNotFound`` (deleting nothing) if there is no such tenant.
        With ``session``, delete in its transaction and leave the commit to
        the caller: the tenant, its keys and its usage counts go (from every
        cache) only then.
        """
        tenant_id = validate_tenant_id(tenant_id)
        digests: list[str] = []
        try:
            with _storage_errors(), self._writing(session) as db:
                result = db.execute(
                    delete(TenantRow)
                    .where(TenantRow.id == tenant_id)
                    .returning(TenantRow.id)
                    .execution_options(synchronize_session=False)
                )
                deleted = result.first() is not None
                if deleted:
                    digests = delete_tenant_keys(db.connection(), tenant_id, if_table_exists=True)
                    purge_tenant_billing(db.connection(), tenant_id)
        finally:
            if session is None:
                _caches.invalidate([tenant_id])
        # After the commit: a verification that read a key before it was
        # deleted cannot cache it afterwards (its fill is dropped as stale).
        if session is None or deleted:
            when_committed(session, lambda: _forget(tenant_id, digests))
        if not deleted:
            raise TenantNotFound(f"tenant {tenant_id!r} not found", tenant_id=tenant_id)
        return len(digests)

    def _writing(self, session: Session | None) -> AbstractContextManager[Session]:
        return write_session(self.engine, session, mapper=TenantRow)

    def _publish(self, tenant_id: str, config: TenantConfig | None) -> None:
        _caches.invalidate([tenant_id])  # other stores may cache it as unknown, or older
        if config is not None:
            self._cache.put(tenant_id, config)

    def invalidate(self, tenant_id: str) -> None:
        """Drop a tenant from this store's cache (after a change made elsewhere)."""
        self._cache.invalidate(validate_tenant_id(tenant_id))

    def clear_cache(self) -> None:
        """Drop every cached tenant."""
        self._cache.clear()

    def _load(self, tenant_id: str) -> TenantConfig | None:
        with _storage_errors(), Session(self.engine) as session:
            row = session.get(TenantRow, tenant_id)
            return None if row is None else row.to_config()


def _forget(tenant_id: str, digests: list[str]) -> None:
    _caches.invalidate([tenant_id])
    forget_keys(digests)
    forget_tenant_usage(tenant_id)


def tenant_to_dict(config: TenantConfig) -> dict[str, Any]:
    """Return a JSON-ready dict of a tenant config (times as RFC 3339 UTC)."""
    return {
        "id": config.id,
        "name": config.name,
        "status": config.status,
        "plan": config.plan,
        "quota_requests_per_minute": config.quota_requests_per_minute,
        "quota_tokens_per_minute": config.quota_tokens_per_minute,
        "allowed_models": _list_or_none(config.allowed_models),
        "allowed_tools": _list_or_none(config.allowed_tools),
        "metadata": dict(config.metadata),
        "version": config.version,
        "created_at": isoformat(config.created_at),
        "updated_at": isoformat(config.updated_at),
    }


def _tuple_or_none(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _list_or_none(value: Sequence[str] | None) -> list[str] | None:
    return None if value is None else list(value)


def _encode_cursor(last_id: str) -> str:
    return encode_cursor({"after": last_id})


def _decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    return decode_cursor(cursor, lambda position: validate_tenant_id(position["after"]))


def _storage_errors() -> AbstractContextManager[None]:
    return storage_errors("tenant store")
