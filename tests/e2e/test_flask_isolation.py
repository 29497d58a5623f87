"""Every route, walked from ``app.url_map``, with the wrong organization or the wrong role.

Another organization's token or API key gets 404 everywhere (an organization
you do not belong to does not exist for you), another organization's ids in
your own organization's paths get 404, a member gets 403 where an admin is
needed, and no refused response carries the other organization's data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from examples.flask_app.api import operation_of
from tests.e2e._flask_server import Org, Served, add_member, make_config, onboard, serve


@dataclass
class World:
    """Two organizations: A with a member, a project and an API key; B with its own."""

    served: Served
    a: Org
    b: Org
    member_token: str
    ids: dict[str, str]
    b_key: str
    secrets: tuple[str, ...]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Serve the app and build the two organizations."""
    tmp: Path = tmp_path_factory.mktemp("isolation")
    with serve(make_config(tmp)) as served:
        a, b = onboard(served, prefix="alpha"), onboard(served, prefix="bravo")
        member_token = add_member(served, a, "member")
        owner_a = served.client(a.token)
        project = owner_a.post(
            f"/organizations/{a.id}/projects",
            json={"name": "Secret Plans", "slug": "secret-plans"},
        ).json()
        key = owner_a.post(
            f"/organizations/{a.id}/api-keys",
            json={"name": "alpha key", "scopes": ["write:resources"]},
        ).json()
        b_key = (
            served.client(b.token)
            .post(f"/organizations/{b.id}/api-keys", json={"name": "bravo key"})
            .json()["key"]
        )
        ids = {
            "org_id": a.id,
            "project_id": project["id"],
            "user_id": a.owner_id,
            "key_id": key["key_id"],
        }
        secrets = (project["id"], "Secret Plans", key["key_id"], a.owner_id, a.owner_email)
        yield World(served, a, b, member_token, ids, b_key, secrets)


def org_routes(served: Served) -> list[tuple[str, str, str, str]]:
    """Return (method, rule, endpoint, auth) of every route that names an organization."""
    found = []
    for rule in served.app.url_map.iter_rules():
        op = operation_of(served.app.view_functions[rule.endpoint])
        assert op is not None, f"{rule.rule} has no endpoint() declaration"
        if "org_id" not in rule.arguments or op.auth == "platform":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((method, rule.rule, rule.endpoint, op.auth))
    return found


def fill(rule: str, ids: dict[str, str]) -> str:
    """Substitute ``<name>`` placeholders of a rule with ``ids``."""
    path = rule
    for name, value in ids.items():
        path = path.replace(f"<{name}>", value)
    assert "<" not in path, f"no id to fill {path}"
    return path


def assert_no_leak(text: str, secrets: tuple[str, ...]) -> None:
    """Assert that a refused response names none of the other organization's data.

    ``instance`` echoes the path the caller sent, which is theirs to know.
    """
    problem = json.loads(text)
    problem.pop("instance", None)
    text = json.dumps(problem)
    for secret in secrets:
        assert secret not in text, f"response leaks {secret!r}: {text}"


def test_the_walk_covers_every_organization_route(world: World) -> None:
    """The walk finds each kind of organization route (so it cannot pass by walking nothing)."""
    routes = org_routes(world.served)
    kinds = {auth for *_, auth in routes}
    assert {"member", "admin", "owner", "api_key"} <= kinds
    assert len(routes) >= 17


def test_another_organizations_token_gets_404_on_every_route(world: World) -> None:
    """B's owner token on any of A's routes: 404, and nothing of A in the answer."""
    client = world.served.client(world.b.token)
    for method, rule, endpoint, _auth in org_routes(world.served):
        response = client.request(method, fill(rule, world.ids), json={})
        assert response.status_code == 404, (method, rule, endpoint, response.text)
        assert response.headers["Content-Type"] == "application/problem+json"
        assert_no_leak(response.text, world.secrets)


def test_another_organizations_api_key_gets_404_on_every_route(world: World) -> None:
    """B's API key on any of A's routes: 404."""
    client = world.served.client(**{"X-API-Key": world.b_key})
    for method, rule, endpoint, _auth in org_routes(world.served):
        response = client.request(method, fill(rule, world.ids), json={})
        assert response.status_code == 404, (method, rule, endpoint, response.text)
        assert_no_leak(response.text, world.secrets)


def test_other_organizations_ids_in_your_own_paths_are_404(world: World) -> None:
    """B's owner naming A's project, user or key under B's own organization: 404."""
    client = world.served.client(world.b.token)
    ids = {**world.ids, "org_id": world.b.id}
    checked = 0
    for method, rule, endpoint, auth in org_routes(world.served):
        if auth == "api_key" or not any(
            f"<{n}>" in rule for n in ("project_id", "user_id", "key_id")
        ):
            continue
        body = {"version": 1} if method == "PUT" else None
        response = client.request(method, fill(rule, ids), json=body)
        assert response.status_code == 404, (method, rule, endpoint, response.text)
        assert_no_leak(response.text, world.secrets)
        checked += 1
    assert checked >= 4


def test_a_member_gets_403_where_an_admin_is_needed(world: World) -> None:
    """A member's token on owner/admin routes: 403; on member routes: never 403."""
    client = world.served.client(world.member_token)
    for method, rule, endpoint, auth in org_routes(world.served):
        response = client.request(method, fill(rule, world.ids), json={})
        if auth in ("admin", "owner"):
            assert response.status_code == 403, (method, rule, endpoint, response.text)
            assert response.json()["reason"] == "role"
        elif auth == "member":  # 404 remains for projects the member cannot see
            assert response.status_code in (200, 404), (method, rule, response.text)
        else:  # API-key routes refuse a user's token
            assert response.status_code == 403
            assert response.json()["reason"] == "api_key_required"


def test_api_keys_and_user_tokens_are_not_interchangeable(world: World) -> None:
    """An API key on a user route and a user token on the API-key route: 403."""
    owner = world.served.client(world.a.token)
    key = owner.post(
        f"/organizations/{world.a.id}/api-keys", json={"name": "k", "scopes": ["write:resources"]}
    ).json()["key"]
    with_key = world.served.client(**{"X-API-Key": key})
    assert with_key.get(f"/organizations/{world.a.id}/users").status_code == 403
    usage = {"project_id": world.ids["project_id"], "type": "api_calls", "quantity": 1}
    assert owner.post(f"/organizations/{world.a.id}/resources", json=usage).status_code == 403
    assert with_key.post(f"/organizations/{world.a.id}/resources", json=usage).status_code == 201


def test_unauthenticated_requests_get_401_on_every_route(world: World) -> None:
    """No credential on any organization route: 401 with a Bearer challenge."""
    client = world.served.client()
    for method, rule, endpoint, _auth in org_routes(world.served):
        response = client.request(method, fill(rule, world.ids), json={})
        assert response.status_code == 401, (method, rule, endpoint, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_refused_requests_changed_nothing(world: World) -> None:
    """After every refused write, A's project, members and key are as they were."""
    owner = world.served.client(world.a.token)
    project = owner.get(f"/organizations/{world.a.id}/projects/{world.ids['project_id']}")
    assert project.status_code == 200
    assert project.json()["name"] == "Secret Plans"
    keys = owner.get(f"/organizations/{world.a.id}/api-keys").json()["items"]
    assert world.ids["key_id"] in {k["key_id"] for k in keys if k["revoked_at"] is None}
    roles = {
        m["user_id"]: m["role"]
        for m in owner.get(f"/organizations/{world.a.id}/users").json()["items"]
    }
    assert roles[world.a.owner_id] == "owner"
