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
from collections.abc import Iterator

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
