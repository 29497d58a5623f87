"""The production path: PostgreSQL with row-level security, Redis shared by several processes.

Two app processes share one database and one Redis and together admit
exactly a tenant's quota. With Redis unreachable the app answers the
configured 503 (``fail_closed``) or serves without quotas (``fail_open``),
never a 500.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from _server import Server, free_port, serve_module
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from tenantkit.rls import drop_app_role

ADMIN_TOKEN = "e2e-admin-services"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BASE_ENV = {
    "ADMIN_TOKEN": ADMIN_TOKEN,
    "JWT_SECRET": "e2e-jwt-secret-services-" + "w" * 32,
    "ARGON2_MEMORY_KIB": "8192",
    "ARGON2_TIME_COST": "1",
}


@pytest.fixture(scope="module")
def app_database(postgres_admin_url: URL) -> Iterator[tuple[URL, str]]:
    """A database of our own and a unique app role; both dropped afterwards."""
    name = f"tk_sapp_{uuid.uuid4().hex[:10]}"
    role = f"tk_sapp_role_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres_admin_url.set(database=name)
    try:
        yield url, role
    finally:
        engine = create_engine(url)
        try:
            drop_app_role(engine, role)
        finally:
            engine.dispose()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


@pytest.fixture(scope="module")
def pair(
    app_database: tuple[URL, str],
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, Server]]:
    """Two app processes on one PostgreSQL database and one Redis (a unique key prefix)."""
    url, role = app_database
    workdir: Path = tmp_path_factory.mktemp("starlette-pair")
    env = {
        **BASE_ENV,
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "DATABASE_APP_ROLE": role,
        "QUOTA_STORAGE_URI": redis_url,
        "QUOTA_KEY_PREFIX": f"tk-sapp-{uuid.uuid4().hex[:10]}",
        # A loaded CI machine can take longer than the 50 ms default to answer.
        "QUOTA_TIMEOUT_SECONDS": "2",
    }
    # One after the other: the first creates the tables and the role.
    with (
        serve_module("examples.starlette_app", env=env, cwd=workdir) as first,
        serve_module("examples.starlette_app", env=env, cwd=workdir) as second,
    ):
        yield first, second


def test_two_processes_sharing_redis_admit_exactly_the_quota(pair: tuple[Server, Server]) -> None:
    """Ten concurrent requests spread over two processes: exactly the 5 of the quota pass."""
    first, second = pair
    tenant_id = f"shared-{uuid.uuid4().hex[:8]}"
    created = httpx.post(
        first.url + "/admin/tenants",
        headers=ADMIN,
        json={"tenant_id": tenant_id, "quota_requests_per_minute": 5},
        timeout=15,
    )
    assert created.status_code == 201, created.text
    key = {"X-API-Key": created.json()["api_key"]["key"]}

    def call(i: int) -> int:
        server = (first, second)[i % 2]
        return httpx.get(server.url + "/api/users", headers=key, timeout=15).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = sorted(pool.map(call, range(10)))
    # The bucket refills one request every 12 s: far longer than this burst takes.
    assert statuses == [200] * 5 + [429] * 5


def test_postgres_row_level_security_binds_the_app_role(
    pair: tuple[Server, Server], app_database: tuple[URL, str]
) -> None:
    """On PostgreSQL the app's tables are under RLS: the app role sees only the bound tenant."""
    first, second = pair
    url, role = app_database
    tenant_id = f"rls-{uuid.uuid4().hex[:8]}"
    created = httpx.post(
        first.url + "/admin/tenants", headers=ADMIN, json={"tenant_id": tenant_id}, timeout=15
    )
    key = {"X-API-Key": created.json()["api_key"]["key"]}
    added = httpx.post(
        second.url + "/api/users", headers=key, json={"email": "r@ls.io", "name": "R"}, timeout=15
    )
    assert added.status_code == 201
    assert "row-level security is enforced" in first.output()
    report = httpx.get(first.url + "/api/analytics/requests", headers=key, timeout=15).json()
    assert report["by_route"] == {"POST /api/users": 1}  # written by the other process
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'SET LOCAL ROLE "{role}"'))
            assert conn.scalar(text("SELECT count(*) FROM users")) == 0
            conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": tenant_id})
            assert conn.scalar(text("SELECT count(*) FROM users")) == 1
    finally:
        engine.dispose()


