"""Seed 002 end to end over HTTP: the AI-platform gateway on Starlette.

Tenants with request and token quotas and model/tool allow-lists, scoped
users, per-tenant analytics. The app runs as ``python -m examples.starlette_app``
behind uvicorn, with ``TRUST_TENANT_HEADER=1`` as in the seed's curl session.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _server import Server, serve_module

ADMIN_TOKEN = "e2e-admin-token-002"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app on SQLite and in-memory counters, trusting X-Tenant-ID (the seed's demo mode)."""
    workdir: Path = tmp_path_factory.mktemp("starlette-002")
    env = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "JWT_SECRET": "e2e-jwt-secret-002-" + "x" * 32,
        "DATABASE_URL": f"sqlite:///{workdir / 'app.db'}",
        "TRUST_TENANT_HEADER": "1",
        "MAX_BODY_BYTES": "65536",
    }
    with serve_module("examples.starlette_app", env=env, cwd=workdir) as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    """An HTTP client for the running app."""
    with httpx.Client(base_url=server.url, timeout=15) as c:
        yield c


def new_tenant(client: httpx.Client, **fields: Any) -> tuple[str, str]:
    """Create a tenant with a unique id; return (tenant_id, api_key)."""
    tenant_id = f"t-{uuid.uuid4().hex[:12]}"
    response = client.post("/admin/tenants", headers=ADMIN, json={"tenant_id": tenant_id, **fields})
    assert response.status_code == 201, response.text
    return tenant_id, response.json()["api_key"]["key"]


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 problem document with ``status``; return it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    return body


def chat(model: str = "gpt-4", text: str = "hello there", **extra: Any) -> dict[str, Any]:
    """Return an OpenAI-shaped chat request body."""
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def test_admin_routes_need_the_admin_token(client: httpx.Client) -> None:
    """Every admin route answers 401 without, or with a wrong, admin token."""
    assert_problem(client.get("/admin/tenants"), 401)
    assert_problem(client.get("/admin/tenants", headers={"Authorization": "Bearer nope"}), 401)
    assert_problem(client.post("/admin/tenants", json={"tenant_id": "acme-corp"}), 401)
    assert client.get("/admin/tenants", headers=ADMIN).status_code == 200


def test_tenant_creation_shows_the_key_once_and_refuses_duplicates(client: httpx.Client) -> None:
    """POST /admin/tenants returns the tenant and its key once; a second POST is 409."""
    tenant_id = f"acme-{uuid.uuid4().hex[:8]}"
    body = {
        "tenant_id": tenant_id,
        "quota_requests_per_minute": 100,
        "quota_tokens_per_minute": 10000,
        "allowed_models": ["gpt-4", "gpt-3.5-turbo"],
        "allowed_tools": ["search", "calculator"],
        "metadata": {"company": "Acme Corporation", "plan": "enterprise"},
    }
    created = client.post("/admin/tenants", headers=ADMIN, json=body)
    assert created.status_code == 201
    tenant = created.json()
    assert tenant["id"] == tenant_id
    assert tenant["allowed_models"] == ["gpt-4", "gpt-3.5-turbo"]
    assert tenant["api_key"]["key"].startswith("tk_live_")
    assert tenant["api_key"]["key"].startswith(tenant["api_key"]["key_prefix"])
    fetched = client.get(f"/admin/tenants/{tenant_id}", headers=ADMIN).json()
    assert "api_key" not in fetched and fetched["metadata"]["company"] == "Acme Corporation"
    keys = client.get(f"/admin/tenants/{tenant_id}/api-keys", headers=ADMIN).json()["items"]
    assert [k["id"] for k in keys] == [tenant["api_key"]["key_id"]]
    assert all("key" not in k for k in keys)
    assert_problem(client.post("/admin/tenants", headers=ADMIN, json=body), 409)


def test_invalid_tenant_fields_are_named(client: httpx.Client) -> None:
    """A 422 names every bad field; malformed JSON is 400; an over-limit body is 413."""
    bad = {"tenant_id": "Not_Valid", "quota_requests_per_minute": -1, "allowed_models": "gpt-4"}
    problem = assert_problem(client.post("/admin/tenants", headers=ADMIN, json=bad), 422)
    assert set(problem["fields"]) == {"tenant_id", "quota_requests_per_minute", "allowed_models"}
    assert_problem(client.post("/admin/tenants", headers=ADMIN, content=b'{"tenant_id": '), 400)
    huge = b'{"tenant_id": "' + b"a" * 70_000 + b'"}'
    assert_problem(client.post("/admin/tenants", headers=ADMIN, content=huge), 413)


