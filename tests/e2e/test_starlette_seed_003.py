"""Seed 003 end to end over HTTP: onboarding, login, JWT tasks with roles, background events.

Task events go through the app's outbox: the tests wait (bounded) for the
worker to report each delivery's final state through ``/tasks/{id}/events``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from _server import Server, free_port, serve_module

ADMIN_TOKEN = "e2e-admin-token-003"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JWT_SECRET = "e2e-jwt-secret-003-" + "y" * 32
PROBLEM = "application/problem+json"
WAIT_SECONDS = 20.0


def app_env(workdir: Path, **extra: str) -> dict[str, str]:
    """The environment of an app on ``workdir``'s SQLite file, with fast outbox retries."""
    return {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "JWT_SECRET": JWT_SECRET,
        "DATABASE_URL": f"sqlite:///{workdir / 'app.db'}",
        "ACCESS_TOKEN_TTL": "600",
        "LOGIN_ATTEMPTS_PER_MINUTE": "5",
        "SIGNUPS_PER_MINUTE": "1000",
        # Still argon2id, with a cheap profile: the suite hashes dozens of passwords.
        "ARGON2_MEMORY_KIB": "8192",
        "ARGON2_TIME_COST": "1",
        "OUTBOX_MAX_ATTEMPTS": "3",
        "OUTBOX_BACKOFF_SECONDS": "0.05",
        "OUTBOX_POLL_SECONDS": "0.1",
        **extra,
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory holding the app's database."""
    return tmp_path_factory.mktemp("starlette-003")


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[Server]:
    """The app as a team-task service (no trusted tenant header)."""
    with serve_module("examples.starlette_app", env=app_env(workdir), cwd=workdir) as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    """An HTTP client for the running app."""
    with httpx.Client(base_url=server.url, timeout=15) as c:
        yield c


class Hooks:
    """A webhook receiver on a free port that records what it is sent."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hooks.received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    """A running webhook receiver."""
    receiver = Hooks()
    yield receiver
    receiver.close()


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 problem document with ``status``; return it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def onboard(client: httpx.Client, name: str | None = None) -> tuple[str, dict[str, str]]:
    """Sign up a new company; return (tenant_id, its ADMIN's auth header)."""
    name = name or f"Karachi Tech {uuid.uuid4().hex[:8]}"
    response = client.post(
        "/onboarding",
        json={"tenant_name": name, "email": "ahmed@karachi.tech", "password": "s3cret-pass"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return body["tenant_id"], {"Authorization": f"Bearer {body['access_token']}"}


def add_member(
    client: httpx.Client, tenant_id: str, admin: dict[str, str], email: str, role: str = "MEMBER"
) -> dict[str, str]:
    """Add a member as ``admin`` and log them in; return their auth header."""
    added = client.post(
        "/api/members",
        headers=admin,
        json={"email": email, "name": email.split("@")[0], "password": "member-pass", "role": role},
    )
    assert added.status_code == 201, added.text
    token = client.post(
        "/auth/token", json={"tenant_id": tenant_id, "email": email, "password": "member-pass"}
    )
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def settled(client: httpx.Client, headers: dict[str, str], task_id: str, count: int) -> list[Any]:
    """Wait until ``count`` events of a task have every delivery done or dead; return them."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        events = client.get(f"/tasks/{task_id}/events", headers=headers).json()["items"]
        finished = [
            e for e in events if all(d["status"] in ("done", "dead") for d in e["deliveries"])
        ]
        if len(finished) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def test_onboarding_creates_tenant_admin_and_token(client: httpx.Client) -> None:
    """POST /onboarding makes a tenant, its ADMIN user and a working short-lived token."""
    name = f"Lahore Labs {uuid.uuid4().hex[:6]}"
    response = client.post(
        "/onboarding",
        json={"tenant_name": name, "email": "Sara@Lahore.pk", "password": "long-enough"},
    )
    assert response.status_code == 201
    body = response.json()
    assert body["tenant_id"] == name.lower().replace(" ", "-")
    assert body["user"]["role"] == "ADMIN" and body["user"]["email"] == "sara@lahore.pk"
    assert body["token_type"] == "bearer" and body["expires_in"] == 600
    claims = jwt.decode(body["access_token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["tenant_id"] == body["tenant_id"] and claims["role"] == "ADMIN"
    assert claims["exp"] - claims["iat"] == 600
    me = {"Authorization": f"Bearer {body['access_token']}"}
    assert client.get("/tasks", headers=me).json() == {"items": [], "next_cursor": None}
    again = client.post(
        "/onboarding", json={"tenant_name": name, "email": "x@lahore.pk", "password": "long-enough"}
    )
    assert_problem(again, 409)
    short = client.post("/onboarding", json={"tenant_name": "Q", "email": "nope", "password": "x"})
    assert set(assert_problem(short, 422)["fields"]) == {"email", "password"}


def test_login_checks_the_password_and_is_rate_limited(client: httpx.Client) -> None:
    """Wrong passwords and unknown tenants are 401 alike; too many attempts are 429."""
    tenant_id, _ = onboard(client)
    good = {"tenant_id": tenant_id, "email": "ahmed@karachi.tech", "password": "s3cret-pass"}
    assert client.post("/auth/token", json=good).status_code == 200
    wrong = assert_problem(client.post("/auth/token", json={**good, "password": "guess"}), 401)
    unknown = assert_problem(client.post("/auth/token", json={**good, "tenant_id": "no-such"}), 401)
    assert wrong["detail"] == unknown["detail"]
    statuses = [
        client.post("/auth/token", json={**good, "password": "guess"}).status_code for _ in range(5)
    ]
    assert statuses[-1] == 429 and statuses.count(429) >= 1
    limited = client.post("/auth/token", json=good)
    assert_problem(limited, 429)
    assert int(limited.headers["Retry-After"]) >= 1


def test_tokens_are_verified(client: httpx.Client) -> None:
    """A token signed with another key, or expired, is 401; a bare X-Tenant-ID is 401 here."""
    tenant_id, _ = onboard(client)
    forged = jwt.encode({"tenant_id": tenant_id, "sub": "x", "role": "ADMIN"}, "not-the-secret" * 4)
    assert_problem(client.get("/tasks", headers={"Authorization": f"Bearer {forged}"}), 401)
    past = int(time.time()) - 3600
    expired = jwt.encode(
        {"tenant_id": tenant_id, "sub": "x", "role": "ADMIN", "iat": past, "exp": past + 60},
        JWT_SECRET,
    )
    assert_problem(client.get("/tasks", headers={"Authorization": f"Bearer {expired}"}), 401)
    assert_problem(client.get("/api/users", headers={"X-Tenant-ID": tenant_id}), 401)


def test_roles_decide_what_members_may_do(client: httpx.Client) -> None:
    """MEMBER reads and creates, updates only own tasks, never deletes; ADMIN does everything."""
    tenant_id, admin = onboard(client)
    hassan = add_member(client, tenant_id, admin, "hassan.malik@company.pk")
    bilal = add_member(client, tenant_id, admin, "bilal@company.pk")
    assert_problem(
        client.post(
            "/api/members",
            headers=hassan,
            json={"email": "z@z.pk", "name": "Z", "password": "password1", "role": "ADMIN"},
        ),
        403,
    )
    created = client.post(
        "/tasks",
        headers=admin,
        json={
            "title": "Setup CI/CD pipeline for Lahore office",
            "description": "Configure GitHub Actions for automated deployments",
            "assigned_to": "hassan.malik@company.pk",
        },
    )
    assert created.status_code == 201
    task = created.json()
    assert task["status"] == "OPEN" and task["tenant_id"] == tenant_id
    assert task["created_at"].endswith("Z") and task["created_by"]
    task_id = task["task_id"]
    assert client.get(f"/tasks/{task_id}", headers=bilal).status_code == 200
    assert_problem(client.put(f"/tasks/{task_id}", headers=bilal, json={"status": "DONE"}), 403)
    progress = client.put(f"/tasks/{task_id}", headers=hassan, json={"status": "IN_PROGRESS"})
    assert progress.status_code == 200 and progress.json()["status"] == "IN_PROGRESS"
    own = client.post("/tasks", headers=bilal, json={"title": "Write release notes"})
    assert own.status_code == 201
    assert (
        client.put(
            f"/tasks/{own.json()['task_id']}", headers=bilal, json={"title": "Notes v2"}
        ).status_code
        == 200
    )
    assert_problem(client.delete(f"/tasks/{task_id}", headers=hassan), 403)
    listed = client.get("/tasks", headers=bilal, params={"assigned_to": "hassan.malik@company.pk"})
    assert [t["task_id"] for t in listed.json()["items"]] == [task_id]
    assert [
        t["title"]
        for t in client.get("/tasks", headers=admin, params={"status": "OPEN"}).json()["items"]
    ] == ["Notes v2"]
    bilal_id = next(
        u["id"]
        for u in client.get("/api/users", headers=admin).json()["items"]
        if u["email"] == "bilal@company.pk"
    )
    has_tasks = assert_problem(client.delete(f"/api/users/{bilal_id}", headers=admin), 409)
    assert has_tasks["reason"] == "has_tasks"
    assert client.delete(f"/tasks/{task_id}", headers=admin).status_code == 204
    assert_problem(client.get(f"/tasks/{task_id}", headers=admin), 404)
    invalid = client.post("/tasks", headers=admin, json={"title": "", "assigned_to": "nobody@x.pk"})
    assert set(assert_problem(invalid, 422)["fields"]) == {"title"}
    stranger = client.post(
        "/tasks", headers=admin, json={"title": "T", "assigned_to": "nobody@x.pk"}
    )
    assert assert_problem(stranger, 422)["fields"] == ["assigned_to"]


def test_an_api_key_is_not_a_user_for_tasks(client: httpx.Client) -> None:
    """Tasks need a user's JWT: a tenant API key is 403 there (and fine on /api/users)."""
    tenant_id, _ = onboard(client)
    key = client.post(f"/admin/tenants/{tenant_id}/api-keys", headers=ADMIN, json={}).json()["key"]
    assert_problem(client.get("/tasks", headers={"X-API-Key": key}), 403)
    users = client.get("/api/users", headers={"X-API-Key": key}).json()["items"]
    assert [u["email"] for u in users] == ["ahmed@karachi.tech"]


def test_task_events_are_handled_after_the_response(client: httpx.Client, hooks: Hooks) -> None:
    """Created/Updated/Deleted events reach analytics, notification (webhook) and audit."""
    tenant_id, admin = onboard(client)
    client.put(
        f"/admin/tenants/{tenant_id}",
        headers=ADMIN,
        json={"metadata": {"notification_webhook_url": hooks.url}},
    )
    task_id = client.post("/tasks", headers=admin, json={"title": "Quarterly report"}).json()[
        "task_id"
    ]
    client.put(f"/tasks/{task_id}", headers=admin, json={"status": "DONE"})
    client.delete(f"/tasks/{task_id}", headers=admin)
    events = settled(client, admin, task_id, 3)
    assert [e["type"] for e in events] == ["TaskCreated", "TaskUpdated", "TaskDeleted"]
    for event in events:
        assert {d["handler"]: d["status"] for d in event["deliveries"]} == {
            "analytics": "done",
            "audit": "done",
            "notification": "done",
        }
        assert all(d["attempts"] == 1 for d in event["deliveries"])
    sent = sorted(body["type"] for _, body in hooks.received)
    assert sent == ["TaskCreated", "TaskDeleted", "TaskUpdated"]
    assert {headers["Idempotency-Key"] for headers, _ in hooks.received} == {
        e["event_id"] for e in events
    }
    audit = client.get("/api/audit", headers=admin, params={"resource_type": "task"}).json()[
        "items"
    ]
    assert sorted(e["action"] for e in audit) == ["task.created", "task.deleted", "task.updated"]
    updated = next(e for e in audit if e["action"] == "task.updated")
    assert updated["changes"] == {"status": ["OPEN", "DONE"]}
    counts = client.get("/api/analytics/requests", headers=admin).json()["task_events"]
    assert counts == {"TaskCreated": 1, "TaskUpdated": 1, "TaskDeleted": 1}


def test_a_failing_handler_is_retried_then_dead_lettered(client: httpx.Client) -> None:
    """A webhook that never answers: the notification is tried 3 times, then dead; others finish."""
    tenant_id, admin = onboard(client)
    closed = f"http://127.0.0.1:{free_port()}/hook"
    client.put(
        f"/admin/tenants/{tenant_id}",
        headers=ADMIN,
        json={"metadata": {"notification_webhook_url": closed}},
    )
    task_id = client.post("/tasks", headers=admin, json={"title": "Fragile"}).json()["task_id"]
    (event,) = settled(client, admin, task_id, 1)
    deliveries = {d["handler"]: d for d in event["deliveries"]}
    assert deliveries["notification"]["status"] == "dead"
    assert deliveries["notification"]["attempts"] == 3
    assert "webhook unreachable" in deliveries["notification"]["last_error"]
    assert deliveries["analytics"]["status"] == deliveries["audit"]["status"] == "done"


def test_audit_log_is_for_admins_and_filters(client: httpx.Client) -> None:
    """GET /api/audit is ADMIN only and filters by action, actor and time."""
    tenant_id, admin = onboard(client)
    member = add_member(client, tenant_id, admin, "m@x.pk")
    assert_problem(client.get("/api/audit", headers=member), 403)
    logins = client.get("/api/audit", headers=admin, params={"action": "user.login"}).json()[
        "items"
    ]
    assert [e["actor"] for e in logins] == ["login:m@x.pk"]
    assert (
        client.get("/api/audit", headers=admin, params={"start": "2999-01-01T00:00:00Z"}).json()[
            "items"
        ]
        == []
    )
    assert_problem(client.get("/api/audit", headers=admin, params={"start": "yesterday"}), 422)


def test_pending_events_survive_a_restart(tmp_path: Path) -> None:
    """Events written by a process without a worker are handled by the next process."""
    env = app_env(tmp_path)
    no_worker = {**env, "OUTBOX_WORKER": "0"}
    with (
        serve_module("examples.starlette_app", env=no_worker, cwd=tmp_path) as first,
        httpx.Client(base_url=first.url, timeout=15) as c,
    ):
        tenant_id, admin = onboard(c)
        task_id = c.post("/tasks", headers=admin, json={"title": "Survives"}).json()["task_id"]
        (event,) = c.get(f"/tasks/{task_id}/events", headers=admin).json()["items"]
        assert {d["status"] for d in event["deliveries"]} == {"pending"}
    login = {"tenant_id": tenant_id, "email": "ahmed@karachi.tech", "password": "s3cret-pass"}
    with (
        serve_module("examples.starlette_app", env=env, cwd=tmp_path) as second,
        httpx.Client(base_url=second.url, timeout=15) as c,
    ):
        token = c.post("/auth/token", json=login).json()["access_token"]
        (event,) = settled(c, {"Authorization": f"Bearer {token}"}, task_id, 1)
        assert {d["status"] for d in event["deliveries"]} == {"done"}
