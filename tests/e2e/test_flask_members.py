"""Members over HTTP: several organizations per user, invitations, locking, sessions and MFA."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from examples.flask_app.security import TOTP, TOTP_PERIOD
from tests.e2e._flask_server import (
    PASSWORD,
    FakeClock,
    Served,
    add_member,
    make_config,
    onboard,
    serve,
    unique,
)

DAY = 86_400


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A fresh app per test: these tests move its clock."""
    with serve(make_config(tmp_path), FakeClock()) as running:
        yield running


def sign_in(served: Served, email: str, org_id: str | None = None, **extra: str) -> dict:
    """Sign in and return the response body (asserting success)."""
    body = {"email": email, "password": PASSWORD, **extra}
    if org_id is not None:
        body["org_id"] = org_id
    response = served.client().post("/auth/token", json=body)
    assert response.status_code == 200, response.text
    result: dict = response.json()
    return result


def test_a_user_in_two_organizations_has_a_role_in_each(served: Served) -> None:
    """One person: owner of A, member of B; each token acts only in its own organization."""
    a, b = onboard(served, prefix="alpha"), onboard(served, prefix="bravo")
    invited = served.client(b.token).post(
        f"/organizations/{b.id}/invitations", json={"email": a.owner_email, "role": "member"}
    )
    assert invited.status_code == 201
    accepted = served.client(a.token).post(f"/invitations/{invited.json()['token']}/accept")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["membership"]["role"] == "member"
    assert accepted.json()["token"]["org_id"] == b.id

    home = sign_in(served, a.owner_email)
    in_b = sign_in(served, a.owner_email, b.id)
    assert (home["org_id"], home["role"]) == (a.id, "owner")
    assert (in_b["org_id"], in_b["role"]) == (b.id, "member")
    as_owner = served.client(home["access_token"])
    as_member = served.client(in_b["access_token"])
    settings = {"session_timeout": 120}
    assert as_owner.put(f"/organizations/{a.id}/settings", json=settings).status_code == 200
    assert as_member.put(f"/organizations/{b.id}/settings", json=settings).status_code == 403
    # A token acts in its organization only, even for a user who also belongs elsewhere.
    assert as_owner.get(f"/organizations/{b.id}").status_code == 404
    assert as_member.get(f"/organizations/{a.id}").status_code == 404
    members = as_member.get(f"/organizations/{b.id}/users").json()["items"]
    assert {(m["email"], m["role"]) for m in members} == {
        (b.owner_email, "owner"),
        (a.owner_email, "member"),
    }


def test_signing_in_to_an_organization_you_are_not_in_is_401(served: Served) -> None:
    """The right password with another organization's id gets the same 401 as a wrong one."""
    a, b = onboard(served), onboard(served)
    wrong_org = served.client().post(
        "/auth/token", json={"email": a.owner_email, "password": PASSWORD, "org_id": b.id}
    )
    wrong_password = served.client().post(
        "/auth/token", json={"email": a.owner_email, "password": "not the password"}
    )
    assert wrong_org.status_code == wrong_password.status_code == 401
    assert wrong_org.json()["detail"] == wrong_password.json()["detail"]


def test_an_invitation_works_once(served: Served) -> None:
    """Accepting twice: the second time is a 409 and changes nothing."""
    org = onboard(served)
    owner = served.client(org.token)
    token = owner.post(
        f"/organizations/{org.id}/invitations", json={"email": f"new@{org.id}.example.com"}
    ).json()["token"]
    first = served.client().post(
        f"/invitations/{token}/accept", json={"name": "New", "password": PASSWORD}
    )
    second = served.client().post(
        f"/invitations/{token}/accept", json={"name": "Thief", "password": "other password"}
    )
    assert first.status_code == 200
    assert second.status_code == 409
    sign_in(served, f"new@{org.id}.example.com", org.id)  # the first password still works


def test_an_expired_invitation_is_410(served: Served) -> None:
    """Past its seven days an invitation is refused; a new one for the same email works."""
    org = onboard(served)
    owner = served.client(org.token)
    email = f"late@{org.id}.example.com"
    token = owner.post(f"/organizations/{org.id}/invitations", json={"email": email}).json()[
        "token"
    ]
    served.clock.advance(7 * DAY + 1)
    late = served.client().post(
        f"/invitations/{token}/accept", json={"name": "Late", "password": PASSWORD}
    )
    assert late.status_code == 410
    owner = served.client(sign_in(served, org.owner_email)["access_token"])
    renewed = owner.post(f"/organizations/{org.id}/invitations", json={"email": email})
    assert renewed.status_code == 201
    assert served.client().post(f"/invitations/{token}/accept", json={}).status_code == 404
    ok = served.client().post(
        f"/invitations/{renewed.json()['token']}/accept",
        json={"name": "Late", "password": PASSWORD},
    )
    assert ok.status_code == 200