def test_users_are_scoped_to_their_tenant(client: httpx.Client) -> None:
    """Each tenant lists only its users; another tenant's user id is 404 (seed's isolation)."""
    enterprise, _ = new_tenant(client, quota_requests_per_minute=1000)
    starter, _ = new_tenant(client, quota_requests_per_minute=1000)
    alice = client.post(
        "/api/users",
        headers={"X-Tenant-ID": enterprise},
        json={"email": "alice@enterprise.com", "name": "Alice"},
    )
    bob = client.post(
        "/api/users",
        headers={"X-Tenant-ID": starter},
        json={"email": "bob@starter.com", "name": "Bob"},
    )
    assert alice.status_code == bob.status_code == 201
    listed = client.get("/api/users", headers={"X-Tenant-ID": enterprise}).json()
    assert [u["email"] for u in listed["items"]] == ["alice@enterprise.com"]
    assert listed["next_cursor"] is None
    alice_id = alice.json()["id"]
    assert_problem(client.get(f"/api/users/{alice_id}", headers={"X-Tenant-ID": starter}), 404)
    assert_problem(client.delete(f"/api/users/{alice_id}", headers={"X-Tenant-ID": starter}), 404)
    again = client.get(f"/api/users/{alice_id}", headers={"X-Tenant-ID": enterprise})
    assert again.status_code == 200 and again.json()["name"] == "Alice"
    duplicate = client.post(
        "/api/users",
        headers={"X-Tenant-ID": enterprise},
        json={"email": "ALICE@enterprise.com", "name": "Alice again"},
    )
    assert_problem(duplicate, 409)
    assert (
        client.delete(f"/api/users/{alice_id}", headers={"X-Tenant-ID": enterprise}).status_code
        == 204
    )
    assert_problem(client.get(f"/api/users/{alice_id}", headers={"X-Tenant-ID": enterprise}), 404)


