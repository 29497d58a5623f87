"""The pure ASGI middleware: identity, rejections, headers, body replay, context isolation."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from tenantkit import context
from tenantkit.asgi import TenantKitMiddleware

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def whoami(request: Request) -> Response:
    expected = request.headers.get("x-expect")
    seen = []
    for _ in range(3):
        seen.append(context.current_tenant_id())
        await asyncio.sleep(0)
    if expected is not None and any(s != expected for s in seen):
        return JSONResponse({"mismatch": seen}, status_code=599)
    identity = context.current_identity()
    return JSONResponse(
        {
            "tenant": seen[0],
            "source": identity.source,
            "request_id": context.current_context().request_id,
        }
    )


async def boom(request: Request) -> Response:
    assert context.current_tenant_id() == request.headers["x-expect"]
    raise RuntimeError("handler failed")


async def stream(request: Request) -> Response:
    expected = request.headers["x-expect"]

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            await asyncio.sleep(0)
            tenant = context.current_tenant_id()
            yield f"{i}:{'ok' if tenant == expected else 'MISMATCH'};".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


async def chat(request: Request) -> Response:
    body = await request.body()
    context.report_tokens(7)
    return JSONResponse({"echo": json.loads(body)}, headers={"X-TenantKit-Tokens-Used": "999"})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_app(kit: Any) -> TenantKitMiddleware:
    routes = [
        Route("/whoami", whoami),
        Route("/boom", boom),
        Route("/stream", stream),
        Route("/api/chat/completions", chat, methods=["POST"]),
        Route("/health", health),
    ]
    return TenantKitMiddleware(Starlette(routes=routes), kit)


@pytest.fixture
def kit(make_kit: Callable[..., Any]) -> Any:
    return make_kit(
        tenants={"acme": {}, "globex": {}, "sleepy": {"status": "suspended"}},
        max_body_bytes=1024,
    )


def client_for(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_jwt_admits_and_binds_tenant(kit: Any, jwt_for: Callable[..., str]) -> None:
    """A valid JWT admits the request and the handler sees its tenant."""
    async with client_for(build_app(kit)) as client:
        r = await client.get("/whoami", headers={"Authorization": f"Bearer {jwt_for(kit, 'acme')}"})
    assert r.status_code == 200
    assert r.json()["tenant"] == "acme" and r.json()["source"] == "jwt"
    assert context.get_context() is None


async def test_api_key_admits(kit: Any) -> None:
    """An API key in X-API-Key or as a bearer token admits for its tenant."""
    issued = kit.api_keys.issue("globex", name="ci")
    async with client_for(build_app(kit)) as client:
        r1 = await client.get("/whoami", headers={"X-API-Key": issued.key})
        r2 = await client.get("/whoami", headers={"Authorization": f"Bearer {issued.key}"})
    assert r1.json()["tenant"] == r2.json()["tenant"] == "globex"
    assert r1.json()["source"] == "api_key"


@pytest.mark.parametrize(
    ("headers", "status", "slug"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer not.a.jwt"}, 401, "unauthorized"),
        ({"X-API-Key": "tk_live_forged"}, 401, "unauthorized"),
    ],
)
async def test_missing_or_bad_credentials(
    kit: Any, headers: dict[str, str], status: int, slug: str
) -> None:
    """Missing, malformed or forged credentials give a 401 problem document."""
    async with client_for(build_app(kit)) as client:
        r = await client.get("/whoami", headers=headers)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith(slug)
    assert r.json()["status"] == status
    assert "x-request-id" in r.headers


async def test_credential_for_a_with_header_naming_b(kit: Any, jwt_for: Callable[..., str]) -> None:
    """A credential for acme with X-Tenant-ID: globex is a 403 mismatch, never an override."""
    headers = {"Authorization": f"Bearer {jwt_for(kit, 'acme')}", "X-Tenant-ID": "globex"}
    async with client_for(build_app(kit)) as client:
        r = await client.get("/whoami", headers=headers)
    assert r.status_code == 403
    assert r.json()["type"].endswith("tenant-mismatch")


async def test_unknown_and_suspended_tenants(kit: Any, jwt_for: Callable[..., str]) -> None:
    """An unknown tenant is a 404 problem; a suspended one a 403 problem."""
    async with client_for(build_app(kit)) as client:
        unknown = await client.get(
            "/whoami", headers={"Authorization": f"Bearer {jwt_for(kit, 'nobody')}"}
        )
        suspended = await client.get(
            "/whoami", headers={"Authorization": f"Bearer {jwt_for(kit, 'sleepy')}"}
        )
    assert unknown.status_code == 404 and unknown.json()["type"].endswith("tenant-not-found")
    assert suspended.status_code == 403 and suspended.json()["type"].endswith("tenant-suspended")


async def test_request_id_echoed_or_generated(kit: Any, jwt_for: Callable[..., str]) -> None:
    """X-Request-ID is echoed when sane, generated otherwise, and visible in the context."""
    auth = {"Authorization": f"Bearer {jwt_for(kit, 'acme')}"}
    async with client_for(build_app(kit)) as client:
        echoed = await client.get("/whoami", headers={**auth, "X-Request-ID": "req-42"})
        generated = await client.get("/whoami", headers={**auth, "X-Request-ID": "bad id!"})
    assert echoed.headers["x-request-id"] == "req-42" == echoed.json()["request_id"]
    assert generated.headers["x-request-id"] != "bad id!"
    assert generated.json()["request_id"] == generated.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/whoami", "/health"])
async def test_app_request_id_header_is_replaced(
    kit: Any, jwt_for: Callable[..., str], path: str
) -> None:
    """An app's own request-id header gives way to the middleware's: one value, as on WSGI."""

    async def own_id(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"x-request-id", b"app-1"), (b"x-request-id", b"app-2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    auth = {"Authorization": f"Bearer {jwt_for(kit, 'acme')}", "X-Request-ID": "client-1"}
    async with client_for(TenantKitMiddleware(own_id, kit)) as client:
        r = await client.get(path, headers=auth)
    assert r.headers.get_list("x-request-id") == ["client-1"]


async def test_excluded_paths_skip_the_pipeline(kit: Any) -> None:
    """Excluded paths need no credential and still carry X-Request-ID."""
    async with client_for(build_app(kit)) as client:
        r = await client.get("/health")
    assert r.status_code == 200 and r.headers["x-request-id"]


async def test_lifespan_is_passed_through(kit: Any) -> None:
    """The lifespan scope reaches the app untouched."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await TenantKitMiddleware(app, kit)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


