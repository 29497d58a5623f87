"""Contract review of the Starlette example: gaps found against ``API.md``, pinned over HTTP.

One app process (SQLite, in-memory counters, trusted tenant header) serves
every test here; each test makes its own tenants.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _server import Server, serve_module

ADMIN_TOKEN = "e2e-admin-review"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app trusting X-Tenant-ID, with cheap password hashing."""
    workdir: Path = tmp_path_factory.mktemp("starlette-review")
    env = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "JWT_SECRET": "e2e-jwt-secret-review-" + "r" * 32,
        "DATABASE_URL": f"sqlite:///{workdir / 'app.db'}",
        "TRUST_TENANT_HEADER": "1",
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


def new_tenant(client: httpx.Client, **fields: Any) -> str:
    """Create a tenant with a unique id; return its id."""
    tenant_id = f"r-{uuid.uuid4().hex[:12]}"
    response = client.post("/admin/tenants", headers=ADMIN, json={"tenant_id": tenant_id, **fields})
    assert response.status_code == 201, response.text
    return tenant_id


def onboard(client: httpx.Client) -> tuple[str, dict[str, str]]:
    """Sign up a company; return (tenant_id, its ADMIN's auth header)."""
    response = client.post(
        "/onboarding",
        json={
            "tenant_name": f"Review Co {uuid.uuid4().hex[:8]}",
            "email": "admin@review.co",
            "password": "review-pass",
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return body["tenant_id"], {"Authorization": f"Bearer {body['access_token']}"}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 problem document with ``status``; return it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    return body


def test_strings_with_nul_or_unpaired_surrogates_are_422_naming_the_field(
    client: httpx.Client,
) -> None:
    """A NUL or a lone UTF-16 surrogate in a JSON string is a 422 naming the field, not a 500."""
    tenant = new_tenant(client)
    headers = {"X-Tenant-ID": tenant, "Content-Type": "application/json"}
    cases = [
        ("/api/users", headers, b'{"email": "a@b.co", "name": "a\\u0000b"}', "name"),
        ("/api/users", headers, b'{"email": "a@b.co", "name": "\\ud800"}', "name"),
        ("/admin/tenants", ADMIN, b'{"tenant_id": "r-nul-x", "name": "\\udfff"}', "name"),
        (
            "/admin/tenants",
            ADMIN,
            b'{"tenant_id": "r-nul-y", "metadata": {"k": "\\u0000"}}',
            "metadata.k",
        ),
        (
            "/auth/token",
            {},
            b'{"tenant_id": "x-y", "email": "a\\u0000@b.co", "password": "p"}',
            "email",
        ),
    ]
    for path, extra, body, field in cases:
        problem = assert_problem(client.post(path, headers=extra, content=body), 422)
        assert problem["fields"] == [field], problem


def test_chat_route_lone_surrogate_is_400_from_the_policy_layer(client: httpx.Client) -> None:
    """On the chat (policy) route a lone surrogate is tenantkit's 400; a NUL is still a 422."""
    headers = {"X-Tenant-ID": new_tenant(client), "Content-Type": "application/json"}
    chat = b'{"model": "gpt-4", "messages": [{"role": "user", "content": "%s"}]}'
    surrogate = client.post("/api/chat/completions", headers=headers, content=chat % b"\\ud800")
    assert "lone surrogate" in assert_problem(surrogate, 400)["detail"]
    nul = client.post("/api/chat/completions", headers=headers, content=chat % b"a\\u0000b")
    assert assert_problem(nul, 422)["fields"] == ["messages[0].content"]


def test_query_filters_with_nul_are_422(client: httpx.Client) -> None:
    """A NUL in a free-text query filter is a 422 naming the parameter."""
    _, admin = onboard(client)
    audit = assert_problem(client.get("/api/audit", headers=admin, params={"actor": "a\0b"}), 422)
    assert audit["fields"] == ["actor"]
    tasks = client.get("/tasks", headers=admin, params={"assigned_to": "a\0b@c.de"})
    assert assert_problem(tasks, 422)["fields"] == ["assigned_to"]


def test_every_422_names_its_fields_in_errors(client: httpx.Client) -> None:
    """Every 422 has ``errors`` and ``fields``, whoever refused it (app or tenantkit)."""
    _, admin = onboard(client)
    problem = assert_problem(client.get("/api/audit?cursor=garbage", headers=admin), 422)
    assert [e["field"] for e in problem["errors"]] == ["cursor"]
    assert problem["fields"] == ["cursor"]
    tenant = new_tenant(client, allowed_tools=["search"])
    chat = {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}], "tools": "nope"}
    refused = client.post("/api/chat/completions", headers={"X-Tenant-ID": tenant}, json=chat)
    assert assert_problem(refused, 422)["fields"] == ["tools"]  # refused by tenantkit's policy