def test_users_list_is_paginated_with_a_cursor(client: httpx.Client) -> None:
    """?limit pages the list and next_cursor walks it to the end without repeats."""
    _, key = new_tenant(client, quota_requests_per_minute=1000)
    headers = {"X-API-Key": key}
    for i in range(5):
        client.post("/api/users", headers=headers, json={"email": f"u{i}@x.io", "name": f"U{i}"})
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/api/users", headers=headers, params=params).json()
        seen += [u["email"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"u{i}@x.io" for i in range(5)]
    assert_problem(client.get("/api/users", headers=headers, params={"limit": 500}), 422)
    assert_problem(client.get("/api/users", headers=headers, params={"cursor": "zz"}), 422)


def test_request_quota_gives_429_with_retry_after(client: httpx.Client) -> None:
    """Past quota_requests_per_minute the tenant gets 429 with Retry-After (seed: 10/min)."""
    tenant, _ = new_tenant(client, quota_requests_per_minute=10, quota_tokens_per_minute=1000)
    statuses = []
    for _ in range(15):
        response = client.get("/api/users", headers={"X-Tenant-ID": tenant})
        statuses.append(response.status_code)
        assert "ratelimit-policy" in response.headers
    assert statuses == [200] * 10 + [429] * 5
    problem = assert_problem(response, 429)
    assert int(response.headers["Retry-After"]) >= 1
    assert problem["reason"] == "quota_exceeded" and problem["limit"] == "tenant-requests"


def test_disallowed_model_or_tool_is_403_with_the_reason(client: httpx.Client) -> None:
    """A model or tool outside the allow-lists is 403 naming the reason, and audited."""
    tenant, key = new_tenant(client, allowed_models=["gpt-4"], allowed_tools=["search"])
    key_id = client.get(f"/admin/tenants/{tenant}/api-keys", headers=ADMIN).json()["items"][0]["id"]
    headers = {"Authorization": f"Bearer {key}"}
    model = assert_problem(
        client.post("/api/chat/completions", headers=headers, json=chat("gpt-5")), 403
    )
    assert model["reason"] == "model_not_allowed"
    tool = assert_problem(
        client.post("/api/chat/completions", headers=headers, json=chat(tools=["shell"])), 403
    )
    assert tool["reason"] == "tool_not_allowed"
    ok = client.post("/api/chat/completions", headers=headers, json=chat(tools=["search"]))
    assert ok.status_code == 200
    trail = client.get("/api/audit", headers=headers, params={"action": "policy.denied"}).json()
    assert [e["metadata"]["reason"] for e in trail["items"]] == [
        "tool_not_allowed",
        "model_not_allowed",
    ]
    assert {e["actor"] for e in trail["items"]} == {f"api_key:{key_id}"}


def test_completion_is_deterministic_and_its_tokens_are_charged(client: httpx.Client) -> None:
    """Completions repeat exactly, report usage, and spend the token quota until a 429."""
    _, key = new_tenant(client, quota_requests_per_minute=1000, quota_tokens_per_minute=400)
    headers = {"X-API-Key": key}
    body = chat(text="Summarise the quarterly numbers for the board", max_tokens=40)
    first = client.post("/api/chat/completions", headers=headers, json=body)
    second = client.post("/api/chat/completions", headers=headers, json=body)
    assert first.status_code == second.status_code == 200
    assert first.json()["choices"] == second.json()["choices"]
    usage = first.json()["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    remaining = [first, second]
    while remaining[-1].status_code == 200 and len(remaining) < 50:
        remaining.append(client.post("/api/chat/completions", headers=headers, json=body))
    spent = sum(r.json()["usage"]["total_tokens"] for r in remaining if r.status_code == 200)
    problem = assert_problem(remaining[-1], 429)
    assert problem["limit"] == "tenant-tokens" and "Retry-After" in remaining[-1].headers
    # Within the minute's 400 (one more request's worth may have refilled meanwhile).
    assert 400 - usage["total_tokens"] * 2 < spent <= 400 + usage["total_tokens"]


def test_analytics_report_the_tenants_own_requests(client: httpx.Client) -> None:
    """Analytics count routes, statuses, quota and policy rejections and tokens of one tenant."""
    tenant, key = new_tenant(
        client,
        quota_requests_per_minute=4,
        quota_tokens_per_minute=100000,
        allowed_models=["gpt-4"],
    )
    other, _ = new_tenant(client, quota_requests_per_minute=1000)
    headers = {"X-API-Key": key}
    client.get("/api/users", headers={"X-Tenant-ID": other})
    tokens = client.post("/api/chat/completions", headers=headers, json=chat()).json()["usage"]
    client.post("/api/chat/completions", headers=headers, json=chat("gpt-5"))  # policy 403
    client.post("/api/users", headers=headers, json={"email": "a@b.co", "name": "A"})
    client.get("/api/users", headers=headers)
    client.get("/api/users", headers=headers)
    client.get("/api/users", headers=headers)  # the 5th admission: over quota, 429
    limited = client.get("/api/analytics/requests", headers={"X-Tenant-ID": tenant})
    assert_problem(limited, 429)
    # Lifting the quota (not raising it: a raised one admits only after a refill at the new
    # rate, which would make this timing-dependent) lets the next request read the report.
    lifted = {"quota_requests_per_minute": None}
    assert client.put(f"/admin/tenants/{tenant}", headers=ADMIN, json=lifted).status_code == 200
    report = client.get("/api/analytics/requests", headers=headers).json()
    assert report["tenant_id"] == tenant
    assert report["total_requests"] == 7
    assert report["rejections"] == {"quota": 2, "policy": 1}
    assert report["by_route"]["GET /api/users"] == 3
    assert report["by_route"]["POST /api/chat/completions"] == 2
    assert report["by_status"] == {"200": 3, "201": 1, "403": 1, "429": 2}
    assert report["tokens_used"] == tokens["total_tokens"]
    assert sum(m["requests"] for m in report["per_minute"]) == 7


def test_tenant_changes_take_effect_on_the_next_request(client: httpx.Client) -> None:
    """PUT /admin/tenants/{id} applies on the next request and lands in the tenant's audit log."""
    tenant, key = new_tenant(client, allowed_models=["gpt-4"])
    headers = {"X-API-Key": key}
    assert_problem(client.post("/api/chat/completions", headers=headers, json=chat("claude")), 403)
    updated = client.put(
        f"/admin/tenants/{tenant}", headers=ADMIN, json={"allowed_models": ["gpt-4", "claude"]}
    )
    assert updated.status_code == 200 and updated.json()["version"] == 2
    assert (
        client.post("/api/chat/completions", headers=headers, json=chat("claude")).status_code
        == 200
    )
    client.put(f"/admin/tenants/{tenant}", headers=ADMIN, json={"status": "suspended"})
    suspended = assert_problem(client.get("/api/users", headers=headers), 403)
    assert suspended["reason"] == "suspended"
    stale = client.put(
        f"/admin/tenants/{tenant}", headers=ADMIN, json={"plan": "pro", "version": 1}
    )
    assert_problem(stale, 409)


def test_a_revoked_key_stops_working_at_once(client: httpx.Client) -> None:
    """DELETE .../api-keys/{key_id} makes the key 401 on the next request; other keys go on."""
    tenant, first = new_tenant(client)
    issued = client.post(f"/admin/tenants/{tenant}/api-keys", headers=ADMIN, json={"name": "ci"})
    assert issued.status_code == 201
    second = issued.json()
    assert client.get("/api/users", headers={"X-API-Key": second["key"]}).status_code == 200
    revoked = client.delete(f"/admin/tenants/{tenant}/api-keys/{second['key_id']}", headers=ADMIN)
    assert revoked.status_code == 204
    assert_problem(client.get("/api/users", headers={"X-API-Key": second["key"]}), 401)
    assert client.get("/api/users", headers={"X-API-Key": first}).status_code == 200


def test_deleting_a_tenant_removes_its_data_and_keys(client: httpx.Client) -> None:
    """DELETE /admin/tenants/{id} is 204; its keys, users and config are gone."""
    tenant, key = new_tenant(client)
    client.post("/api/users", headers={"X-API-Key": key}, json={"email": "x@y.zz", "name": "X"})
    assert client.delete(f"/admin/tenants/{tenant}", headers=ADMIN).status_code == 204
    assert_problem(client.get("/api/users", headers={"X-API-Key": key}), 401)
    assert_problem(client.get(f"/admin/tenants/{tenant}", headers=ADMIN), 404)
    assert_problem(client.get("/api/users", headers={"X-Tenant-ID": tenant}), 404)
    recreated = client.post("/admin/tenants", headers=ADMIN, json={"tenant_id": tenant})
    assert recreated.status_code == 201
    fresh = {"X-API-Key": recreated.json()["api_key"]["key"]}
    assert client.get("/api/users", headers=fresh).json()["items"] == []


def test_a_credential_naming_another_tenant_is_403(client: httpx.Client) -> None:
    """An API key of tenant A with X-Tenant-ID: B is 403, never B's data."""
    _, key = new_tenant(client)
    other, _ = new_tenant(client)
    problem = assert_problem(
        client.get("/api/users", headers={"X-API-Key": key, "X-Tenant-ID": other}), 403
    )
    assert problem["type"].endswith("tenant-mismatch")


def test_public_routes_and_request_ids(client: httpx.Client) -> None:
    """/, /health and /openapi.json are public; every response echoes X-Request-ID."""
    index = client.get("/", headers={"X-Request-ID": "req-123"})
    assert index.status_code == 200 and index.json()["links"]["openapi"] == "/openapi.json"
    assert index.headers["X-Request-ID"] == "req-123"
    health = client.get("/health")
    assert health.json() == {"status": "ok", "checks": {"database": "ok", "quota_storage": "ok"}}
    assert client.get("/openapi.json").json()["openapi"].startswith("3.")
    for response in (
        client.get("/api/users", headers={"X-Request-ID": "req-456"}),
        client.get("/admin/tenants", headers={"X-Request-ID": "req-456"}),
    ):
        assert response.headers["X-Request-ID"] == "req-456"
    assert client.get("/health").headers["X-Request-ID"]
    assert_problem(client.get("/api/users"), 401)


def test_unset_secrets_are_generated_and_printed_once(tmp_path: Path) -> None:
    """Without ADMIN_TOKEN and JWT_SECRET the app prints generated ones once, and they work."""
    env = {"ADMIN_TOKEN": "", "JWT_SECRET": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}"}
    with serve_module("examples.starlette_app", env=env, cwd=tmp_path) as running:
        lines = [line for line in running.output().splitlines() if "was not set" in line]
        assert [line.split()[0] for line in lines] == ["ADMIN_TOKEN", "JWT_SECRET"]
        token = lines[0].rsplit(" ", 1)[1]
        listed = httpx.get(
            running.url + "/admin/tenants", headers={"Authorization": f"Bearer {token}"}
        )
        assert listed.status_code == 200
