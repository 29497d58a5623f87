"""A server error the app reported no tokens for refunds the reservation, on every adapter."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tenantkit import context
from tenantkit.asgi import TenantKitMiddleware
from tenantkit.flask import FlaskTenantKit

CHAT = "/api/chat/completions"
# The tenant's budget fits one 60-token request a minute, not two.
BODY = json.dumps({"model": "m", "max_tokens": 60}).encode()


@pytest.fixture
def kit(make_kit: Callable[..., Any]) -> Any:
    return make_kit(tenants={"acme": {"quota_tokens_per_minute": 100}})


def _flask_client(kit: Any, outcome: str) -> Any:
    app = Flask(__name__)
    FlaskTenantKit(app, kit=kit)

    @app.post(CHAT)
    def chat() -> Any:
        if outcome == "raise":
            raise RuntimeError("upstream model failed")
        if outcome == "500 with count":
            context.report_tokens(60)
            return {"error": "late failure"}, 500
        return {"ok": True}

    return app.test_client()


@pytest.mark.parametrize(("outcome", "second"), [("raise", 200), ("500 with count", 429)])
def test_flask_view_that_raises_refunds_its_tokens(
    kit: Any, jwt_for: Callable[..., str], outcome: str, second: int
) -> None:
    """A raising view (Flask's 500) refunds its 60 tokens; a 500 that reported them keeps them."""
    client = _flask_client(kit, outcome)
    headers = {"Authorization": f"Bearer {jwt_for(kit, 'acme')}"}
    failed = client.post(CHAT, data=BODY, headers=headers)
    # Read to the end, then closed, as a WSGI server does (the test client leaves both to
    # the caller): a response closed before its end is a disconnect and refunds its tokens.
    failed.get_data()
    failed.close()
    assert failed.status_code == 500
    follow_up = _flask_client(kit, "ok").post(CHAT, data=BODY, headers=headers)
    assert follow_up.status_code == second


async def _asgi_500(request: Request) -> Response:
    await request.body()
    return JSONResponse({"error": "upstream"}, status_code=502)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_asgi_5xx_without_a_count_refunds_its_tokens(
    kit: Any, jwt_for: Callable[..., str], anyio_backend: str
) -> None:
    """A 502 the app reported no tokens for refunds them on ASGI too: the retry is admitted."""
    routes = [Route(CHAT, _asgi_500, methods=["POST"])]
    app = TenantKitMiddleware(Starlette(routes=routes), kit)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {jwt_for(kit, 'acme')}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post(CHAT, content=BODY, headers=headers)).status_code == 502
        await kit.quotas.drain()
        assert (await client.post(CHAT, content=BODY, headers=headers)).status_code == 502
