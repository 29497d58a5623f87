"""Websockets through the ASGI middleware: the tenant bound, or the handshake refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from tenantkit import context
from tenantkit.asgi import TenantKitMiddleware

DENIAL = {"websocket.http.response": {}}


async def echo_tenant(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"tenant": context.current_tenant_id()})
    await websocket.close()


@pytest.fixture
def kit(make_kit: Callable[..., Any]) -> Any:
    return make_kit(
        tenants={
            "acme": {},
            "busy": {"quota_requests_per_minute": 1},
            "sleepy": {"status": "suspended"},
        }
    )


def _handshake(
    kit: Any,
    headers: dict[str, str],
    extensions: dict[str, Any] | None = None,
    *,
    null_extensions: bool = False,
) -> list[dict[str, Any]]:
    """Open ``/ws`` as a server would (over raw ASGI); return what the app stack sent."""
    app = TenantKitMiddleware(Starlette(routes=[WebSocketRoute("/ws", echo_tenant)]), kit)
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
        "subprotocols": [],
        "extensions": None if null_extensions else extensions if extensions is not None else DENIAL,
    }
    incoming = [{"type": "websocket.connect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def _denial(sent: list[dict[str, Any]]) -> tuple[int, dict[str, str], dict[str, Any]]:
    assert [m["type"] for m in sent] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
    ]
    headers = {k.decode().lower(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, json.loads(sent[1]["body"])


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_an_admitted_websocket_runs_with_its_tenant(kit: Any, jwt_for: Callable[..., str]) -> None:
    """The handshake is identified like a request; the handler sees its tenant."""
    sent = _handshake(kit, _bearer(jwt_for(kit, "acme")))
    assert sent[0]["type"] == "websocket.accept", sent
    assert json.loads(sent[1]["text"]) == {"tenant": "acme"}
    assert context.get_context() is None


@pytest.mark.parametrize(
    ("tenant", "status"), [(None, 401), ("sleepy", 403)], ids=["no-credential", "suspended"]
)
def test_a_refused_handshake_gets_the_problem_response(
    kit: Any, jwt_for: Callable[..., str], tenant: str | None, status: int
) -> None:
    """Where the server offers a denial response, a refused handshake gets the HTTP problem."""
    headers = {} if tenant is None else _bearer(jwt_for(kit, tenant))
    got, response_headers, problem = _denial(_handshake(kit, headers))
    assert (got, problem["status"]) == (status, status)
    assert response_headers["content-type"] == "application/problem+json"
    assert response_headers["x-request-id"]
    if status == 401:
        assert response_headers["www-authenticate"].startswith("Bearer")


def test_a_handshake_over_its_request_quota_is_a_429_with_retry_after(
    kit: Any, jwt_for: Callable[..., str]
) -> None:
    """A websocket counts as a request: past the quota its handshake is 429 with Retry-After."""
    headers = _bearer(jwt_for(kit, "busy"))
    assert _handshake(kit, headers)[0]["type"] == "websocket.accept"
    status, response_headers, problem = _denial(_handshake(kit, headers))
    assert status == 429
    assert int(response_headers["retry-after"]) >= 1
    assert response_headers["ratelimit-policy"].startswith('"tenant-requests";q=1;')
    assert problem["limit"] == "tenant-requests"


@pytest.mark.parametrize("extensions", [{}, None], ids=["none-offered", "null"])
def test_without_the_denial_extension_a_refused_handshake_is_closed(
    kit: Any, extensions: dict[str, Any] | None
) -> None:
    """A server without ``websocket.http.response`` gets a close (1008) before any accept."""
    sent = _handshake(kit, {}, extensions=extensions, null_extensions=extensions is None)
    assert [m["type"] for m in sent] == ["websocket.close"]
    assert sent[0]["code"] == 1008
