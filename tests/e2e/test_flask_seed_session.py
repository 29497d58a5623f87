"""The seed's API session, end to end, against ``python -m examples.flask_app`` over HTTP.

From onboarding an organization to the usage report and an audit query,
exactly as docs/flask-example.md walks through it with curl.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from tests.e2e._server import Server, serve_module, start_module

ORG = "acme-corp"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app as a user runs it: a subprocess configured by its environment."""
    workdir: Path = tmp_path_factory.mktemp("flask-seed")
    env = {
        "DATABASE_URL": f"sqlite:///{workdir / 'platform.db'}",
        "FAST_PASSWORD_HASHING": "1",
        "ADMIN_TOKEN": "",
        "JWT_SECRET": "",
    }
    with serve_module("examples.flask_app", env=env, cwd=workdir) as running:
        yield running


def test_start_prints_generated_secrets_and_serves_health(server: Server) -> None:
    """Unset secrets are generated and printed once; /health reports both checks ok."""
    output = server.output()
    assert output.count("generated JWT_SECRET=") == 1
    assert output.count("generated ADMIN_TOKEN=") == 1
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "checks": {"database": "ok", "quota_storage": "ok"}}
    assert health.headers["X-Request-ID"]
    assert httpx.get(server.url + "/").json()["links"]["openapi"] == "/openapi.json"


def test_seed_session_from_organization_to_usage_report_and_audit(server: Server) -> None:
    """Onboard, configure, invite, project, API key, usage (idempotent), report, audit."""
    api = httpx.Client(base_url=server.url, timeout=30.0)
    created = api.post(
        "/organizations",
        json={
            "name": "Acme Corp",
            "slug": ORG,
            "owner_email": "admin@acme.com",
            "owner_password": PASSWORD,
            "plan": "starter",
        },
    )
    assert created.status_code == 201, created.text
    owner_id = created.json()["owner"]["id"]
    signed_in = api.post("/auth/token", json={"email": "admin@acme.com", "password": PASSWORD})
    assert signed_in.status_code == 200
    assert signed_in.json()["org_id"] == ORG
    api.headers["Authorization"] = "Bearer " + signed_in.json()["access_token"]

    org = api.get(f"/organizations/{ORG}")
    assert org.status_code == 200
    assert org.json()["plan"] == "starter"
    assert org.json()["limits"] == {
        "users": 10,
        "projects": 5,
        "api_calls": 100_000,
        "storage_gb": 10,
    }
    assert "RateLimit" in org.headers

    settings = api.put(
        f"/organizations/{ORG}/settings",
        json={"require_mfa": True, "allowed_domains": ["acme.com"], "session_timeout": 60},
    )
    assert settings.json() == {
        "require_mfa": True,
        "allowed_domains": ["acme.com"],
        "session_timeout": 60,
    }

    project = api.post(
        f"/organizations/{ORG}/projects",
        json={
            "name": "Mobile App",
            "slug": "mobile-app",
            "type": "mobile",
            "environment": "production",
            "team": [{"user_id": owner_id, "role": "lead"}],
        },
    )
    assert project.status_code == 201, project.text
    project_id = project.json()["id"]

    outsider = api.post(
        f"/organizations/{ORG}/invitations",
        json={"email": "user@example.com", "role": "member"},
    )
    assert outsider.status_code == 422
    assert outsider.json()["field"] == "email"
    invitation = api.post(
        f"/organizations/{ORG}/invitations",
        json={"email": "user@acme.com", "role": "member", "projects": [project_id]},
    )
    assert invitation.status_code == 201, invitation.text
    accepted = httpx.post(
        f"{server.url}/invitations/{invitation.json()['token']}/accept",
        json={"name": "Jane", "password": PASSWORD},
    )
    assert accepted.status_code == 200, accepted.text
    user_id = accepted.json()["membership"]["user_id"]

    members = api.get(f"/organizations/{ORG}/users", params={"project_id": project_id}).json()
    assert [m["user_id"] for m in members["items"]] == [user_id]
    version = members["items"][0]["version"]
    promoted = api.put(
        f"/organizations/{ORG}/users/{user_id}",
        json={"role": "admin", "projects": [project_id], "version": version},
    )
    assert promoted.status_code == 200
    assert (promoted.json()["role"], promoted.json()["version"]) == ("admin", version + 1)

    key = api.post(
        f"/organizations/{ORG}/api-keys",
        json={
            "name": "Production API Key",
            "project_id": project_id,
            "scopes": ["read:resources", "write:resources"],
            "rate_limit": 1000,
        },
    )
    assert key.status_code == 201
    secret = key.json()["key"]
    assert secret.startswith(key.json()["key_prefix"])
    listed = api.get(f"/organizations/{ORG}/api-keys").json()["items"]
    assert [k["key_id"] for k in listed] == [key.json()["key_id"]]
    assert "key" not in listed[0]

    usage = {
        "project_id": project_id,
        "type": "api_call",
        "quantity": 1000,
        "metadata": {"endpoint": "/api/v1/process", "status_code": "200"},
        "idempotency_key": "batch-2024-01-15-001",
    }
    first = httpx.post(
        f"{server.url}/organizations/{ORG}/resources", json=usage, headers={"X-API-Key": secret}
    )
    again = httpx.post(
        f"{server.url}/organizations/{ORG}/resources", json=usage, headers={"X-API-Key": secret}
    )
    assert first.status_code == again.status_code == 201, first.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"

    with_usage = api.get(f"/organizations/{ORG}/projects/{project_id}?include=resources")
    assert with_usage.json()["resources"]["usage"] == {"api_calls": 1000}
    cycle = datetime.now(UTC).strftime("%Y-%m")
    report = api.get(f"/organizations/{ORG}/usage", params={"billing_cycle": cycle}).json()
    assert report["totals"] == {"api_calls": 1000}
    assert report["by_project"] == [{"project_id": project_id, "totals": {"api_calls": 1000}}]
    assert (report["overage"], report["amount"]) == ({}, "29.00")

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    audit = api.get(
        f"/organizations/{ORG}/audit", params={"start_date": today, "end_date": today}
    ).json()
    actions = {entry["action"] for entry in audit["items"]}
    assert {"organization.created", "project.created", "membership.updated"} <= actions
    assert {"api_key.created", "resource.recorded", "auth.login"} <= actions
    mine = api.get(f"/organizations/{ORG}/audit", params={"user_id": user_id}).json()["items"]
    assert mine and all(entry["actor"] == f"user:{user_id}" for entry in mine)

    billing = api.get(f"/billing/{ORG}").json()
    assert (billing["plan"], billing["amount_due"]) == ("starter", "29.00")

    revoked = api.delete(f"/organizations/{ORG}/api-keys/{key.json()['key_id']}")
    assert revoked.status_code == 204
    refused = httpx.post(
        f"{server.url}/organizations/{ORG}/resources", json=usage, headers={"X-API-Key": secret}
    )
    assert refused.status_code == 401
    api.close()


def test_the_server_stops_cleanly_on_a_signal(tmp_path: Path) -> None:
    """SIGINT (like SIGTERM) closes the listener, finishes requests and exits 0."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'stop.db'}", "FAST_PASSWORD_HASHING": "1"}
    server = start_module("examples.flask_app", env=env, cwd=tmp_path)
    try:
        assert httpx.get(server.url + "/health").status_code == 200
    finally:
        code = server.stop()
        output = server.output()
        server.log_path.unlink(missing_ok=True)
    assert code == 0, output
    assert "shutting down" in output
