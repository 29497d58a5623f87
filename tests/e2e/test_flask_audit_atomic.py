"""Flask example: a change made through a tenantkit store and its audit entry are one transaction.

The audit insert of the change is made to fail (the database refuses it, as
in an outage midway); the route answers 503 and nothing of the change is
kept: no key, no revocation, no usage event, no plan or status change, no
cache entry changed. The Stripe-driven plan and status changes are audited
the same way. Runs on SQLite and on PostgreSQL (row-level security, the app
as its own role).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from examples.flask_app.context import Platform
from examples.flask_app.org_changes import follow_stripe
from sqlalchemy import event, func, select
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session, sessionmaker
from tests.e2e._flask_server import (
    FakeClock,
    Org,
    Served,
    make_config,
    onboard,
    serve,
    serve_on_postgres,
)

from tenantkit._audit_model import AuditRow
from tenantkit.apikeys import APIKeyRow
from tenantkit.tenants import TenantRow
from tenantkit.usage import UsageEvent


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """A fresh app per test, on SQLite or on PostgreSQL with row-level security."""
    if request.param == "sqlite":
        with serve(make_config(tmp_path), FakeClock()) as running:
            yield running
        return
    postgres_url: URL = request.getfixturevalue("postgres_url")
    with serve_on_postgres(postgres_url, tmp_path) as running:
        yield running


def platform(served: Served) -> Platform:
    found: Platform = served.app.extensions["flask_app"]
    return found


@contextmanager
def audit_write_fails(platform: Platform, action: str) -> Iterator[list[str]]:
    """Make inserts of ``action`` into the audit log fail as database errors, on every engine."""
    refused: list[str] = []
    engines = {id(e): e for e in (platform.engine, platform.jobs_engine)}.values()

    def refuse(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO TENANTKIT_AUDIT_LOG") and (
            action in repr(parameters)
        ):
            refused.append(statement)
            raise conn.dialect.loaded_dbapi.OperationalError("injected: audit write failed")

    for engine in engines:
        event.listen(engine, "before_cursor_execute", refuse)
    try:
        yield refused
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", refuse)


def count(engine: Engine, query: Any) -> int:
    with Session(engine) as session:
        return int(session.scalar(query) or 0)


def entries(engine: Engine, org_id: str, action: str) -> list[AuditRow]:
    with Session(engine) as session:
        query = select(AuditRow).where(AuditRow.tenant_id == org_id, AuditRow.action == action)
        return list(session.scalars(query))


def assert_503(response: Any, refused: list[str]) -> None:
    assert refused, "the audit write was never attempted"
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def new_key(served: Served, org: Org, **fields: Any) -> dict[str, Any]:
    made = served.client(org.token).post(
        f"/organizations/{org.id}/api-keys", json={"name": "k", "scopes": [], **fields}
    )
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


def test_create_key_keeps_no_key_when_the_audit_write_fails(served: Served) -> None:
    """POST /api-keys: no key row is left behind."""
    p, org = platform(served), onboard(served)
    with audit_write_fails(p, "api_key.created") as refused:
        response = served.client(org.token).post(
            f"/organizations/{org.id}/api-keys", json={"name": "k", "scopes": []}
        )
    assert_503(response, refused)
    assert count(p.jobs_engine, select(func.count()).where(APIKeyRow.tenant_id == org.id)) == 0


def test_revoke_key_keeps_the_key_when_the_audit_write_fails(served: Served) -> None:
    """DELETE /api-keys/{id}: the key is not revoked and still verifies from the cache."""
    p, org = platform(served), onboard(served)
    made = new_key(served, org)
    assert p.kit.api_keys is not None
    record = p.kit.api_keys.verify(made["key"])
    with audit_write_fails(p, "api_key.revoked") as refused:
        response = served.client(org.token).delete(
            f"/organizations/{org.id}/api-keys/{made['key_id']}"
        )
    assert_503(response, refused)
    assert p.kit.api_keys.peek(made["key"]) == record
    revoked = select(func.count()).where(
        APIKeyRow.id == made["key_id"], APIKeyRow.revoked_at.is_not(None)
    )
    assert count(p.jobs_engine, revoked) == 0


def test_recorded_usage_is_not_kept_when_the_audit_write_fails(served: Served) -> None:
    """POST /resources: no usage event; a retry with the same key then records it once."""
    p, org = platform(served), onboard(served, plan="pro")
    project = served.client(org.token).post(
        f"/organizations/{org.id}/projects", json={"name": "Web", "slug": "web"}
    )
    assert project.status_code == 201, project.text
    key = new_key(served, org, scopes=["write:resources"])["key"]
    usage = {
        "project_id": project.json()["id"],
        "type": "compute",
        "quantity": 3,
        "idempotency_key": "once",
    }
    with_key = served.client(**{"X-API-Key": key})
    with audit_write_fails(p, "resource.recorded") as refused:
        response = with_key.post(f"/organizations/{org.id}/resources", json=usage)
    assert_503(response, refused)
    events = select(func.count()).where(UsageEvent.tenant_id == org.id)
    assert count(p.jobs_engine, events) == 0
    retry = with_key.post(f"/organizations/{org.id}/resources", json=usage)
    assert retry.status_code == 201, retry.text
    assert retry.json()["duplicate"] is False
    assert count(p.jobs_engine, events) == 1


def test_plan_change_is_not_kept_when_the_audit_write_fails(served: Served) -> None:
    """PUT /organizations/{id}/plan: the plan, version and cached config stay as they were."""
    p, org = platform(served), onboard(served, plan="starter")
    cached = p.kit.tenants.get(org.id)
    with audit_write_fails(p, "organization.plan_changed") as refused:
        response = served.client(org.token).put(
            f"/organizations/{org.id}/plan", json={"plan": "pro"}
        )
    assert_503(response, refused)
    assert p.kit.tenants.peek(org.id) is cached
    with Session(p.jobs_engine) as session:
        row = session.get(TenantRow, org.id)
        assert row is not None and (row.plan, row.version) == ("starter", cached.version)


def test_admin_suspension_is_not_kept_when_the_audit_write_fails(served: Served) -> None:
    """PUT /admin/organizations/{id}: the organization stays active and keeps working."""
    p, org = platform(served), onboard(served)
    admin = served.client(served.config.admin_token)
    with audit_write_fails(p, "organization.status_changed") as refused:
        response = admin.put(f"/admin/organizations/{org.id}", json={"status": "suspended"})
    assert_503(response, refused)
    assert served.client(org.token).get(f"/organizations/{org.id}").status_code == 200
    with Session(p.jobs_engine) as session:
        row = session.get(TenantRow, org.id)
        assert row is not None and row.status == "active"


def test_stripe_driven_changes_are_audited_with_the_change(served: Served) -> None:
    """A plan or status Stripe reports is changed and audited together, or not at all."""
    p, org = platform(served), onboard(served, plan="starter")
    jobs = sessionmaker(p.jobs_engine, expire_on_commit=False)
    before = p.kit.tenants.get(org.id)
    with (
        audit_write_fails(p, "organization.status_changed") as refused,
        pytest.raises(Exception, match="injected"),
    ):
        follow_stripe(jobs, p.kit.tenants, org.id, status="suspended")
    assert refused
    assert p.kit.tenants.get(org.id).status == "active"
    assert p.kit.tenants.get(org.id).version == before.version

    follow_stripe(jobs, p.kit.tenants, org.id, plan="pro", status="suspended")
    after = p.kit.tenants.get(org.id)
    assert (after.plan, after.status) == ("pro", "suspended")
    [plan] = entries(p.jobs_engine, org.id, "organization.plan_changed")
    [status] = entries(p.jobs_engine, org.id, "organization.status_changed")
    assert plan.changes == {"plan": ["starter", "pro"]}
    assert status.changes == {"status": ["active", "suspended"]}
    assert plan.actor == status.actor == "stripe"
