"""Review of the Flask example's membership rules: plan seats, owners and the audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from examples.flask_app.routes import users as users_routes
from tests.e2e._flask_server import FakeClock, Served, add_member, make_config, onboard, serve


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A fresh app per test."""
    with serve(make_config(tmp_path), FakeClock()) as running:
        yield running


def member_of(served: Served, org_id: str, token: str, email_part: str) -> dict:
    """Return the member whose email contains ``email_part``, as the owner lists it."""
    items = served.client(token).get(f"/organizations/{org_id}/users").json()["items"]
    found: dict = next(m for m in items if email_part in m["email"])
    return found


def test_reactivating_a_member_past_the_plan_seats_is_402(served: Served) -> None:
    """A suspended member frees a seat; taking it back when the plan is full is a 402."""
    org = onboard(served, plan="free")  # 3 seats
    owner = served.client(org.token)
    add_member(served, org, email=f"first@{org.id}.example.com")
    add_member(served, org, email=f"second@{org.id}.example.com")
    first = member_of(served, org.id, org.token, "first@")
    path = f"/organizations/{org.id}/users/{first['user_id']}"
    suspended = owner.put(path, json={"status": "suspended", "version": first["version"]})
    assert suspended.status_code == 200, suspended.text
    add_member(served, org, email=f"third@{org.id}.example.com")  # takes the freed seat

    back = owner.put(path, json={"status": "active", "version": suspended.json()["version"]})

    assert back.status_code == 402, back.text
    assert back.headers["content-type"] == "application/problem+json"
    assert back.json()["limit"] == 3 and back.json()["upgrade_to"] == "starter"
    usage = owner.get(f"/organizations/{org.id}").json()["usage"]
    assert usage["users"] == 3
    assert member_of(served, org.id, org.token, "first@")["status"] == "suspended"


def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each owner demotes the other; both read "two owners" first: one wins, the other is 409."""
    org = onboard(served, plan="pro")
    second_token = add_member(served, org, role="admin", email=f"second@{org.id}.example.com")
    second = member_of(served, org.id, org.token, "second@")
    promoted = served.client(org.token).put(
        f"/organizations/{org.id}/users/{second['user_id']}",
        json={"role": "owner", "version": second["version"]},
    )
    assert promoted.status_code == 200, promoted.text
    first = member_of(served, org.id, org.token, "owner@")
    counted = users_routes._active_owners
    inner: list[int] = []

    def count_then_let_the_other_in(session: Any) -> int:
        # The first request has counted two owners; the second one runs to completion
        # before the first writes: the interleaving of two simultaneous requests.
        owners = counted(session)
        if not inner:
            inner.append(0)
            response = served.client(second_token).put(
                f"/organizations/{org.id}/users/{first['user_id']}",
                json={"role": "admin", "version": first["version"]},
            )
            inner[0] = response.status_code
        return owners

    monkeypatch.setattr(users_routes, "_active_owners", count_then_let_the_other_in)
    outer = served.client(org.token).put(
        f"/organizations/{org.id}/users/{second['user_id']}",
        json={"role": "admin", "version": promoted.json()["version"]},
    )

    assert sorted([inner[0], outer.status_code]) == [200, 409], outer.text
    roles = {
        m["email"]: m["role"]
        for m in served.client(second_token).get(f"/organizations/{org.id}/users").json()["items"]
    }
    assert sorted(roles.values()) == ["admin", "owner"]


def test_owner_id_follows_the_owners(served: Served) -> None:
    """Once the first owner is demoted or removed, owner_id names an owner who still is one."""
    org = onboard(served, plan="pro")
    second_token = add_member(served, org, role="admin", email=f"second@{org.id}.example.com")
    third_token = add_member(served, org, role="admin", email=f"third@{org.id}.example.com")
    second, third = (member_of(served, org.id, org.token, f"{n}@") for n in ("second", "third"))
    owner = served.client(org.token)
    for member in (second, third):
        promoted = owner.put(
            f"/organizations/{org.id}/users/{member['user_id']}",
            json={"role": "owner", "version": member["version"]},
        )
        assert promoted.status_code == 200, promoted.text
    first = member_of(served, org.id, org.token, "owner@")

    demoted = served.client(second_token).put(
        f"/organizations/{org.id}/users/{org.owner_id}",
        json={"role": "member", "version": first["version"]},
    )
    assert demoted.status_code == 200, demoted.text
    now_owner = served.client(second_token).get(f"/organizations/{org.id}").json()["owner_id"]
    assert now_owner in {second["user_id"], third["user_id"]}

    removed = served.client(third_token).delete(f"/organizations/{org.id}/users/{now_owner}")
    assert removed.status_code == 204, removed.text
    after = served.client(third_token).get(f"/organizations/{org.id}").json()["owner_id"]
    assert after == third["user_id"]
