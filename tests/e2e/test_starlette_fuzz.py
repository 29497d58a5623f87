"""Property-based fuzzing of the Starlette app from its own ``/openapi.json``.

For every operation the served description lists, hypothesis builds requests
from the operation's schemas (valid bodies, any JSON, raw bytes, odd path and
query values, every kind of credential) and checks the contract: never a 5xx,
every error an RFC 9457 problem document whose status the description lists.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _server import Server, serve_module
from examples.starlette_app import AppConfig, create_app
from examples.starlette_app.openapi import build
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ADMIN_TOKEN = "e2e-admin-fuzz"
PROBLEM_KEYS = {"type", "title", "status", "detail"}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "-_.~%", min_size=1, max_size=40)


def operations() -> list[tuple[str, str]]:
    """Every (method, path) the app describes, from the app built in-process."""
    config = AppConfig.from_env({"ADMIN_TOKEN": "x", "JWT_SECRET": "y" * 40})
    document = build(create_app(config).routes, title="t", version="0")
    return [(method, path) for path, item in document["paths"].items() for method in item]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app with cheap password hashing and generous throttles (fuzzing is one client)."""
    workdir: Path = tmp_path_factory.mktemp("starlette-fuzz")
    env = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "JWT_SECRET": "e2e-jwt-secret-fuzz-" + "v" * 32,
        "DATABASE_URL": f"sqlite:///{workdir / 'app.db'}",
        "ARGON2_MEMORY_KIB": "8192",
        "ARGON2_TIME_COST": "1",
        "SIGNUPS_PER_MINUTE": "100000",
        "LOGIN_ATTEMPTS_PER_MINUTE": "100000",
        "MAX_BODY_BYTES": "4096",
    }
    with serve_module("examples.starlette_app", env=env, cwd=workdir) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    """One keep-alive client for every generated request."""
    with httpx.Client(base_url=server.url, timeout=15) as c:
        yield c


@pytest.fixture(scope="module")
def world(server: Server) -> dict[str, Any]:
    """The served description, and credentials and ids the fuzzer may use."""
    with httpx.Client(base_url=server.url, timeout=15) as client:
        document = client.get("/openapi.json").json()
        signup = client.post(
            "/onboarding",
            json={"tenant_name": "Fuzz Co", "email": "admin@fuzz.co", "password": "fuzz-pass"},
        ).json()
        tenant = signup["tenant_id"]
        client.put(
            f"/admin/tenants/{tenant}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            json={"quota_requests_per_minute": None, "quota_tokens_per_minute": None},
        )
        jwt_header = {"Authorization": f"Bearer {signup['access_token']}"}
        key = client.post(
            f"/admin/tenants/{tenant}/api-keys",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            json={"name": "fuzz"},
        ).json()["key"]
        task = client.post("/tasks", headers=jwt_header, json={"title": "seed"}).json()["task_id"]
    return {
        "document": document,
        "ids": [tenant, signup["user"]["id"], task, key[:20]],
        # Per security scheme, the credentials that fit; "any" adds the wrong and broken ones.
        "credentials": {
            "adminToken": [{"Authorization": f"Bearer {ADMIN_TOKEN}"}],
            "bearer": [jwt_header, {"Authorization": f"Bearer {key}"}],
            "apiKey": [{"X-API-Key": key}],
            "public": [{}],
            "any": [
                {},
                {"Authorization": "Bearer not-a-token"},
                {"Authorization": f"Bearer {ADMIN_TOKEN}"},
                {"X-Tenant-ID": tenant},
                {**jwt_header, "X-Tenant-ID": "other-tenant"},
            ],
        },
    }


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A strategy for values of the JSON Schema subset the app's description uses."""
    if "anyOf" in schema:
        return st.one_of([from_schema(option) for option in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False)
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        low = schema.get("minLength", 0)
        return st.text(min_size=low, max_size=max(low, min(schema.get("maxLength", 30), 30)))
    if kind == "array":
        items = from_schema(schema.get("items", {}))
        return st.lists(items, max_size=min(schema.get("maxItems", 3), 3))
    if kind == "object" and "properties" in schema:
        required = set(schema.get("required", ()))
        props = {k: from_schema(v) for k, v in schema["properties"].items()}
        return st.fixed_dictionaries(
            {k: v for k, v in props.items() if k in required},
            optional={k: v for k, v in props.items() if k not in required},
        )
    return JSON_VALUES


def check(response: httpx.Response, documented: set[str]) -> None:
    """Never a 5xx; an error is a problem document with a documented status."""
    where = (response.request.method, str(response.request.url), response.text[:500])
    assert response.status_code < 500, where
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json"), where
        body = response.json()
        assert body.keys() >= PROBLEM_KEYS and body["status"] == response.status_code, where
        assert str(response.status_code) in documented, where


@pytest.mark.parametrize(("method", "path"), operations())
def test_no_5xx_and_every_error_is_a_documented_problem(
    client: httpx.Client, world: dict[str, Any], method: str, path: str
) -> None:
    """Generated requests to one operation never get a 5xx or an undocumented error."""
    operation = world["document"]["paths"][path][method]
    body_schema = (
        operation.get("requestBody", {})
        .get("content", {})
        .get("application/json", {})
        .get("schema")
    )
    documented = set(operation["responses"])
    schemes = [name for option in operation["security"] for name in option] or ["public"]
    fitting = [c for name in schemes for c in world["credentials"].get(name, [])]
    credentials = st.sampled_from(fitting or [{}]) | st.sampled_from(world["credentials"]["any"])
    known = world["ids"][1:] if path.startswith("/admin") else world["ids"]  # keep our tenant
    ids = st.sampled_from(known) | SEGMENT

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        url = path
        for param in operation["parameters"]:
            if param["in"] == "path":
                url = url.replace("{" + param["name"] + "}", data.draw(ids, label=param["name"]))
        query: dict[str, str] = {}
        for param in operation["parameters"]:
            if param["in"] == "query" and data.draw(st.booleans()):
                value = data.draw(from_schema(param["schema"]) | st.text(max_size=10))
                query[param["name"]] = value if isinstance(value, str) else json.dumps(value)
        headers = dict(data.draw(credentials, label="credentials"))
        content: bytes | None = None
        if body_schema is not None or method in ("post", "put"):
            valid = from_schema(body_schema) if body_schema else JSON_VALUES
            value = data.draw(st.one_of(valid, valid, valid, JSON_VALUES), label="body")
            content = json.dumps(value).encode()
            if data.draw(st.integers(0, 9), label="mangle") == 0:
                content = data.draw(st.binary(max_size=64), label="raw body")
            headers["Content-Type"] = "application/json"
        response = client.request(method, url, params=query, content=content, headers=headers)
        check(response, documented)

    fuzz()
