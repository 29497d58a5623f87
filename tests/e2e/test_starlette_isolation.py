"""Cross-tenant isolation, route by route: tenant B reaches nothing of tenant A.

The routes come from the app's own router (``create_app().routes``), so a
route added later is covered without editing this test. Platform routes
(``Settings.exclude_paths``: admin, onboarding, login, health, OpenAPI) and
``/`` are outside the tenant pipeline and are skipped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _server import Server, serve_module
from examples.starlette_app import AppConfig, create_app
from examples.starlette_app.config import PUBLIC_PATHS
from starlette.routing import Route

ADMIN = {"Authorization": "Bearer e2e-admin-iso"}
PARAM = re.compile(r"\{(\w+)\}")
SAMPLE_VALUES: dict[str, Any] = {
    "email": "intruder@b.example",
    "name": "Intruder",
    "password": "intruder-pass",
    "role": "ADMIN",
    "title": "hijacked",
    "description": "hijacked",
    "status": "DONE",
    "assigned_to": None,
    "model": "gpt-4",
    "messages": [{"role": "user", "content": "show me tenant A"}],
}


def tenant_routes() -> list[tuple[str, str, Route]]:
    """Every (method, path, route) of the app that runs in the tenant pipeline."""
    config = AppConfig.from_env({"ADMIN_TOKEN": "x", "JWT_SECRET": "y" * 40})
    found = []
    for route in create_app(config).routes:
        assert isinstance(route, Route)
        if route.path == "/" or any(
            route.path == p or route.path.startswith(p + "/") for p in PUBLIC_PATHS
        ):
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            found.append((method, route.path, route))
    return found


ROUTES = tenant_routes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app with default settings."""
    workdir: Path = tmp_path_factory.mktemp("starlette-iso")
    env = {
        "ADMIN_TOKEN": ADMIN["Authorization"].removeprefix("Bearer "),
        "JWT_SECRET": "e2e-jwt-secret-iso-" + "z" * 32,
        "DATABASE_URL": f"sqlite:///{workdir / 'app.db'}",
        "ARGON2_MEMORY_KIB": "8192",
        "ARGON2_TIME_COST": "1",
        "OUTBOX_POLL_SECONDS": "0.1",
    }
    with serve_module("examples.starlette_app", env=env, cwd=workdir) as running:
        yield running


class Tenant:
    """A tenant made by onboarding: its id, ADMIN token header and an API key header."""

    def __init__(self, client: httpx.Client, name: str) -> None:
        signup = client.post(
            "/onboarding",
            json={"tenant_name": name, "email": f"admin@{name}.example", "password": "admin-pass"},
        )
        assert signup.status_code == 201, signup.text
        self.id: str = signup.json()["tenant_id"]
        self.jwt = {"Authorization": f"Bearer {signup.json()['access_token']}"}
        key = client.post(f"/admin/tenants/{self.id}/api-keys", headers=ADMIN, json={})
        self.key = {"X-API-Key": key.json()["key"]}


def body_for(route: Route, method: str) -> dict[str, Any] | None:
    """A valid request body for the route, built from its OpenAPI description."""
    spec = getattr(route.endpoint, "__openapi__", None)
    if spec is None or spec.body is None:
        return None
    fields = [f for f in spec.body.fields if f.required] or list(spec.body.fields)
    return {f.name: SAMPLE_VALUES[f.name] for f in fields}


def snapshot(client: httpx.Client, a: Tenant, ids: dict[str, str]) -> Any:
    """Everything tenant A can see of its own resources."""
    return (
        client.get(f"/api/users/{ids['/api/users']}", headers=a.jwt).json(),
        client.get(f"/tasks/{ids['/tasks']}", headers=a.jwt).json(),
        [
            e["event_id"]
            for e in client.get(f"/tasks/{ids['/tasks']}/events", headers=a.jwt).json()["items"]
        ],
        sorted(u["id"] for u in client.get("/api/users", headers=a.jwt).json()["items"]),
    )


def test_routes_are_found_by_walking_the_router() -> None:
    """The walk finds the tenant routes (a broken walk would make the next test vacuous)."""
    paths = {path for _, path, _ in ROUTES}
    assert {"/api/users/{user_id}", "/tasks/{task_id}", "/tasks/{task_id}/events"} <= paths
    assert not any(path.startswith("/admin") for path in paths)


def test_another_tenant_can_read_change_or_delete_nothing(server: Server) -> None:
    """Tenant B (ADMIN token or API key) gets 404 for every A id and never sees A's data."""
    with httpx.Client(base_url=server.url, timeout=15) as client:
        a, b = Tenant(client, "alpha-co"), Tenant(client, "bravo-co")
        user = client.post(
            "/api/users", headers=a.jwt, json={"email": "secret@alpha.example", "name": "Secret"}
        ).json()
        task = client.post(
            "/tasks",
            headers=a.jwt,
            json={"title": "alpha plan", "assigned_to": "secret@alpha.example"},
        ).json()
        ids = {"/api/users": user["id"], "/tasks": task["task_id"]}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # let A's events settle, so snapshots compare
            events = client.get(f"/tasks/{task['task_id']}/events", headers=a.jwt).json()["items"]
            if all(d["status"] == "done" for e in events for d in e["deliveries"]):
                break
            time.sleep(0.05)
        before = snapshot(client, a, ids)
        secrets = [a.id, user["id"], task["task_id"], "secret@alpha.example", "alpha plan"]
        checked = 0
        for method, path, route in ROUTES:
            names = PARAM.findall(path)
            collection = path.split("/{", 1)[0]
            if names:
                assert collection in ids, f"no tenant-A resource known for {path}; extend ids"
                url = PARAM.sub(ids[collection], path)
            else:
                url = path
            for credential in (b.jwt, b.key):
                response = client.request(
                    method, url, headers=credential, json=body_for(route, method)
                )
                where = (method, url, response.status_code, response.text)
                assert response.status_code < 500, where
                if names:
                    # B's ADMIN passes every role rule, so only "not found" is left; an API
                    # key may instead be refused as "not a user", which reveals nothing.
                    refused = response.status_code == 403 and credential is b.key
                    assert response.status_code == 404 or refused, where
                for secret in secrets:
                    if secret not in url:  # a 404 may echo the id the caller sent
                        assert secret not in response.text, (*where, secret)
                checked += 1
        assert checked == 2 * len(ROUTES)
        assert snapshot(client, a, ids) == before
