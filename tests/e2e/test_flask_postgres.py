"""The production path: ``python -m examples.flask_app`` on PostgreSQL (with RLS) and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from tests.e2e._server import Server, serve_module

from tenantkit.rls import drop_app_role

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
PASSWORD = "correct horse battery"


@dataclass
class Production:
    """The running app, the database it owns and the role it runs as."""

    server: Server
    url: URL
    role: str
    redis_url: str
    redis_prefix: str


@pytest.fixture
def production(
    postgres_url: URL, redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[Production]:
    """Serve the app on PostgreSQL and Redis; drop its database role afterwards."""
    role = f"tk_flask_{uuid.uuid4().hex[:10]}"
    env = {
        "DATABASE_URL": postgres_url.render_as_string(hide_password=False),
        "DATABASE_APP_ROLE": role,
        "QUOTA_STORAGE_URI": redis_url,
        "QUOTA_KEY_PREFIX": redis_prefix,
        "FAST_PASSWORD_HASHING": "1",
    }
    try:
        with serve_module("examples.flask_app", env=env, cwd=tmp_path) as server:
            yield Production(server, postgres_url, role, redis_url, redis_prefix)
    finally:
        owner = create_engine(postgres_url)
        with owner.begin() as conn:
            # The role's grants live on the shared tables; the tables stay for other tests.
            drop_app_role(conn, role)
        owner.dispose()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{redis_prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def onboard(api: httpx.Client, slug: str) -> tuple[str, str]:
    """Onboard ``slug``; return the owner's token and a new project's id."""
    created = api.post(
        "/organizations",
        json={
            "name": slug,
            "slug": slug,
            "owner_email": f"owner@{slug}.example.com",
            "owner_password": PASSWORD,
            "plan": "pro",
        },
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]["access_token"]
    project = api.post(
        f"/organizations/{slug}/projects",
        json={"name": "P", "slug": "p-main"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert project.status_code == 201, project.text
    return token, project.json()["id"]


def test_postgres_with_row_level_security_and_redis_counters(production: Production) -> None:
    """Health ok on both; the app's role sees one organization's rows; Redis rate-limits keys."""
    api = httpx.Client(base_url=production.server.url, timeout=30.0)
    health = api.get("/health").json()
    assert health == {"status": "ok", "checks": {"database": "ok", "quota_storage": "ok"}}
    a, b = f"pg-{uuid.uuid4().hex[:8]}", f"pg-{uuid.uuid4().hex[:8]}"
    token_a, project_a = onboard(api, a)
    token_b, _ = onboard(api, b)
    assert (
        api.get(f"/organizations/{a}", headers={"Authorization": f"Bearer {token_b}"}).status_code
        == 404
    )

    as_role = create_engine(production.url.set(username=production.role, password=None))
    with as_role.begin() as conn:
        unscoped = conn.execute(text("SELECT count(*) FROM app_projects")).scalar_one()
        conn.execute(text("SELECT set_config('app.tenant_id', :t, true)"), {"t": a})
        scoped = conn.execute(text("SELECT tenant_id, id FROM app_projects")).all()
        roles = conn.execute(
            text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        ).one()
    as_role.dispose()
    assert unscoped == 0  # no tenant in the transaction: no rows, not all rows
    assert scoped == [(a, project_a)]
    assert tuple(roles) == (False, False)

    owner_a = {"Authorization": f"Bearer {token_a}"}
    key = api.post(
        f"/organizations/{a}/api-keys",
        json={"name": "one a minute", "rate_limit": 1},
        headers=owner_a,
    ).json()["key"]
    usage = {"project_id": project_a, "type": "api_calls", "quantity": 5}
    first = api.post(f"/organizations/{a}/resources", json=usage, headers={"X-API-Key": key})
    second = api.post(f"/organizations/{a}/resources", json=usage, headers={"X-API-Key": key})
    assert first.status_code == 201, first.text
    assert second.status_code == 429
    assert int(second.headers["Retry-After"]) >= 1
    counters = redis.Redis.from_url(production.redis_url)
    assert list(counters.scan_iter(match=f"{production.redis_prefix}*"))
    counters.close()
    report = api.get(f"/organizations/{a}/usage", headers=owner_a).json()
    assert report["totals"] == {"api_calls": 5}
    api.close()
