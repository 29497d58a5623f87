"""Plan limits (402 with the upgrade), rate limits (429, Retry-After), scopes, bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e._flask_server import Org, Served, add_member, make_config, onboard, serve, unique

MINUTE = 60


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One app for the tests that do not move the clock."""
    with serve(make_config(tmp_path_factory.mktemp("limits"))) as running:
        yield running


def project(served: Served, org: Org) -> str:
    """Create a project in ``org`` and return its id."""
    response = served.client(org.token).post(
        f"/organizations/{org.id}/projects", json={"name": "P", "slug": unique("p")}
    )
    assert response.status_code == 201, response.text
    project_id: str = response.json()["id"]
    return project_id


def api_key(served: Served, org: Org, **fields: object) -> str:
    """Issue an API key in ``org`` and return it."""
    body = {"name": "k", "scopes": ["write:resources"], **fields}
    response = served.client(org.token).post(f"/organizations/{org.id}/api-keys", json=body)
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


def test_the_free_plan_limits_projects_and_seats_with_402(served: Served) -> None:
    """A second project or a fourth seat on Free: 402 naming the limit and the upgrade."""
    org = onboard(served, plan="free")
    owner = served.client(org.token)
    project(served, org)
    refused = owner.post(f"/organizations/{org.id}/projects", json={"name": "Q", "slug": "q-q"})
    assert refused.status_code == 402
    assert refused.json()["limit"] == 1
    assert refused.json()["upgrade_to"] == "starter"
    add_member(served, org)
    add_member(served, org)  # owner + 2 = the 3 seats of Free
    seat = owner.post(f"/organizations/{org.id}/invitations", json={"email": "four@x.example"})
    assert seat.status_code == 402
    assert (seat.json()["resource"], seat.json()["limit"]) == ("users", 3)
    assert seat.json()["upgrade_to"] == "starter"


def test_upgrading_lifts_the_limit_and_a_downgrade_that_does_not_fit_is_402(
    served: Served,
) -> None:
    """Owner upgrades to Starter: a second project fits; back to Free does not fit: 402."""
    org = onboard(served, plan="free")
    owner = served.client(org.token)
    project(served, org)
    member = served.client(add_member(served, org, "admin"))
    assert member.put(f"/organizations/{org.id}/plan", json={"plan": "pro"}).status_code == 403
    upgraded = owner.put(f"/organizations/{org.id}/plan", json={"plan": "starter"})
    assert upgraded.status_code == 200
    assert (upgraded.json()["plan"], upgraded.json()["limits"]["projects"]) == ("starter", 5)
    project(served, org)
    downgrade = owner.put(f"/organizations/{org.id}/plan", json={"plan": "free"})
    assert downgrade.status_code == 402
    assert downgrade.json()["resource"] == "projects"
    assert owner.get(f"/organizations/{org.id}").json()["plan"] == "starter"


def test_the_free_plans_hard_api_call_cap_is_402_and_retries_still_answer(
    served: Served,
) -> None:
    """10K API calls fit Free; one more is 402; a retry of a recorded event still answers."""
    org = onboard(served, plan="free")
    project_id = project(served, org)
    client = served.client(**{"X-API-Key": api_key(served, org)})
    path = f"/organizations/{org.id}/resources"
    full = {"project_id": project_id, "type": "api_calls", "quantity": 10_000}
    assert client.post(path, json={**full, "idempotency_key": "all"}).status_code == 201
    over = client.post(path, json={**full, "quantity": 1})
    assert over.status_code == 402
    assert (over.json()["limit"], over.json()["upgrade_to"]) == (10_000, "starter")
    replay = client.post(path, json={**full, "idempotency_key": "all"})
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    storage = {"project_id": project_id, "type": "storage_gb", "quantity": 2}
    assert client.post(path, json=storage).status_code == 402
    report = served.client(org.token).get(f"/organizations/{org.id}/usage").json()
    assert report["totals"] == {"api_calls": 10_000}


def test_starter_bills_api_calls_past_the_allowance_as_overage(served: Served) -> None:
    """Starter's cap is soft: calls past 100K are recorded and priced per started 1K."""
    org = onboard(served, plan="starter")
    project_id = project(served, org)
    client = served.client(**{"X-API-Key": api_key(served, org)})
    body = {"project_id": project_id, "type": "api_call", "quantity": 101_500}
    assert client.post(f"/organizations/{org.id}/resources", json=body).status_code == 201
    report = served.client(org.token).get(f"/organizations/{org.id}/usage").json()
    assert report["overage"] == {"api_calls": 1_500}
    assert (report["overage_amount"], report["amount"]) == ("1.00", "30.00")


