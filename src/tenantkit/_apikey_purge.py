"""Delete a tenant's API keys and make this process's key stores forget them.

Used by ``TenantStore.delete`` (inside its transaction), ``purge_tenant_keys``,
``APIKeyStore.delete_for_tenant`` and ``APIKeyStore.revoke``. Every
``APIKeyStore`` registers its verification cache here, so a key deleted or
revoked through any store or engine stops working at once in this process;
other processes forget it within their cache TTL.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, inspect
from sqlalchemy.engine import Connection, Engine

from ._apikey_models import APIKeyRow
from ._cache import CacheGroup, VersionedCache
from ._stores import storage_errors
from .types import validate_tenant_id

__all__ = ["delete_tenant_keys", "forget_keys", "purge_tenant_keys", "register_cache"]

API_KEYS_TABLE = APIKeyRow.__tablename__

_caches: CacheGroup[str] = CacheGroup()


def register_cache(cache: VersionedCache[str, Any]) -> None:
    """Have ``forget_keys`` invalidate ``cache`` (keyed by key hash) from now on."""
    _caches.register(cache)


def delete_tenant_keys(
    conn: Connection, tenant_id: str, *, if_table_exists: bool = False
) -> list[str]:
    """Delete every key of ``tenant_id`` in ``conn``'s transaction; return their hashes.

    With ``if_table_exists``, a database without the API keys table (an app
    that never issued keys) gives ``[]`` instead of an error. Call
    ``forget_keys`` with the result once the transaction has committed.
    """
    if if_table_exists and not inspect(conn).has_table(API_KEYS_TABLE):
        return []
    result = conn.execute(
        delete(APIKeyRow).where(APIKeyRow.tenant_id == tenant_id).returning(APIKeyRow.hash)
    )
    return [digest for (digest,) in result]


def forget_keys(digests: Iterable[str]) -> None:
    """Drop the given key hashes from every API key cache in this process.

    A hash is an HMAC of one key, so dropping it from a store that never saw
    it costs nothing; a read of it already under way is dropped too.
    """
    _caches.invalidate(digests)


def purge_tenant_keys(engine: Engine, tenant_id: str) -> list[str]:
    """Delete every key of ``tenant_id`` without a store (e.g. from the CLI); return their hashes.

    Every key store in this process forgets the keys at once; other
    processes' caches forget them within their TTL.
    """
    tenant_id = validate_tenant_id(tenant_id)
    with storage_errors("API key store"), engine.begin() as conn:
        digests = delete_tenant_keys(conn, tenant_id)
    forget_keys(digests)
    return digests