def test_a_credential_naming_another_tenant_is_403_with_a_reason(client: httpx.Client) -> None:
    """A JWT of tenant A with X-Tenant-ID: B is 403 with ``reason`` (every 403 has one)."""
    _, admin = onboard(client)
    other = new_tenant(client)
    problem = assert_problem(client.get("/api/users", headers={**admin, "X-Tenant-ID": other}), 403)
    assert problem["reason"] == "tenant_mismatch"


def test_a_refused_chat_request_spends_no_tokens(client: httpx.Client) -> None:
    """A 422 chat request charges nothing: its token reservation is returned."""
    tenant = new_tenant(client, quota_tokens_per_minute=3000)
    headers = {"X-Tenant-ID": tenant}
    for _ in range(5):  # each would reserve 1000 tokens if it were kept
        refused = client.post("/api/chat/completions", headers=headers, json={"model": "gpt-4"})
        assert_problem(refused, 422)
    ok = client.post(
        "/api/chat/completions",
        headers=headers,
        json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert ok.status_code == 200, ok.text


def test_task_events_are_a_paginated_list(client: httpx.Client) -> None:
    """GET /tasks/{id}/events honours ?limit= and ?cursor= like every list."""
    _, admin = onboard(client)
    task = client.post("/tasks", headers=admin, json={"title": "paged"}).json()["task_id"]
    for status in ("IN_PROGRESS", "DONE", "OPEN"):
        assert client.put(f"/tasks/{task}", headers=admin, json={"status": status}).is_success
    first = client.get(f"/tasks/{task}/events?limit=3", headers=admin).json()
    assert len(first["items"]) == 3 and first["next_cursor"]
    rest = client.get(
        f"/tasks/{task}/events", headers=admin, params={"limit": 3, "cursor": first["next_cursor"]}
    ).json()
    assert [e["type"] for e in first["items"] + rest["items"]] == [
        "TaskCreated",
        "TaskUpdated",
        "TaskUpdated",
        "TaskUpdated",
    ]
    assert rest["next_cursor"] is None
    for bad in ("limit=0", "limit=201", "limit=abc", "cursor=garbage"):
        assert_problem(client.get(f"/tasks/{task}/events?{bad}", headers=admin), 422)


def test_openapi_documents_the_tenant_errors_and_event_paging(client: httpx.Client) -> None:
    """Tenant routes list 400/404 (bad or unknown tenant); the events list takes limit/cursor."""
    paths = client.get("/openapi.json").json()["paths"]
    assert {"400", "404"} <= paths["/api/users"]["get"]["responses"].keys()
    assert {"400", "404"} <= paths["/tasks"]["get"]["responses"].keys()
    events = paths["/tasks/{task_id}/events"]["get"]
    assert {"limit", "cursor"} <= {p["name"] for p in events["parameters"]}
    bad_tenant = client.get("/api/users", headers={"X-Tenant-ID": "Not A Tenant"})
    assert str(bad_tenant.status_code) in paths["/api/users"]["get"]["responses"]
    unknown = client.get("/api/users", headers={"X-Tenant-ID": "no-such-tenant"})
    assert str(unknown.status_code) in paths["/api/users"]["get"]["responses"]


def test_a_path_no_route_serves_is_404_for_everyone(client: httpx.Client) -> None:
    """An unknown path is 404 with X-Request-ID, credentials or not; a 405 has X-Request-ID too."""
    tenant = new_tenant(client, quota_requests_per_minute=1000)
    for headers in ({}, {"X-Tenant-ID": tenant}, {"Authorization": "Bearer nonsense"}):
        response = client.post("/api/nope", headers={**headers, "X-Request-ID": "rid-404"})
        problem = assert_problem(response, 404)
        assert problem["instance"] == "/api/nope"
        assert response.headers["X-Request-ID"] == "rid-404"
    wrong_method = client.patch("/api/users", headers={"X-Tenant-ID": tenant, "X-Request-ID": "r5"})
    assert_problem(wrong_method, 405)
    assert wrong_method.headers["X-Request-ID"] == "r5"
    slash = client.get("/api/users/", headers={"X-Tenant-ID": tenant}, follow_redirects=True)
    assert slash.status_code == 200 and slash.json()["items"] == []


def test_a_token_outliving_its_tenant_is_401_and_leaves_no_data(client: httpx.Client) -> None:
    """A JWT of a deleted tenant is 401; neither it nor a header naming the id writes rows."""
    tenant, admin = onboard(client)
    assert client.delete(f"/admin/tenants/{tenant}", headers=ADMIN).status_code == 204
    for path in ("/tasks", "/api/users", "/api/analytics/requests"):
        assert_problem(client.get(path, headers=admin), 401)
    assert_problem(client.get("/api/users", headers={"X-Tenant-ID": tenant}), 404)
    recreated = client.post("/admin/tenants", headers=ADMIN, json={"tenant_id": tenant})
    assert recreated.status_code == 201
    report = client.get("/api/analytics/requests", headers={"X-Tenant-ID": tenant}).json()
    assert report["lifetime_requests"] == 0


def test_query_integers_take_ascii_digits_only(client: httpx.Client) -> None:
    """``?limit=²`` or ``?limit=٣`` (digits to str.isdigit, not to a client) are 422, not 500."""
    tenant = new_tenant(client)
    headers = {"X-Tenant-ID": tenant}
    for value in ("²", "٣", "1_0", " 5", "+5"):
        for path, name, extra in (
            ("/api/users", "limit", headers),
            ("/admin/tenants", "limit", ADMIN),
            ("/api/analytics/requests", "minutes", headers),
        ):
            response = client.get(path, headers=extra, params={name: value})
            assert assert_problem(response, 422)["fields"] == [name], (path, value)


def test_nan_and_infinity_are_malformed_json(client: httpx.Client) -> None:
    """NaN and Infinity are not JSON (RFC 8259): a body holding one is 400, never accepted."""
    tenant = new_tenant(client)
    headers = {"X-Tenant-ID": tenant, "Content-Type": "application/json"}
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], '
        body += b'"temperature": ' + constant + b"}"
        response = client.post("/api/chat/completions", headers=headers, content=body)
        assert "JSON" in assert_problem(response, 400)["detail"]


