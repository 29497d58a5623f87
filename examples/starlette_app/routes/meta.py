"""Public routes: the service index, health, and the OpenAPI description."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from anyio.to_thread import run_sync
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tenantkit.errors import ServiceUnavailable

from ..openapi import build, operation
from ..problems import problem
from ..services import services

SERVICE = "tenantkit-starlette-example"


def app_version() -> str:
    """Return the installed tenantkit version (the example ships with it)."""
    try:
        return version("tenantkit")
    except PackageNotFoundError:  # running from a source checkout
        return "0.0.0"


@operation("Service name, version and links", tag="meta", security="public")
async def index(request: Request) -> Response:
    return JSONResponse(
        {
            "service": SERVICE,
            "version": app_version(),
            "links": {
                "health": "/health",
                "openapi": "/openapi.json",
                "tenants": "/admin/tenants",
                "onboarding": "/onboarding",
                "token": "/auth/token",
                "users": "/api/users",
                "chat": "/api/chat/completions",
                "analytics": "/api/analytics/requests",
                "tasks": "/tasks",
                "audit": "/api/audit",
            },
        }
    )


@operation(
    "Health of the database and the quota storage",
    tag="meta",
    security="public",
    responses={200: {"type": "object", "required": ["status", "checks"]}},
    errors=(503,),
)
async def health(request: Request) -> Response:
    checks = await run_sync(services(request).kit.health)
    failing = [name for name, value in checks.items() if value != "ok"]
    if not failing:
        return JSONResponse({"status": "ok", "checks": checks})
    error = ServiceUnavailable(
        f"failing: {', '.join(failing)}",
        headers={"Retry-After": "5"},
        checks=checks,
        failing=failing,
    )
    return problem(error, request)


@operation("This OpenAPI description", tag="meta", security="public")
async def openapi(request: Request) -> Response:
    document = build(request.app.routes, title=SERVICE, version=app_version())
    return JSONResponse(document)


routes = [
    Route("/", index, methods=["GET"], name="index"),
    Route("/health", health, methods=["GET"], name="health"),
    Route("/openapi.json", openapi, methods=["GET"], name="openapi"),
]