def test_invitations_outside_allowed_domains_are_422(served: Served) -> None:
    """With allowed_domains set, other domains are refused and the field is named."""
    org = onboard(served)
    owner = served.client(org.token)
    owner.put(f"/organizations/{org.id}/settings", json={"allowed_domains": ["acme.com"]})
    refused = owner.post(f"/organizations/{org.id}/invitations", json={"email": "x@evil.com"})
    assert refused.status_code == 422
    assert refused.json()["field"] == "email"
    assert refused.json()["allowed_domains"] == ["acme.com"]
    sub = owner.post(f"/organizations/{org.id}/invitations", json={"email": "x@sub.acme.com"})
    assert sub.status_code == 422
    allowed = owner.post(f"/organizations/{org.id}/invitations", json={"email": "X@ACME.com"})
    assert allowed.status_code == 201
    assert allowed.json()["email"] == "x@acme.com"


def test_a_stale_version_is_409_for_members_and_projects(served: Served) -> None:
    """Two admins edit from the same read: the second write is refused with the current version."""
    org = onboard(served)
    add_member(served, org, "admin")
    owner = served.client(org.token)
    target_token = add_member(served, org, "member", email=f"target@{org.id}.example.com")
    target = sign_in(served, f"target@{org.id}.example.com", org.id)
    assert target_token
    read = owner.get(f"/organizations/{org.id}/users", params={"role": "member"}).json()["items"]
    version = read[0]["version"]
    path = f"/organizations/{org.id}/users/{target['user_id']}"
    first = owner.put(path, json={"role": "admin", "version": version})
    second = owner.put(path, json={"role": "member", "version": version})
    assert first.status_code == 200
    assert second.status_code == 409
    assert second.json()["current_version"] == version + 1
    assert owner.put(path, json={"projects": []}).status_code == 422  # version is required

    project = owner.post(
        f"/organizations/{org.id}/projects", json={"name": "P", "slug": unique("p")}
    ).json()
    p_path = f"/organizations/{org.id}/projects/{project['id']}"
    renamed = owner.put(p_path, json={"name": "Renamed", "version": project["version"]})
    stale = owner.put(p_path, json={"name": "Lost update", "version": project["version"]})
    assert renamed.status_code == 200
    assert stale.status_code == 409
    assert owner.get(p_path).json()["name"] == "Renamed"


def test_owners_are_protected(served: Served) -> None:
    """Admins cannot touch an owner; the last owner cannot be demoted or suspended."""
    org = onboard(served)
    admin = served.client(add_member(served, org, "admin"))
    owner = served.client(org.token)
    path = f"/organizations/{org.id}/users/{org.owner_id}"
    version = owner.get(f"/organizations/{org.id}/users", params={"role": "owner"}).json()["items"][
        0
    ]["version"]
    assert admin.put(path, json={"role": "member", "version": version}).status_code == 403
    assert owner.put(path, json={"role": "admin", "version": version}).status_code == 409
    suspended = owner.put(path, json={"status": "suspended", "version": version})
    assert suspended.status_code == 409


def test_a_suspended_member_is_refused_at_once(served: Served) -> None:
    """Suspension takes effect on the member's next request, token or not."""
    org = onboard(served)
    token = add_member(served, org, "member", email=f"gone@{org.id}.example.com")
    owner = served.client(org.token)
    member = owner.get(f"/organizations/{org.id}/users", params={"role": "member"}).json()["items"][
        0
    ]
    changed = owner.put(
        f"/organizations/{org.id}/users/{member['user_id']}",
        json={"status": "suspended", "version": member["version"]},
    )
    assert changed.status_code == 200
    assert served.client(token).get(f"/organizations/{org.id}").status_code == 403
    listed = owner.get(f"/organizations/{org.id}/users", params={"status": "suspended"})
    assert [m["user_id"] for m in listed.json()["items"]] == [member["user_id"]]


