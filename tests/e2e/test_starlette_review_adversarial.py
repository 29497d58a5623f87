"""Adversarial review of the Starlette example: isolation and audit defects, pinned over HTTP.

One app process (SQLite, in-memory counters, credentials required) serves
every test here; each test makes its own tenants with unique ids.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from _server import Server, serve_module

ADMIN_TOKEN = "e2e-admin-adversarial"
JWT_SECRET = "e2e-jwt-secret-adversarial-" + "a" * 32
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app with cheap password hashing and no trusted tenant header."""
    workdir: Path = tmp_path_factory.mktemp("starlette-adversarial")
    env = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "JWT_SECRET": JWT_SECRET,
        "DATABASE_URL": f"sqlite:///{workdir / 'app.db'}",
        "ARGON2_MEMORY_KIB": "8192",
        "ARGON2_TIME_COST": "1",
        "SIGNUPS_PER_MINUTE": "1000",
        "OUTBOX_POLL_SECONDS": "0.1",
    }
    with serve_module("examples.starlette_app", env=env, cwd=workdir) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    """One keep-alive client for the module."""
    with httpx.Client(base_url=server.url, timeout=15) as c:
        yield c


def signup(client: httpx.Client, tenant_id: str, email: str) -> dict[str, str]:
    """Sign up ``tenant_id`` with an ADMIN ``email``; return that ADMIN's auth header."""
    response = client.post(
        "/onboarding",
        json={
            "tenant_name": f"Adversarial {tenant_id}",
            "tenant_id": tenant_id,
            "email": email,
            "password": "adversarial-pass",
        },
    )
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 problem document with ``status``; return it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    return body


def test_recreated_tenant_does_not_read_the_deleted_tenants_audit_trail(
    client: httpx.Client,
) -> None:
    """Whoever signs up under a deleted tenant's id sees none of that tenant's audit entries."""
    tenant_id = f"adv-{uuid.uuid4().hex[:10]}"
    first = signup(client, tenant_id, "ceo@first.example")
    task = client.post("/tasks", headers=first, json={"title": "first tenant's secret"})
    assert task.status_code == 201, task.text
    assert client.delete(f"/admin/tenants/{tenant_id}", headers=ADMIN).status_code == 204

    second = signup(client, tenant_id, "owner@second.example")
    response = client.get("/api/audit", headers=second, params={"limit": 200})
    assert response.status_code == 200, response.text
    entries = response.json()["items"]
    assert entries, "the second tenant's own signup is audited"
    assert "first.example" not in response.text
    assert all(e["action"] not in ("task.created", "tenant.deleted") for e in entries)
    assert {e["actor"] for e in entries} == {"signup:owner@second.example"}


def test_token_of_a_deleted_tenant_does_not_open_its_recreated_namesake(
    client: httpx.Client,
) -> None:
    """An ADMIN token minted before a tenant id was re-created is 401 on every tenant route."""
    tenant_id = f"adv-{uuid.uuid4().hex[:10]}"
    signup(client, tenant_id, "ceo@first.example")
    assert client.delete(f"/admin/tenants/{tenant_id}", headers=ADMIN).status_code == 204
    # A token of the first tenant's ADMIN, signed as the app signs them, issued a minute ago.
    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "tenant_id": tenant_id, "role": "ADMIN"}
    old = jwt.encode({**claims, "iat": now - 60, "exp": now + 600}, JWT_SECRET, "HS256")
    stale = {"Authorization": f"Bearer {old}"}
    second = signup(client, tenant_id, "owner@second.example")
    created = client.post("/tasks", headers=second, json={"title": "second tenant's own"})
    assert created.status_code == 201, created.text

    for path in ("/tasks", "/api/users", "/api/audit", "/api/analytics/requests"):
        refused = client.get(path, headers=stale)
        assert_problem(refused, 401)
        assert "invalid_token" in refused.headers["WWW-Authenticate"]
        assert refused.headers["X-Request-ID"]
    assert_problem(client.get(f"/tasks/{created.json()['task_id']}", headers=stale), 401)
    analytics = client.get("/api/analytics/requests", headers=second).json()
    assert "401" not in analytics["by_status"]  # not logged as the new tenant's request


def test_tenant_update_names_the_version_field_it_was_given(client: httpx.Client) -> None:
    """A version past the stored integer range is a 422 naming ``version``, the body's field."""
    tenant_id = f"adv-{uuid.uuid4().hex[:10]}"
    assert client.post("/admin/tenants", headers=ADMIN, json={"tenant_id": tenant_id}).is_success
    response = client.put(
        f"/admin/tenants/{tenant_id}", headers=ADMIN, json={"version": 2**40, "name": "x"}
    )
    assert assert_problem(response, 422)["fields"] == ["version"]
    assert client.get(f"/admin/tenants/{tenant_id}", headers=ADMIN).json()["name"] == tenant_id


def test_tenant_update_audits_the_stored_values_not_a_cached_copy(tmp_path: Path) -> None:
    """Two processes: a change's audit entry has the stored before-value, not a stale cached one."""
    env = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "JWT_SECRET": JWT_SECRET,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}",
        "CACHE_TTL_SECONDS": "3600",  # only the other process's write makes the copy stale
    }
    tenant_id = f"adv-{uuid.uuid4().hex[:10]}"
    with (
        serve_module("examples.starlette_app", env=env, cwd=tmp_path) as first,
        serve_module("examples.starlette_app", env=env, cwd=tmp_path) as second,
        httpx.Client(base_url=first.url, timeout=15) as one,
        httpx.Client(base_url=second.url, timeout=15) as two,
    ):
        created = one.post("/admin/tenants", headers=ADMIN, json={"tenant_id": tenant_id})
        assert created.status_code == 201, created.text
        key = {"X-API-Key": created.json()["api_key"]["key"]}
        assert one.get(f"/admin/tenants/{tenant_id}", headers=ADMIN).json()["plan"] == "free"
        to_pro = two.put(f"/admin/tenants/{tenant_id}", headers=ADMIN, json={"plan": "pro"})
        assert to_pro.status_code == 200, to_pro.text
        back = one.put(f"/admin/tenants/{tenant_id}", headers=ADMIN, json={"plan": "free"})
        assert (back.status_code, back.json()["plan"], back.json()["version"]) == (200, "free", 3)

        entries = one.get("/api/audit", headers=key, params={"action": "tenant.updated"})
        changes = [e["changes"] for e in entries.json()["items"]]
    assert changes == [{"plan": ["pro", "free"]}, {"plan": ["free", "pro"]}]


def test_a_newline_after_the_chat_path_does_not_skip_the_policy(client: httpx.Client) -> None:
    """``POST /api/chat/completions%0A`` over uvicorn is denied by the policy like the route."""
    tenant_id = f"nl-{uuid.uuid4().hex[:10]}"
    created = client.post(
        "/admin/tenants",
        headers=ADMIN,
        json={"tenant_id": tenant_id, "allowed_models": ["gpt-4o-mini"], "allowed_tools": []},
    )
    assert created.status_code == 201, created.text
    key = {"Authorization": f"Bearer {created.json()['api_key']['key']}"}
    body = {"model": "not-allowed", "messages": [{"role": "user", "content": "hi"}]}
    denied = client.post("/api/chat/completions", headers=key, json=body)
    assert assert_problem(denied, 403)["reason"] == "model_not_allowed"
    for suffix in ("%0A", "%0a"):
        response = client.post("/api/chat/completions" + suffix, headers=key, json=body)
        assert assert_problem(response, 403)["reason"] == "model_not_allowed"