async def test_body_replayed_and_token_header_stripped(
    kit: Any, jwt_for: Callable[..., str]
) -> None:
    """The policy route's body reaches the app intact; the token header never leaves."""
    payload = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    async with client_for(build_app(kit)) as client:
        r = await client.post(
            "/api/chat/completions",
            json=payload,
            headers={"Authorization": f"Bearer {jwt_for(kit, 'acme')}"},
        )
    assert r.status_code == 200
    assert r.json() == {"echo": payload}
    assert "x-tenantkit-tokens-used" not in r.headers


@pytest.mark.parametrize(
    ("content", "status"),
    [(b"{not json", 400), (b"[1, 2]", 400), (b"", 400), (b"x" * 2048, 413)],
)
async def test_bad_bodies_are_4xx(
    kit: Any, jwt_for: Callable[..., str], content: bytes, status: int
) -> None:
    """Malformed, non-object and oversize bodies give 400/413 problems, never a 500."""
    async with client_for(build_app(kit)) as client:
        r = await client.post(
            "/api/chat/completions",
            content=content,
            headers={"Authorization": f"Bearer {jwt_for(kit, 'acme')}"},
        )
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"


async def test_two_tenants_500_interleaved_requests_each(
    kit: Any, jwt_for: Callable[..., str]
) -> None:
    """2 tenants x 500 concurrent requests (plain, raising, streaming): zero mismatches."""
    tokens = {t: jwt_for(kit, t) for t in ("acme", "globex")}
    plan = [(t, p) for t in tokens for p in ("/whoami", "/boom", "/stream") for _ in range(167)]
    plan = plan[:1000]
    random.Random(7).shuffle(plan)
    app = build_app(kit)

    async with client_for(app) as client:

        async def one(tenant: str, path: str) -> str | None:
            headers = {"Authorization": f"Bearer {tokens[tenant]}", "X-Expect": tenant}
            r = await client.get(path, headers=headers)
            if path == "/whoami" and (r.status_code != 200 or r.json()["tenant"] != tenant):
                return f"{path}: {r.status_code} {r.text}"
            if path == "/stream" and (r.status_code != 200 or "MISMATCH" in r.text):
                return f"{path}: {r.text}"
            if path == "/boom" and r.status_code != 500:
                return f"{path}: {r.status_code}"
            return None

        results = await asyncio.gather(*(one(t, p) for t, p in plan))
    assert [r for r in results if r] == []
    assert sum(1 for t, _ in plan if t == "acme") >= 490
    assert context.get_context() is None


@pytest.fixture
def picky_kit(make_kit: Callable[..., Any]) -> Any:
    """Tenant ``acme`` may use model ``m1`` only; header identity."""
    return make_kit(
        tenants={"acme": {"allowed_models": ("m1",)}},
        resolvers=("header",),
        trust_tenant_header=True,
        require_credential=False,
    )


@pytest.mark.parametrize("model", ["m1", "m2"])
async def test_policy_applies_below_a_root_path(picky_kit: Any, model: str) -> None:
    """Behind --root-path the policy route is still checked: the app routes on path less root."""
    app = build_app(picky_kit)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, root_path="/gw")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post(
            "/gw/api/chat/completions",
            json={"model": model, "messages": []},
            headers={"X-Tenant-ID": "acme"},
        )
    if model == "m1":
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 403
        assert r.json()["reason"] == "model_not_allowed"


async def test_policy_applies_inside_a_mount(picky_kit: Any) -> None:
    """A middleware-wrapped app mounted under /v2 checks its own policy routes."""
    outer = Starlette(routes=[Mount("/v2", app=build_app(picky_kit))])
    async with client_for(outer) as client:
        denied = await client.post(
            "/v2/api/chat/completions",
            json={"model": "m2", "messages": []},
            headers={"X-Tenant-ID": "acme"},
        )
        allowed = await client.post(
            "/v2/api/chat/completions",
            json={"model": "m1", "messages": []},
            headers={"X-Tenant-ID": "acme"},
        )
    assert denied.status_code == 403
    assert allowed.status_code == 200
    assert allowed.json()["echo"]["model"] == "m1"


@pytest.mark.parametrize("suffix", ["%0A", "%0a"])
async def test_policy_applies_to_the_chat_path_with_a_final_newline(
    picky_kit: Any, suffix: str
) -> None:
    """``/api/chat/completions%0A`` is checked: Starlette's ``$`` routes it to the chat handler."""
    async with client_for(build_app(picky_kit)) as client:
        r = await client.post(
            "/api/chat/completions" + suffix,
            json={"model": "m2", "messages": []},
            headers={"X-Tenant-ID": "acme"},
        )
    assert r.status_code == 403, r.text
    assert r.json()["reason"] == "model_not_allowed"
