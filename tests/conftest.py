"""Shared fixtures: tenant-context hygiene and the real PostgreSQL and Redis services.

PostgreSQL and Redis URLs come from ``TENANTKIT_TEST_POSTGRES_URL`` and
``TENANTKIT_TEST_REDIS_URL``. Without them the tests that need a service skip
with the reason; with them (``.ci/run`` sets both) an unreachable service fails.
Each test session gets its own freshly created PostgreSQL database and its own
Redis key prefix, so concurrent runs on one machine never see each other.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from tenantkit import context

POSTGRES_ENV = "TENANTKIT_TEST_POSTGRES_URL"
REDIS_ENV = "TENANTKIT_TEST_REDIS_URL"


@pytest.fixture(autouse=True)
def _clear_tenant_context() -> Iterator[None]:
    """Every test starts and ends with no tenant bound."""
    with context.no_tenant():
        yield


@pytest.fixture(scope="session")
def postgres_admin_url() -> URL:
    """The URL of the PostgreSQL server's maintenance database (skip if not configured)."""
    raw = os.environ.get(POSTGRES_ENV)
    if not raw:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    return make_url(raw).set(drivername="postgresql+psycopg")


@pytest.fixture(scope="session")
def postgres_url(postgres_admin_url: URL) -> Iterator[URL]:
    """A fresh, empty PostgreSQL database for this test session, dropped afterwards."""
    name = f"tk_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_admin_url.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis URL for integration tests (skip if not configured)."""
    raw = os.environ.get(REDIS_ENV)
    if not raw:
        pytest.skip(f"{REDIS_ENV} is not set")
    return raw


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test or concurrent run uses."""
    return f"tk-test-{uuid.uuid4().hex[:10]}"


JWT_SECRET = "test-secret-that-is-long-enough-for-hs256!"
API_KEY_SECRET = "api-key-hmac-secret-for-the-test-suite-0123456789"


@pytest.fixture
def make_kit(tmp_path: Any) -> Callable[..., Any]:
    """Build a ``TenantKit`` on a fresh SQLite file with tenants ``acme`` and ``globex``.

    Keyword arguments override ``Settings`` fields; ``tenants`` maps extra
    tenant ids to ``TenantStore.create`` keyword arguments.
    """
    from tenantkit.kit import TenantKit
    from tenantkit.settings import JWTSettings, Settings

    def factory(tenants: dict[str, dict[str, Any]] | None = None, **overrides: Any) -> Any:
        options: dict[str, Any] = {
            "database_url": f"sqlite:///{tmp_path / f'kit-{uuid.uuid4().hex[:6]}.db'}",
            "api_key_secret": API_KEY_SECRET,
            "jwt": JWTSettings(secret=JWT_SECRET),
        }
        options.update(overrides)
        kit = TenantKit(Settings(**options))
        kit.create_all()
        wanted = {"acme": {}, "globex": {}} if tenants is None else tenants
        for tenant_id, fields in wanted.items():
            kit.tenants.create(id=tenant_id, name=tenant_id.title(), **fields)
        return kit

    return factory


@pytest.fixture
def jwt_for() -> Callable[..., str]:
    """Return a function minting a valid bearer JWT for a tenant under a kit's settings."""
    from tenantkit.identity import encode_token

    def mint(kit: Any, tenant_id: str, subject: str = "user-1", **claims: Any) -> str:
        return str(encode_token(kit.settings, tenant_id=tenant_id, subject=subject, **claims))

    return mint
