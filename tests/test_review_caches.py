"""A write through one store is seen at once by every other store's cache in this process."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tenantkit._db import make_engine
from tenantkit.apikeys import APIKeyStore
from tenantkit.errors import TenantNotFound, Unauthorized
from tenantkit.settings import CacheSettings
from tenantkit.tenants import TenantStore

SECRET = "review-secret-for-the-api-key-store-0123456789"
# Long TTLs: without the fix a stale entry would be served for the whole hour.
CACHE = CacheSettings(ttl_seconds=3600, negative_ttl_seconds=3600)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'caches.db'}")
    TenantStore(engine).create_all()
    APIKeyStore(engine, secret=SECRET).create_all()
    return engine


def test_revoke_through_one_store_reaches_another(engine: Engine) -> None:
    """A key revoked through the admin's store fails verification in the pipeline's store."""
    admin = APIKeyStore(engine, secret=SECRET, cache=CACHE)
    pipeline = APIKeyStore(engine, secret=SECRET, cache=CACHE)
    issued = admin.issue("acme", name="ci")
    assert pipeline.verify(issued.key).id == issued.record.id  # now cached there
    admin.revoke("acme", issued.record.id)
    with pytest.raises(Unauthorized):
        pipeline.verify(issued.key)


def test_tenant_update_and_delete_reach_every_store(engine: Engine) -> None:
    """An update, a suspension and a delete through one store are seen by another at once."""
    admin = TenantStore(engine, cache=CACHE)
    pipeline = TenantStore(engine, cache=CACHE)
    admin.create(id="acme", name="Acme")
    assert pipeline.get("acme").name == "Acme"  # cached in the pipeline's store
    admin.update("acme", status="suspended")
    assert pipeline.get("acme").status == "suspended"
    admin.delete("acme")
    with pytest.raises(TenantNotFound):
        pipeline.get("acme")


def test_tenant_created_elsewhere_is_no_longer_unknown(engine: Engine) -> None:
    """A tenant cached as unknown by one store is found once another store creates it."""
    admin = TenantStore(engine, cache=CACHE)
    pipeline = TenantStore(engine, cache=CACHE)
    with pytest.raises(TenantNotFound):
        pipeline.get("late")
    admin.create(id="late")
    assert pipeline.get("late").id == "late"
