"""Review of the Flask example's input handling: strings no database or hash can take."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e._flask_server import FakeClock, Served, make_config, onboard, serve

LONE = "\\ud800"  # a JSON escape of an unpaired UTF-16 surrogate: valid JSON, not valid text


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """A fresh app per test."""
    with serve(make_config(tmp_path), FakeClock()) as running:
        yield running


def test_unpaired_surrogates_in_strings_are_422_naming_the_field(served: Served) -> None:
    """A string holding an unpaired surrogate is a 422 on the field, never a 500."""
    org = onboard(served, plan="pro")
    owner = {"Authorization": f"Bearer {org.token}", "Content-Type": "application/json"}
    plain = {"Content-Type": "application/json"}
    project = served.client(org.token).post(
        f"/organizations/{org.id}/projects", json={"name": "P", "slug": "p-main"}
    )
    invitation = served.client(org.token).post(
        f"/organizations/{org.id}/invitations", json={"email": f"new@{org.id}.example.com"}
    )
    project_id, token = project.json()["id"], invitation.json()["token"]
    cases = [
        (
            "POST",
            "/organizations",
            '{"name": "n", "slug": "lone-1", "owner_email": "lone@example.com", '
            f'"owner_password": "12345678", "owner_name": "{LONE}"}}',
            plain,
            "owner_name",
        ),
        (
            "POST",
            "/organizations",
            '{"name": "n", "slug": "lone-2", "owner_email": "lone2@example.com", '
            f'"owner_password": "1234567{LONE}"}}',
            plain,
            "owner_password",
        ),
        (
            "POST",
            "/auth/token",
            f'{{"email": "{org.owner_email}", "password": "{LONE}"}}',
            plain,
            "password",
        ),
        (
            "POST",
            f"/organizations/{org.id}/projects",
            f'{{"name": "{LONE}", "slug": "p-two"}}',
            owner,
            "name",
        ),
        (
            "PUT",
            f"/organizations/{org.id}/projects/{project_id}",
            f'{{"name": "{LONE}", "version": 1}}',
            owner,
            "name",
        ),
        (
            "POST",
            f"/invitations/{token}/accept",
            f'{{"name": "{LONE}", "password": "12345678"}}',
            plain,
            "name",
        ),
    ]
    client = served.client()
    for method, path, body, headers, field in cases:
        response = client.request(method, path, content=body.encode(), headers=headers)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["field"] == field
    projects = served.client(org.token).get(f"/organizations/{org.id}/projects").json()
    assert [p["name"] for p in projects["items"]] == ["P"]
    listed = served.client().post(
        "/auth/token", json={"email": "lone@example.com", "password": "12345678"}
    )
    assert listed.status_code == 401  # the refused onboarding created no account


def forged_cursor(after: object) -> str:
    """Return a cursor in the app's own format, continuing after ``after``."""
    raw = json.dumps({"after": after}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("route", "after"),
    [("users", 10**30), ("users", -(2**63)), ("users", 2**63), ("projects", "\ud800")],
)
def test_forged_cursors_past_what_a_column_holds_are_422(
    served: Served, route: str, after: object
) -> None:
    """A cursor whose key no column can hold (huge integer, lone surrogate) is a 422, not a 500."""
    org = onboard(served)
    response = served.client(org.token).get(
        f"/organizations/{org.id}/{route}", params={"cursor": forged_cursor(after)}
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "cursor"
