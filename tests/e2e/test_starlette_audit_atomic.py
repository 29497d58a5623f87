"""Starlette example: each admin change and its audit entry are one transaction.

The audit insert is made to fail (the database refuses it, as it would in an
outage midway); the route answers 503 and nothing of the change is kept: no
tenant, no key, no revocation, no deleted data, no cache entry changed. Runs
on SQLite and on PostgreSQL, served by uvicorn in a thread of the test
process (the app's own middleware, handlers and lifespan), so the test can
reach the app's engine and caches.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from _server import START_TIMEOUT_SECONDS, free_port
from examples.starlette_app import AppConfig, create_app
from examples.starlette_app.models import User
from examples.starlette_app.services import Services
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session

from tenantkit.apikeys import APIKeyRow
from tenantkit.context import bound_tenant
from tenantkit.errors import Unauthorized
from tenantkit.tenants import MISS, TenantRow

ADMIN_TOKEN = "e2e-admin-atomic"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A SQLite file, or a PostgreSQL database of the module's own (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('atomic') / 'app.db'}"
        return
    admin_url: URL = request.getfixturevalue("postgres_admin_url")
    name = f"tk_atomic_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Client(httpx.Client):
    """An HTTP client on the served app, holding the app's services."""

    services: Services


@pytest.fixture(scope="module")
def client(database_url: str) -> Iterator[Client]:
    """The app, started (tables created) and served by uvicorn in a thread."""
    config = AppConfig.from_env(
        {
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "JWT_SECRET": "e2e-jwt-secret-atomic-" + "a" * 32,
            "DATABASE_URL": database_url,
            "OUTBOX_WORKER": "0",
        }
    )
    app = create_app(config)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the app did not start"
    try:
        with Client(base_url=f"http://127.0.0.1:{port}", timeout=15) as http:
            http.services = app.state.services
            yield http
    finally:
        server.should_exit = True
        thread.join(10)


def _services(client: Client) -> Services:
    return client.services


@contextmanager
def audit_write_fails(engine: Engine, action: str | None = None) -> Iterator[list[str]]:
    """Make inserts into the audit log (of ``action`` only, if given) fail as database errors."""
    refused: list[str] = []

    def refuse(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO TENANTKIT_AUDIT_LOG") and (
            action is None or action in repr(parameters)
        ):
            refused.append(statement)
            raise engine.dialect.loaded_dbapi.OperationalError("injected: audit write failed")

    event.listen(engine, "before_cursor_execute", refuse)
    try:
        yield refused
    finally:
        event.remove(engine, "before_cursor_execute", refuse)


def _count(engine: Engine, query: Any) -> int:
    with Session(engine) as session:
        return int(session.scalar(query) or 0)


def _create(client: Client) -> tuple[str, str]:
    tenant_id = f"atomic-{uuid.uuid4().hex[:10]}"
    created = client.post("/admin/tenants", headers=ADMIN, json={"tenant_id": tenant_id})
    assert created.status_code == 201, created.text
    return tenant_id, created.json()["api_key"]["key"]


def _assert_503(response: Any, refused: list[str]) -> None:
    assert refused, "the audit write was never attempted"
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def test_create_tenant_keeps_nothing_when_the_audit_write_fails(client: Client) -> None:
    """No tenant, no key, the cached "unknown" intact; a retry then succeeds (not 409)."""
    s = _services(client)
    tenant_id = f"atomic-{uuid.uuid4().hex[:10]}"
    assert client.get(f"/admin/tenants/{tenant_id}", headers=ADMIN).status_code == 404
    with audit_write_fails(s.kit.engine) as refused:
        response = client.post("/admin/tenants", headers=ADMIN, json={"tenant_id": tenant_id})
    _assert_503(response, refused)
    engine = s.kit.engine
    assert _count(engine, select(func.count()).where(TenantRow.id == tenant_id)) == 0
    assert _count(engine, select(func.count()).where(APIKeyRow.tenant_id == tenant_id)) == 0
    assert s.kit.tenants.peek(tenant_id) is None  # still cached as unknown, not evicted
    retry = client.post("/admin/tenants", headers=ADMIN, json={"tenant_id": tenant_id})
    assert retry.status_code == 201, retry.text


def test_update_tenant_keeps_nothing_when_the_audit_write_fails(client: Client) -> None:
    """The stored and cached config stay at the old version."""
    s = _services(client)
    tenant_id, _ = _create(client)
    before = client.get(f"/admin/tenants/{tenant_id}", headers=ADMIN).json()
    with audit_write_fails(s.kit.engine) as refused:
        response = client.put(
            f"/admin/tenants/{tenant_id}", headers=ADMIN, json={"status": "suspended"}
        )
    _assert_503(response, refused)
    cached = s.kit.tenants.peek(tenant_id)
    assert cached is MISS or (cached is not None and cached.version == before["version"])
    assert client.get(f"/admin/tenants/{tenant_id}", headers=ADMIN).json() == before


def test_delete_tenant_keeps_everything_when_the_audit_write_fails(client: Client) -> None:
    """Data, key and tenant all stay; the key still verifies and the cache is untouched."""
    s = _services(client)
    tenant_id, key = _create(client)
    with bound_tenant(tenant_id), s.db.sessions.begin() as session:
        session.add(User(email="a@example.com", name="A"))
    assert s.kit.api_keys is not None
    assert s.kit.api_keys.verify(key).tenant_id == tenant_id
    cached = s.kit.tenants.get(tenant_id)
    # Only the last write fails: the data's own deletion entries go through.
    with audit_write_fails(s.kit.engine, "tenant.deleted") as refused:
        response = client.delete(f"/admin/tenants/{tenant_id}", headers=ADMIN)
    _assert_503(response, refused)
    assert s.kit.tenants.peek(tenant_id) is cached
    assert s.kit.api_keys.verify(key).tenant_id == tenant_id
    engine = s.kit.engine
    assert _count(engine, select(func.count()).where(APIKeyRow.tenant_id == tenant_id)) == 1
    with bound_tenant(tenant_id), s.db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 1
    deleted = client.delete(f"/admin/tenants/{tenant_id}", headers=ADMIN)
    assert deleted.status_code == 204, deleted.text
    with pytest.raises(Unauthorized):
        s.kit.api_keys.verify(key)


def test_issue_key_keeps_nothing_when_the_audit_write_fails(client: Client) -> None:
    """No key row is left behind."""
    s = _services(client)
    tenant_id, _ = _create(client)
    with audit_write_fails(s.kit.engine) as refused:
        response = client.post(
            f"/admin/tenants/{tenant_id}/api-keys", headers=ADMIN, json={"name": "second"}
        )
    _assert_503(response, refused)
    engine = s.kit.engine
    assert _count(engine, select(func.count()).where(APIKeyRow.tenant_id == tenant_id)) == 1


def test_revoke_key_keeps_the_key_when_the_audit_write_fails(client: Client) -> None:
    """The key is not revoked and still verifies (its cache entry is not evicted)."""
    s = _services(client)
    tenant_id, key = _create(client)
    assert s.kit.api_keys is not None
    record = s.kit.api_keys.verify(key)
    with audit_write_fails(s.kit.engine) as refused:
        response = client.delete(f"/admin/tenants/{tenant_id}/api-keys/{record.id}", headers=ADMIN)
    _assert_503(response, refused)
    assert s.kit.api_keys.peek(key) == record
    revoked = select(func.count()).where(
        APIKeyRow.id == record.id, APIKeyRow.revoked_at.is_not(None)
    )
    assert _count(s.kit.engine, revoked) == 0
