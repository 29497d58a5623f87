"""Review of the Flask example's audit trail: organization-level changes leave an entry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e._flask_server import FakeClock, Served, make_config, onboard, serve


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A fresh app per test."""
    with serve(make_config(tmp_path), FakeClock()) as running:
        yield running


def entries(served: Served, org_id: str, token: str, action: str) -> list[dict]:
    """Return the organization's audit entries of ``action``, newest first."""
    found = served.client(token).get(f"/organizations/{org_id}/audit", params={"action": action})
    assert found.status_code == 200, found.text
    items: list[dict] = found.json()["items"]
    return items


def test_a_plan_change_by_the_owner_is_audited(served: Served) -> None:
    """PUT /organizations/{id}/plan leaves an entry naming the owner and both plans."""
    org = onboard(served, plan="starter")
    changed = served.client(org.token).put(f"/organizations/{org.id}/plan", json={"plan": "pro"})
    assert changed.status_code == 200, changed.text

    [entry] = entries(served, org.id, org.token, "organization.plan_changed")
    assert entry["actor"] == f"user:{org.owner_id}"
    assert entry["resource_type"] == "organization" and entry["resource_id"] == org.id
    assert entry["changes"] == {"plan": ["starter", "pro"]}


def test_a_plan_refused_by_the_limits_leaves_no_entry(served: Served) -> None:
    """A downgrade the projects do not fit is a 402 and writes nothing to the audit log."""
    org = onboard(served, plan="starter")
    owner = served.client(org.token)
    for slug in ("p-one", "p-two"):
        made = owner.post(f"/organizations/{org.id}/projects", json={"name": slug, "slug": slug})
        assert made.status_code == 201, made.text
    refused = owner.put(f"/organizations/{org.id}/plan", json={"plan": "free"})
    assert refused.status_code == 402
    assert entries(served, org.id, org.token, "organization.plan_changed") == []


def test_platform_admin_changes_are_audited_in_the_organization(served: Served) -> None:
    """Suspending, reactivating and re-planning by the platform admin each leave an entry."""
    org = onboard(served, plan="starter")
    admin = served.client(served.config.admin_token)
    path = f"/admin/organizations/{org.id}"
    assert admin.put(path, json={"status": "suspended"}).status_code == 200
    assert admin.put(path, json={"status": "active", "plan": "pro"}).status_code == 200

    status = entries(served, org.id, org.token, "organization.status_changed")
    plans = entries(served, org.id, org.token, "organization.plan_changed")
    assert [e["changes"] for e in status] == [
        {"status": ["suspended", "active"]},
        {"status": ["active", "suspended"]},
    ]
    assert [e["changes"] for e in plans] == [{"plan": ["starter", "pro"]}]
    assert {e["actor"] for e in status + plans} == {"platform:admin"}