def test_chat_takes_openai_content_parts_and_tool_call_turns(client: httpx.Client) -> None:
    """Text content parts and an assistant tool-call turn followed by the tool's answer are 200."""
    tenant = new_tenant(client, allowed_tools=["search"])
    call = {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{}"}}
    body = {
        "model": "gpt-4",
        "tools": [{"type": "function", "function": {"name": "search"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "please search the docs"}]},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "found three pages"},
            {"role": "user", "content": "summarise them"},
        ],
    }
    response = client.post("/api/chat/completions", headers={"X-Tenant-ID": tenant}, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > 4 * len(body["messages"])
    bad_part = {**body, "messages": [{"role": "user", "content": [{"type": "text"}]}]}
    refused = client.post("/api/chat/completions", headers={"X-Tenant-ID": tenant}, json=bad_part)
    assert assert_problem(refused, 422)["fields"] == ["messages[0].content"]


def test_a_tenant_created_without_quotas_gets_the_defaults(client: httpx.Client) -> None:
    """Omitted quotas are the platform defaults, so tenant responses carry rate-limit headers."""
    tenant = new_tenant(client)
    config = client.get(f"/admin/tenants/{tenant}", headers=ADMIN).json()
    assert config["quota_requests_per_minute"] == 600
    assert config["quota_tokens_per_minute"] == 100_000
    listed = client.get("/api/users", headers={"X-Tenant-ID": tenant})
    assert listed.status_code == 200 and "tenant-requests" in listed.headers["RateLimit-Policy"]
    unlimited = new_tenant(client, quota_requests_per_minute=None, quota_tokens_per_minute=None)
    assert "RateLimit" not in client.get("/api/users", headers={"X-Tenant-ID": unlimited}).headers


def test_a_long_valid_email_can_sign_up_and_log_in(client: httpx.Client) -> None:
    """A 250-character email (valid: 64 before the @) signs up and logs in; no 422 on `actor`."""
    email = "a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".co"
    assert len(email) == 250
    name = f"Long Mail {uuid.uuid4().hex[:8]}"
    signup = client.post(
        "/onboarding", json={"tenant_name": name, "email": email, "password": "long-enough"}
    )
    assert signup.status_code == 201, signup.text
    login = client.post(
        "/auth/token",
        json={"tenant_id": signup.json()["tenant_id"], "email": email, "password": "long-enough"},
    )
    assert login.status_code == 200, login.text


def test_quota_bounds_in_openapi_are_the_stored_ones(client: httpx.Client) -> None:
    """The published maximum of a quota is what is stored (32-bit), and one past it is 422."""
    paths = client.get("/openapi.json").json()["paths"]
    schema = paths["/admin/tenants"]["post"]["requestBody"]["content"]["application/json"]
    quota = schema["schema"]["properties"]["quota_tokens_per_minute"]
    assert quota["maximum"] == 2**31 - 1
    ok = new_tenant(client, quota_tokens_per_minute=quota["maximum"])
    assert client.get(f"/admin/tenants/{ok}", headers=ADMIN).json()["quota_tokens_per_minute"] == (
        2**31 - 1
    )
    over = client.post(
        "/admin/tenants",
        headers=ADMIN,
        json={"tenant_id": f"r-{uuid.uuid4().hex[:8]}", "quota_tokens_per_minute": 2**31},
    )
    assert assert_problem(over, 422)["fields"] == ["quota_tokens_per_minute"]


def test_audit_time_filters_are_rfc_3339_and_never_overflow(client: httpx.Client) -> None:
    """Audit start/end take RFC 3339 only; extreme offsets and calendar errors are 422, not 500."""
    _, admin = onboard(client)
    for query in (
        "start=9999-12-31T23:59:59-23:59",
        "end=0001-01-01T00:00:00%2B23:59",
        "start=20240115T100000Z",
        "start=2024-01-15",
        "start=2024-02-30T00:00:00Z",
        "start=2024-01-15T10:00:00%2B99:00",
    ):
        field = query.split("=")[0]
        response = client.get(f"/api/audit?{query}", headers=admin)
        assert assert_problem(response, 422)["fields"] == [field], query
    for query in ("start=2024-01-15T10:00:00Z", "start=2024-01-15t10:00:00.123456789%2B05:30"):
        assert client.get(f"/api/audit?{query}", headers=admin).status_code == 200, query


def test_a_deleted_member_can_no_longer_change_tasks(client: httpx.Client) -> None:
    """A removed MEMBER's still-valid token cannot update the task assigned to them (403)."""
    tenant, admin = onboard(client)
    email = f"m-{uuid.uuid4().hex[:6]}@review.co"
    added = client.post(
        "/api/members",
        headers=admin,
        json={"email": email, "name": "M", "password": "member-pass", "role": "MEMBER"},
    )
    assert added.status_code == 201, added.text
    login = {"tenant_id": tenant, "email": email, "password": "member-pass"}
    member = {
        "Authorization": f"Bearer {client.post('/auth/token', json=login).json()['access_token']}"
    }
    task = client.post("/tasks", headers=admin, json={"title": "t", "assigned_to": email}).json()
    assert client.put(
        f"/tasks/{task['task_id']}", headers=member, json={"status": "DONE"}
    ).is_success
    assert client.delete(f"/api/users/{added.json()['id']}", headers=admin).status_code == 204
    refused = client.put(f"/tasks/{task['task_id']}", headers=member, json={"status": "OPEN"})
    assert assert_problem(refused, 403)["reason"] == "user_deleted"
