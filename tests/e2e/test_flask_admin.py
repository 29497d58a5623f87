"""Platform administration with ADMIN_TOKEN: organizations, suspension, audit retention."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e._flask_server import FakeClock, Served, make_config, onboard, serve

DAY = 86_400


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A fresh app with a 30-day audit retention, its clock starting now (audit times are real)."""
    with serve(make_config(tmp_path, audit_retention_days=30), FakeClock(time.time())) as running:
        yield running


def test_admin_routes_need_the_admin_token(served: Served) -> None:
    """No token, a user's token or a wrong one: 401 on every /admin route."""
    org = onboard(served)
    for headers in ({}, {"Authorization": f"Bearer {org.token}"}, {"Authorization": "Bearer x"}):
        client = served.client(**headers)
        assert client.get("/admin/organizations").status_code == 401
        assert client.put(f"/admin/organizations/{org.id}", json={"plan": "pro"}).status_code == 401
        assert client.post("/admin/audit/purge").status_code == 401


def test_suspending_an_organization_refuses_its_requests_at_once(served: Served) -> None:
    """Suspended: its members get 403 (reason suspended) and cannot sign in; reactivated: back."""
    org, other = onboard(served), onboard(served)
    admin = served.client(served.config.admin_token)
    listed = admin.get("/admin/organizations", params={"limit": 200}).json()["items"]
    assert {org.id, other.id} <= {t["id"] for t in listed}
    suspended = admin.put(f"/admin/organizations/{org.id}", json={"status": "suspended"})
    assert (suspended.status_code, suspended.json()["status"]) == (200, "suspended")
    refused = served.client(org.token).get(f"/organizations/{org.id}")
    assert (refused.status_code, refused.json()["reason"]) == (403, "suspended")
    sign_in = served.client().post(
        "/auth/token", json={"email": org.owner_email, "password": "correct horse battery"}
    )
    assert sign_in.status_code == 403
    assert served.client(other.token).get(f"/organizations/{other.id}").status_code == 200
    admin.put(f"/admin/organizations/{org.id}", json={"status": "active"})
    assert served.client(org.token).get(f"/organizations/{org.id}").status_code == 200
    assert admin.put("/admin/organizations/no-such-org", json={"plan": "pro"}).status_code == 404


def test_audit_retention_purges_old_entries_only(served: Served) -> None:
    """POST /admin/audit/purge drops entries past AUDIT_RETENTION_DAYS and keeps newer ones."""
    org = onboard(served)
    admin = served.client(served.config.admin_token)
    owner = served.client(org.token)
    before = owner.get(f"/organizations/{org.id}/audit").json()["items"]
    assert before
    assert admin.post("/admin/audit/purge").json()["deleted"] == 0
    served.clock.advance(31 * DAY)
    purged = admin.post("/admin/audit/purge").json()
    assert purged["deleted"] >= len(before)
    assert purged["per_tenant"][org.id] >= len(before)