def test_admin_changes_apply_on_every_process_at_once(pair: tuple[Server, Server]) -> None:
    """A PUT or a key revocation on one process applies on the other, not after its cache TTL."""
    first, second = pair
    tenant_id = f"inval-{uuid.uuid4().hex[:8]}"
    created = httpx.post(
        first.url + "/admin/tenants", headers=ADMIN, json={"tenant_id": tenant_id}, timeout=15
    )
    key = {"X-API-Key": created.json()["api_key"]["key"]}
    key_id = created.json()["api_key"]["key_id"]
    assert httpx.get(second.url + "/api/users", headers=key, timeout=15).status_code == 200

    def on_second(expected: int) -> int:
        # The change travels over Redis pub/sub: allow it a moment, far below the 30 s TTL.
        deadline = time.monotonic() + 2.0
        while True:
            status = httpx.get(second.url + "/api/users", headers=key, timeout=15).status_code
            if status == expected or time.monotonic() > deadline:
                return status
            time.sleep(0.02)

    suspend = {"status": "suspended"}
    assert httpx.put(
        f"{first.url}/admin/tenants/{tenant_id}", headers=ADMIN, json=suspend
    ).is_success
    assert on_second(403) == 403
    resume = {"status": "active"}
    assert httpx.put(
        f"{first.url}/admin/tenants/{tenant_id}", headers=ADMIN, json=resume
    ).is_success
    assert on_second(200) == 200
    revoked = httpx.delete(
        f"{first.url}/admin/tenants/{tenant_id}/api-keys/{key_id}", headers=ADMIN
    )
    assert revoked.status_code == 204
    assert on_second(401) == 401


@pytest.fixture(scope="module", params=["fail_closed", "fail_open"])
def redis_down(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Server]]:
    """The app pointed at a Redis port nothing listens on, in each failure mode."""
    mode: str = request.param
    workdir: Path = tmp_path_factory.mktemp(f"starlette-{mode}")
    env = {
        **BASE_ENV,
        "DATABASE_URL": f"sqlite:///{workdir / 'app.db'}",
        "QUOTA_STORAGE_URI": f"redis://127.0.0.1:{free_port()}/0",
        "QUOTA_ON_FAILURE": mode,
    }
    with serve_module("examples.starlette_app", env=env, cwd=workdir) as running:
        yield mode, running


def test_unreachable_redis_is_503_or_fail_open(
    redis_down: tuple[str, Server],
) -> None:
    """With Redis down: fail_closed answers 503 problems, fail_open serves; health names it."""
    mode, server = redis_down
    with httpx.Client(base_url=server.url, timeout=15) as client:
        tenant_id = f"down-{uuid.uuid4().hex[:8]}"
        created = client.post(
            "/admin/tenants",
            headers=ADMIN,
            json={"tenant_id": tenant_id, "quota_requests_per_minute": 100},
        )
        assert created.status_code == 201  # admin routes need no quota storage
        key = {"X-API-Key": created.json()["api_key"]["key"]}
        responses: list[httpx.Response] = [
            client.get("/api/users", headers=key),
            client.post("/api/chat/completions", headers=key, json=_chat()),
            client.post(
                "/auth/token",
                json={"tenant_id": tenant_id, "email": "a@b.co", "password": "whatever"},
            ),
        ]
        health = client.get("/health")
    assert all(r.status_code < 500 or r.status_code == 503 for r in responses)
    if mode == "fail_closed":
        for response in responses:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert int(response.headers["Retry-After"]) >= 1
    else:
        assert [r.status_code for r in responses] == [200, 200, 401]
    assert health.status_code == 503
    assert health.json()["checks"] == {"database": "ok", "quota_storage": "error"}
    assert "quota_storage" in health.json()["detail"]


def _chat() -> dict[str, Any]:
    return {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