def test_session_timeout_bounds_the_token_lifetime(served: Served) -> None:
    """Tokens last session_timeout minutes, and older tokens stop working when it shrinks."""
    org = onboard(served)
    owner = served.client(org.token)
    assert (
        owner.put(f"/organizations/{org.id}/settings", json={"session_timeout": 30}).status_code
        == 200
    )
    fresh = sign_in(served, org.owner_email)
    assert fresh["expires_in"] == 30 * 60
    served.clock.advance(29 * 60)
    assert served.client(fresh["access_token"]).get(f"/organizations/{org.id}").status_code == 200
    served.clock.advance(2 * 60)
    for token in (org.token, fresh["access_token"]):  # issued under 60 and 30 minutes
        expired = served.client(token).get(f"/organizations/{org.id}")
        assert expired.status_code == 401


def test_require_mfa_asks_enrolled_members_for_a_totp_code(served: Served) -> None:
    """Enrol (RFC 6238), then sign-in needs the code; a code works once; old tokens stop."""
    org = onboard(served)
    owner = served.client(org.token)
    enrolment = owner.post("/auth/mfa/enroll")
    assert enrolment.status_code == 201
    totp = TOTP(enrolment.json()["secret"])
    assert enrolment.json()["otpauth_uri"].startswith("otpauth://totp/")
    step = int(served.clock.time() // TOTP_PERIOD)
    wrong = "000000" if totp.code_at(step) != "000000" else "111111"
    assert owner.post("/auth/mfa/verify", json={"code": wrong}).status_code == 422
    assert owner.post("/auth/mfa/verify", json={"code": totp.code_at(step)}).status_code == 200
    assert (
        owner.put(f"/organizations/{org.id}/settings", json={"require_mfa": True}).status_code
        == 200
    )

    without = served.client().post(
        "/auth/token", json={"email": org.owner_email, "password": PASSWORD}
    )
    assert without.status_code == 401
    assert without.json()["mfa_required"] is True
    assert owner.get(f"/organizations/{org.id}").status_code == 401  # a password-only token
    served.clock.advance(TOTP_PERIOD)
    code = totp.code_at(step + 1)
    signed = sign_in(served, org.owner_email, totp_code=code)
    assert served.client(signed["access_token"]).get(f"/organizations/{org.id}").status_code == 200
    replay = served.client().post(
        "/auth/token", json={"email": org.owner_email, "password": PASSWORD, "totp_code": code}
    )
    assert replay.status_code == 401

    org.token = signed["access_token"]
    member_token = add_member(served, org, "member", email=f"m@{org.id}.example.com")
    assert served.client(member_token).get(f"/organizations/{org.id}").status_code == 200
    member = sign_in(served, f"m@{org.id}.example.com", org.id)
    assert (member["mfa_required"], member["mfa_enrolled"]) == (True, False)


def test_totp_matches_the_rfc_6238_test_vector() -> None:
    """The SHA-1 vector of RFC 6238 appendix B (T=59 s → 94287082, last six digits)."""
    secret = base64.b32encode(b"12345678901234567890").decode()
    totp = TOTP(secret)
    assert totp.code_at(59 // 30) == "287082"
    assert totp.code_at(1111111109 // 30) == "081804"
    assert totp.verify("287082", 59.0) == 1
    assert totp.verify("287082", 59.0, last_step=1) is None


def test_removing_a_member_frees_the_seat_and_ends_their_access(served: Served) -> None:
    """DELETE a member: 204, their token stops at once, the seat and team spot are freed."""
    org = onboard(served, plan="free")
    owner = served.client(org.token)
    email = f"leaver@{org.id}.example.com"
    token = add_member(served, org, "member", email=email)
    leaver = sign_in(served, email, org.id)
    project = owner.post(
        f"/organizations/{org.id}/projects",
        json={"name": "P", "slug": "team", "team": [{"user_id": leaver["user_id"]}]},
    ).json()
    add_member(served, org)  # the third and last seat of Free
    assert (
        owner.post(
            f"/organizations/{org.id}/invitations", json={"email": "next@x.example"}
        ).status_code
        == 402
    )
    removed = owner.delete(f"/organizations/{org.id}/users/{leaver['user_id']}")
    assert removed.status_code == 204
    assert served.client(token).get(f"/organizations/{org.id}").status_code == 404
    assert owner.get(f"/organizations/{org.id}/projects/{project['id']}").json()["team"] == []
    assert (
        owner.post(
            f"/organizations/{org.id}/invitations", json={"email": "next@x.example"}
        ).status_code
        == 201
    )
    assert owner.delete(f"/organizations/{org.id}/users/{org.owner_id}").status_code == 409


def test_filtered_lists_page_through_every_match(served: Served) -> None:
    """?project_id= with limit=1 walks every matching member, whatever lies between them."""
    org = onboard(served)
    owner = served.client(org.token)
    project = owner.post(
        f"/organizations/{org.id}/projects", json={"name": "P", "slug": "paged"}
    ).json()
    wanted = []
    for index in range(4):
        email = f"m{index}@{org.id}.example.com"
        body = {"email": email, "projects": [project["id"]] if index % 2 else []}
        token = owner.post(f"/organizations/{org.id}/invitations", json=body).json()["token"]
        if index % 2:
            wanted.append(email)
        assert (
            served.client()
            .post(f"/invitations/{token}/accept", json={"name": "M", "password": PASSWORD})
            .status_code
            == 200
        )
    seen, cursor = [], None
    while True:
        params = {"project_id": project["id"], "limit": 1}
        if cursor:
            params["cursor"] = cursor
        listed = owner.get(f"/organizations/{org.id}/users", params=params).json()
        seen += [m["email"] for m in listed["items"]]
        cursor = listed["next_cursor"]
        if cursor is None:
            break
    assert seen == wanted


def test_sign_in_attempts_are_rate_limited_per_email(tmp_path: Path) -> None:
    """Past SIGN_IN_RATE_LIMIT attempts a minute: 429 with Retry-After, even with the password."""
    with serve(make_config(tmp_path, sign_in_rate_limit=3), FakeClock()) as app:
        org = onboard(app)
        client = app.client()
        wrong = {"email": org.owner_email, "password": "guess"}
        assert [client.post("/auth/token", json=wrong).status_code for _ in range(3)] == [401] * 3
        right = {"email": org.owner_email, "password": PASSWORD}
        limited = client.post("/auth/token", json=right)
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
        other = client.post("/auth/token", json={**wrong, "email": "someone@else.example"})
        assert other.status_code == 401
        app.clock.advance(60)
        assert client.post("/auth/token", json=right).status_code == 200


def test_concurrent_updates_from_one_read_let_exactly_one_win(served: Served) -> None:
    """Eight simultaneous PUTs carrying the same version: one 200, seven 409, no lost update."""
    org = onboard(served)
    owner = served.client(org.token)
    project = owner.post(
        f"/organizations/{org.id}/projects", json={"name": "P", "slug": "raced"}
    ).json()
    path = f"/organizations/{org.id}/projects/{project['id']}"

    def rename(index: int) -> int:
        client = served.client(org.token)
        body = {"name": f"name-{index}", "version": project["version"]}
        return client.put(path, json=body).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(rename, range(8)))
    assert sorted(statuses) == [200] + [409] * 7
    final = owner.get(path).json()
    assert final["version"] == project["version"] + 1
    assert final["name"] == f"name-{statuses.index(200)}"


def test_onboarding_cannot_claim_an_invited_email(served: Served) -> None:
    """An invitee's account (no password yet) is theirs to claim by accepting, never by onboarding.

    Onboarding with that email used to set the account's password, so the real
    invitee got a 401 on accepting, and the stranger held their account.
    """
    org = onboard(served)
    email = f"invitee@{org.id}.example.com"
    token = (
        served.client(org.token)
        .post(f"/organizations/{org.id}/invitations", json={"email": email})
        .json()["token"]
    )
    slug = unique("squat")
    squat = {
        "name": "Squat",
        "slug": slug,
        "owner_email": email,
        "owner_password": "a stranger's password",
        "plan": "starter",
    }
    taken = served.client().post("/organizations", json=squat)
    assert taken.status_code == 409 and "invitation" in taken.json()["detail"]
    assert (
        served.client()
        .post("/auth/token", json={"email": email, "password": "a stranger's password"})
        .status_code
        == 401
    )
    accepted = served.client().post(
        f"/invitations/{token}/accept", json={"name": "Invitee", "password": PASSWORD}
    )
    assert accepted.status_code == 200, accepted.text
    assert sign_in(served, email, org.id)["access_token"]
    # Once the invitee has a password, onboarding another organization takes it.
    again = served.client().post("/organizations", json={**squat, "owner_password": PASSWORD})
    assert again.status_code == 201, again.text
    assert again.json()["owner"]["email"] == email
    assert sign_in(served, email, slug)["access_token"]  # the invitee's password opens both
