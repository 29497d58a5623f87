"""The WSGI middleware under a real threaded server: identity, rejections, context isolation."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from werkzeug.serving import make_server

from tenantkit import context
from tenantkit.wsgi import ENVIRON_TENANT, TenantKitWSGIMiddleware


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A bare WSGI app whose routes check the tenant they see."""
    path = environ["PATH_INFO"]
    expected = environ.get("HTTP_X_EXPECT")
    if path == "/health":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"status":"ok"}']
    tenant = context.current_tenant_id()
    if expected is not None and tenant != expected:
        start_response("599 Mismatch", [("Content-Type", "text/plain")])
        return [b"MISMATCH"]
    if path == "/boom":
        raise RuntimeError("handler failed")
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream(expected)
    if path == "/api/chat/completions":
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        context.report_tokens(5)
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("X-TenantKit-Tokens-Used", "1")]
        )
        return [json.dumps({"echo": json.loads(body)}).encode()]
    config = environ[ENVIRON_TENANT]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"tenant": tenant, "config": config.id}).encode()]


def _stream(expected: str | None) -> Iterator[bytes]:
    for i in range(3):
        tenant = context.current_tenant_id()
        yield f"{i}:{'ok' if tenant == expected else 'MISMATCH'};".encode()


@pytest.fixture
def kit(make_kit: Callable[..., Any]) -> Any:
    return make_kit(
        tenants={"acme": {}, "globex": {}, "sleepy": {"status": "suspended"}},
        max_body_bytes=1024,
    )


@pytest.fixture
def server(kit: Any) -> Iterator[str]:
    """Serve the wrapped app on a free loopback port with a threaded werkzeug server."""

    wrapped = TenantKitWSGIMiddleware(app, kit)

    def outer(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            return wrapped(environ, start_response)
        except RuntimeError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"handler failed"]

    srv = make_server("127.0.0.1", 0, outer, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        thread.join(5)


def test_jwt_and_api_key_admit(kit: Any, server: str, jwt_for: Callable[..., str]) -> None:
    """JWT and API key admit; the tenant config is under environ['tenantkit.tenant']."""
    key = kit.api_keys.issue("globex", name="ci").key
    with httpx.Client(base_url=server) as client:
        r1 = client.get("/x", headers={"Authorization": f"Bearer {jwt_for(kit, 'acme')}"})
        r2 = client.get("/x", headers={"X-API-Key": key, "X-Request-ID": "abc"})
    assert r1.json() == {"tenant": "acme", "config": "acme"}
    assert r2.json() == {"tenant": "globex", "config": "globex"}
    assert r2.headers["x-request-id"] == "abc"


@pytest.mark.parametrize(
    ("tenant", "extra", "status", "slug"),
    [
        (None, {}, 401, "unauthorized"),
        ("acme", {"X-Tenant-ID": "globex"}, 403, "tenant-mismatch"),
        ("nobody", {}, 404, "tenant-not-found"),
        ("sleepy", {}, 403, "tenant-suspended"),
    ],
)
def test_rejections_are_problems(
    kit: Any,
    server: str,
    jwt_for: Callable[..., str],
    tenant: str | None,
    extra: dict[str, str],
    status: int,
    slug: str,
) -> None:
    """401, 403 mismatch, 404 unknown and 403 suspended render as problem documents."""
    headers = dict(extra)
    if tenant is not None:
        headers["Authorization"] = f"Bearer {jwt_for(kit, tenant)}"
    r = httpx.get(server + "/x", headers=headers)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith(slug) and r.json()["status"] == status
    assert r.headers["x-request-id"]


def test_excluded_path(server: str) -> None:
    """Excluded paths skip the pipeline and still carry X-Request-ID."""
    r = httpx.get(server + "/health")
    assert r.status_code == 200 and r.headers["x-request-id"]


def test_body_replay_and_limits(kit: Any, server: str, jwt_for: Callable[..., str]) -> None:
    """The body reaches the app intact; bad and oversize bodies give 400 and 413."""
    auth = {"Authorization": f"Bearer {jwt_for(kit, 'acme')}"}
    payload = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(base_url=server, headers=auth) as client:
        ok = client.post("/api/chat/completions", json=payload)
        bad = client.post("/api/chat/completions", content=b"{nope")
        big = client.post("/api/chat/completions", content=b"x" * 4096)
    assert ok.json() == {"echo": payload}
    assert "x-tenantkit-tokens-used" not in ok.headers
    assert bad.status_code == 400 and big.status_code == 413


def test_two_tenants_500_interleaved_threaded(
    kit: Any, server: str, jwt_for: Callable[..., str]
) -> None:
    """2 tenants x 500 requests on a threaded server (plain, raising, streaming): no mismatch."""
    tokens = {t: jwt_for(kit, t) for t in ("acme", "globex")}
    plan = [(t, p) for t in tokens for p in ("/x", "/boom", "/stream") for _ in range(167)][:1000]
    random.Random(11).shuffle(plan)

    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    client = httpx.Client(base_url=server, limits=limits)

    def one(item: tuple[str, str]) -> str | None:
        tenant, path = item
        headers = {"Authorization": f"Bearer {tokens[tenant]}", "X-Expect": tenant}
        r = client.get(path, headers=headers)
        if path == "/x" and r.json().get("tenant") != tenant:
            return f"{path} {r.text}"
        if path == "/stream" and (r.status_code != 200 or "MISMATCH" in r.text):
            return f"{path} {r.text}"
        if path == "/boom" and r.status_code != 500:
            return f"{path} {r.status_code}"
        return None

    with client, ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, plan))
    assert [r for r in results if r] == []
