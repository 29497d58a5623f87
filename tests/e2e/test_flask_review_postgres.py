"""Review of the Flask example on PostgreSQL: input PostgreSQL refuses never becomes a 500."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL
from tests.e2e._flask_server import (
    Served,
    onboard,
    serve_on_postgres,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def served(postgres_url: URL, tmp_path: Path) -> Iterator[Served]:
    """The app on PostgreSQL with row-level security, as its own role (dropped afterwards)."""
    with serve_on_postgres(postgres_url, tmp_path) as running:
        yield running


@pytest.mark.parametrize("raw_id", ["%00", "usr_%00x"])
def test_ids_holding_nul_are_404_not_500(served: Served, raw_id: str) -> None:
    """A path id PostgreSQL cannot compare (a NUL byte) names nothing: 404, never a 500."""
    org = onboard(served, plan="pro")
    owner = served.client(org.token)
    calls = [
        ("GET", f"/organizations/{org.id}/projects/{raw_id}", None),
        ("PUT", f"/organizations/{org.id}/projects/{raw_id}", {"name": "x", "version": 1}),
        ("PUT", f"/organizations/{org.id}/users/{raw_id}", {"role": "admin", "version": 1}),
        ("DELETE", f"/organizations/{org.id}/users/{raw_id}", None),
        ("DELETE", f"/organizations/{org.id}/api-keys/{raw_id}", None),
    ]
    for method, path, body in calls:
        response = owner.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(("route", "after"), [("users", 2**31), ("projects", "prj_\u0000")])
def test_forged_cursors_postgresql_cannot_compare_are_422(
    served: Served, route: str, after: object
) -> None:
    """A cursor past an INTEGER column or holding NUL is a 422 on PostgreSQL, never a 500."""
    org = onboard(served)
    raw = json.dumps({"after": after}).encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    response = served.client(org.token).get(
        f"/organizations/{org.id}/{route}", params={"cursor": cursor}
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "cursor"