def test_usage_needs_the_write_scope_and_a_key_bound_to_a_project_stays_there(
    served: Served,
) -> None:
    """Without write:resources: 403 (scope); a project-bound key elsewhere: 403 (project)."""
    org = onboard(served)
    first, second = project(served, org), project(served, org)
    read_only = served.client(**{"X-API-Key": api_key(served, org, scopes=["read:resources"])})
    body = {"project_id": first, "type": "api_calls", "quantity": 1}
    refused = read_only.post(f"/organizations/{org.id}/resources", json=body)
    assert (refused.status_code, refused.json()["reason"]) == (403, "scope")
    bound = served.client(**{"X-API-Key": api_key(served, org, project_id=first)})
    assert bound.post(f"/organizations/{org.id}/resources", json=body).status_code == 201
    elsewhere = bound.post(
        f"/organizations/{org.id}/resources", json={**body, "project_id": second}
    )
    assert (elsewhere.status_code, elsewhere.json()["reason"]) == (403, "project")


def test_an_idempotency_key_names_one_event_for_good(served: Served) -> None:
    """Same key, same event: counted once (body field or header); other quantity: 409."""
    org = onboard(served)
    project_id = project(served, org)
    client = served.client(**{"X-API-Key": api_key(served, org)})
    path = f"/organizations/{org.id}/resources"
    body = {"project_id": project_id, "type": "api_calls", "quantity": 7}
    headers = {"Idempotency-Key": "job-42"}
    first = client.post(path, json=body, headers=headers)
    second = client.post(path, json={**body, "idempotency_key": "job-42"})
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    changed = client.post(path, json={**body, "quantity": 8}, headers=headers)
    assert changed.status_code == 409
    report = served.client(org.token).get(f"/organizations/{org.id}/usage").json()
    assert report["totals"] == {"api_calls": 7}


def test_bad_input_is_a_problem_document_never_a_500(served: Served) -> None:
    """Malformed JSON 400, invalid fields 422 naming each, unknown route 404, huge body 413."""
    org = onboard(served)
    owner = served.client(org.token)
    path = f"/organizations/{org.id}/projects"
    malformed = owner.post(path, content=b"{not json", headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.headers["Content-Type"] == "application/problem+json"
    invalid = owner.post(path, json={"name": "", "slug": "Bad Slug", "type": "fax", "extra": 1})
    assert invalid.status_code == 422
    named = {e["field"] for e in invalid.json()["errors"]}
    assert named == {"name", "slug", "type", "extra"}
    assert owner.post(path, json=[1, 2]).status_code == 422
    assert owner.get(f"/organizations/{org.id}/nothing-here").status_code == 404
    assert owner.delete(path).status_code == 405
    huge = owner.post(path, content=b"x" * (served.config.max_body_bytes + 1))
    assert huge.status_code == 413
    bad_cursor = owner.get(path, params={"cursor": "!!!", "limit": "0"})
    assert bad_cursor.status_code == 422
    for edge in ("9999-12-31", "0001-01-01T00:00:00+01:00", "2024-02-30"):
        audit = owner.get(f"/organizations/{org.id}/audit", params={"end_date": edge})
        assert (audit.status_code, audit.json()["field"]) == (422, "end_date")


def test_per_key_and_per_organization_rate_limits_give_429_with_retry_after(
    tmp_path: Path,
) -> None:
    """A key's own limit and the organization's: 429 with Retry-After, admitted again later."""
    with serve(make_config(tmp_path, default_rate_limit=8)) as served:
        org = onboard(served)
        project_id = project(served, org)  # request 1 of the organization's 8
        key = api_key(served, org, rate_limit=2)  # 2
        client = served.client(**{"X-API-Key": key})
        body = {"project_id": project_id, "type": "api_calls", "quantity": 1}
        path = f"/organizations/{org.id}/resources"
        assert [client.post(path, json=body).status_code for _ in range(2)] == [201, 201]  # 4
        limited = client.post(path, json=body)
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert "RateLimit" in limited.headers
        owner = served.client(org.token)
        statuses = [owner.get(f"/organizations/{org.id}").status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 200, 429]
        refused = owner.get(f"/organizations/{org.id}")
        assert refused.status_code == 429
        assert refused.headers["Content-Type"] == "application/problem+json"
        other = onboard(served)  # another organization has its own budget
        assert served.client(other.token).get(f"/organizations/{other.id}").status_code == 200
        served.clock.advance(MINUTE)
        assert owner.get(f"/organizations/{org.id}").status_code == 200
        assert client.post(path, json=body).status_code == 201


def test_a_quota_storage_outage_is_a_503_naming_the_check(tmp_path: Path) -> None:
    """Redis down: /health is 503 naming quota_storage; organization routes 503, never 500."""
    config = make_config(tmp_path, quota_storage_uri="redis://127.0.0.1:1/0")
    with serve(config) as served:
        health = served.client().get("/health")
        assert health.status_code == 503
        assert health.json()["checks"] == {"database": "ok", "quota_storage": "error"}
        org = onboard(served)  # onboarding needs no counter
        refused = served.client(org.token).get(f"/organizations/{org.id}")
        assert refused.status_code == 503
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert "Retry-After" in refused.headers
