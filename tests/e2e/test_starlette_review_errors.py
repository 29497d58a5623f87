"""A defect's 500 still carries ``X-Request-ID`` (and, on tenant routes, rate-limit headers).

The served app has no route that fails on purpose, so this test builds the
same app, adds one, and serves it with uvicorn on a free loopback port (in a
thread); everything else (middleware order, the exception handlers, the
tenant pipeline) is the app's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from _server import START_TIMEOUT_SECONDS, free_port
from examples.starlette_app import AppConfig, create_app
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ADMIN = {"Authorization": "Bearer e2e-admin-errors"}


async def boom(request: Request) -> Response:
    """A handler with a defect."""
    raise RuntimeError("a defect")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[httpx.Client]:
    """The app with a failing route under a tenant path and under /admin."""
    config = AppConfig.from_env(
        {
            "ADMIN_TOKEN": "e2e-admin-errors",
            "JWT_SECRET": "e2e-jwt-secret-errors-" + "e" * 32,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
            "TRUST_TENANT_HEADER": "1",
            "OUTBOX_WORKER": "0",
        }
    )
    app = create_app(config)
    app.router.routes += [Route("/api/boom", boom), Route("/admin/boom", boom)]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the app did not start"
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15) as http:
            yield http
    finally:
        server.should_exit = True
        thread.join(10)


def test_an_unexpected_error_is_a_problem_with_the_request_id(client: httpx.Client) -> None:
    """A 500 is a problem echoing X-Request-ID, with rate-limit headers on tenant routes."""
    created = client.post(
        "/admin/tenants",
        headers=ADMIN,
        json={"tenant_id": "boom-co", "quota_requests_per_minute": 100},
    )
    assert created.status_code == 201, created.text
    tenant = client.get("/api/boom", headers={"X-Tenant-ID": "boom-co", "X-Request-ID": "rid-1"})
    admin = client.get("/admin/boom", headers={**ADMIN, "X-Request-ID": "rid-2"})
    for response, rid in ((tenant, "rid-1"), (admin, "rid-2")):
        assert response.status_code == 500
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["status"] == 500 and "defect" not in response.text
        assert response.headers["X-Request-ID"] == rid
    assert "RateLimit" in tenant.headers
