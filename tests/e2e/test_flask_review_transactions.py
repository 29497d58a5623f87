"""Review of the Flask example: each state change is written, and audited, exactly once.

Runs on SQLite and on PostgreSQL (row-level security, the app as its own role).
"""

from __future__ import annotations

import pytest
from examples.flask_app.models import Organization, User
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tests.e2e._flask_server import PASSWORD, Served, onboard, unique
from tests.e2e.test_flask_audit_atomic import (
    assert_503,
    audit_write_fails,
    count,
    entries,
    new_key,
    platform,
    served,
)

from tenantkit._audit_model import AuditRow
from tenantkit.context import bound_tenant
from tenantkit.errors import TenantNotFound
from tenantkit.tenants import TenantRow, TenantStore
from tenantkit.types import TenantConfig
from tenantkit.usage import MAX_QUANTITY

__all__ = ["served"]  # the fixture: SQLite, and PostgreSQL with the app role


def audit_count(served: Served, org_id: str, action: str) -> int:
    query = select(func.count()).where(AuditRow.tenant_id == org_id, AuditRow.action == action)
    return count(platform(served).jobs_engine, query)


def test_revoking_a_revoked_key_again_writes_no_new_entry(served: Served) -> None:
    """Three DELETEs of one key: each 204, one api_key.revoked entry; another org's id is 404."""
    org, other = onboard(served), onboard(served)
    made = new_key(served, org)
    owner = served.client(org.token)
    path = f"/organizations/{org.id}/api-keys/{made['key_id']}"
    for _ in range(3):
        response = owner.delete(path)
        assert response.status_code == 204, response.text
    assert audit_count(served, org.id, "api_key.revoked") == 1

    foreign = served.client(other.token).delete(
        f"/organizations/{other.id}/api-keys/{made['key_id']}"
    )
    assert foreign.status_code == 404, foreign.text
    assert audit_count(served, other.id, "api_key.revoked") == 0
    assert audit_count(served, org.id, "api_key.revoked") == 1


def test_starting_mfa_enrolment_is_audited_without_the_secret(served: Served) -> None:
    """POST /auth/mfa/enroll stores a TOTP secret: one entry naming the user, never the secret."""
    org = onboard(served)
    started = served.client(org.token).post("/auth/mfa/enroll")
    assert started.status_code == 201, started.text
    secret = started.json()["secret"]
    [entry] = entries(platform(served).jobs_engine, org.id, "auth.mfa_enrollment_started")
    assert entry.actor == f"user:{org.owner_id}"
    assert (entry.resource_type, entry.resource_id) == ("user", org.owner_id)
    assert secret not in repr((entry.meta, entry.changes))


def test_mfa_enrolment_keeps_no_secret_when_the_audit_write_fails(served: Served) -> None:
    """The secret and its entry are one transaction: 503, and no secret is stored."""
    p, org = platform(served), onboard(served)
    with audit_write_fails(p, "auth.mfa_enrollment_started") as refused:
        response = served.client(org.token).post("/auth/mfa/enroll")
    assert_503(response, refused)
    with Session(p.jobs_engine) as session:
        user = session.get(User, org.owner_id)
        assert user is not None and user.totp_secret is None


def test_a_failed_onboarding_leaves_nothing_and_can_be_retried(served: Served) -> None:
    """POST /organizations is one transaction: tenant, organization, owner and entries, or none.

    The last write (the membership's audit entry) fails: 503, no tenant row,
    organization, user or audit entry, and a tenant cache that had the slug
    as unknown still has it so (a store on a clock that stands still, so the
    negative entry cannot expire). The same request then succeeds.
    """
    p = platform(served)
    slug = unique("atomic")
    email = f"owner@{slug}.example.com"
    body = {
        "name": "Atomic",
        "slug": slug,
        "owner_email": email,
        "owner_password": PASSWORD,
        "plan": "starter",
    }
    watcher = TenantStore(p.engine, clock=lambda: 0.0)
    with pytest.raises(TenantNotFound):
        watcher.get(slug)
    with audit_write_fails(p, "membership.created") as refused:
        response = served.client().post("/organizations", json=body)
    assert_503(response, refused)

    assert count(p.jobs_engine, select(func.count()).where(TenantRow.id == slug)) == 0
    assert count(p.jobs_engine, select(func.count()).where(Organization.id == slug)) == 0
    assert count(p.jobs_engine, select(func.count()).where(User.email == email)) == 0
    assert count(p.jobs_engine, select(func.count()).where(AuditRow.tenant_id == slug)) == 0
    assert watcher.peek(slug) is None
    assert not isinstance(p.kit.tenants.peek(slug), TenantConfig)

    retry = served.client().post("/organizations", json=body)
    assert retry.status_code == 201, retry.text
    assert watcher.get(slug).plan == "starter"
    owner = served.client(retry.json()["token"]["access_token"])
    assert owner.get(f"/organizations/{slug}").status_code == 200
    assert audit_count(served, slug, "organization.created") == 1


def test_usage_totals_past_a_64_bit_integer_are_reported(served: Served) -> None:
    """1,025 events of the largest quantity: /usage and the organization answer 200, exactly.

    SQLite's SUM overflowed there, and both routes answered 503 from then on.
    """
    p, org = platform(served), onboard(served, plan="pro")
    owner = served.client(org.token)
    project = owner.post(f"/organizations/{org.id}/projects", json={"name": "W", "slug": "web"})
    assert project.status_code == 201, project.text
    n = 1_025
    with bound_tenant(org.id), p.sessions() as session:
        for _ in range(n):
            p.usage.record(
                "compute", MAX_QUANTITY, project_id=project.json()["id"], session=session
            )
        session.commit()
    report = owner.get(f"/organizations/{org.id}/usage")
    assert report.status_code == 200, report.text
    assert report.json()["totals"]["compute"] == n * MAX_QUANTITY
    assert owner.get(f"/organizations/{org.id}").status_code == 200
