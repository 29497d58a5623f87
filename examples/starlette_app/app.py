"""Build the ASGI app: routes, error rendering, the tenant pipeline, the outbox worker.

The middleware stack, outermost first::

    SaneRequestId          an X-Request-ID unsafe to echo or log is replaced, for all below
    RequestLogMiddleware   per-tenant analytics (admitted and rejected requests)
    UnknownPaths           404 for paths no route serves, before any credential is asked
    TenantKitMiddleware    resolve → tenant → policy → quotas → (app) → settle tokens
    RefuseStaleTokens      401 for a user token minted before its tenant (a deleted namesake's)
    CaptureContext         hands the admitted context to the request log
    CatchUnexpected        a defect's 500, rendered where it still gets X-Request-ID
    router                 the routes of routes/
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.to_thread import run_sync
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from tenantkit.asgi import TenantKitMiddleware
from tenantkit.errors import NotFound
from tenantkit.kit import TenantKit
from tenantkit.quotas import QuotaEngine

from .analytics import Analytics, CaptureContext, RequestLogMiddleware
from .auth import Passwords, RefuseStaleTokens
from .config import AppConfig
from .db import Database, prepare
from .invalidation import Invalidations
from .outbox import OutboxWorker
from .problems import EXCEPTION_HANDLERS, CatchUnexpected, problem
from .routes import ROUTES
from .services import Services

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_REQUEST_ID_KEY = b"x-request-id"


class SaneRequestId:
    """Replace an ``X-Request-ID`` unsafe to echo or log with a generated one, up front.

    tenantkit replaces such an id only in the response it sends; done here,
    the routes, their audit entries and the request log see the very id the
    response carries. A repeated header counts as unsafe (tenantkit joins
    the values with a comma).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            given = [v for k, v in scope["headers"] if k == _REQUEST_ID_KEY]
            sane = len(given) == 1 and _REQUEST_ID.fullmatch(given[0].decode("latin-1"))
            if given and not sane:
                kept = [(k, v) for k, v in scope["headers"] if k != _REQUEST_ID_KEY]
                generated = (_REQUEST_ID_KEY, uuid.uuid4().hex.encode("latin-1"))
                scope = {**scope, "headers": [*kept, generated]}
        await self.app(scope, receive, send)


class UnknownPaths:
    """Answer 404 for a path no route serves, before the tenant pipeline.

    Asking for credentials first would answer a typo with 401, and charge the
    tenant's quota for it once they are given.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _routed(scope):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        response = problem(NotFound(f"no route for {request.url.path}"), request)
        given = request.headers.get("x-request-id")  # made sane by SaneRequestId
        response.headers["X-Request-ID"] = given or uuid.uuid4().hex
        await response(scope, receive, send)


def _routed(scope: Scope) -> bool:
    routes: list[BaseRoute] = scope["app"].routes  # the Starlette app, set before middleware
    # A trailing slash is routed too: the router redirects it to the bare path.
    paths = {scope["path"], scope["path"].rstrip("/") or "/"}
    return any(
        route.matches({**scope, "path": path})[0] != Match.NONE
        for path in paths
        for route in routes
    )


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Create the tables, run the outbox worker for the app's lifetime."""
    s: Services = app.state.services
    await run_sync(lambda: prepare(s.kit, app_role=s.config.database_app_role))
    async with anyio.create_task_group() as tasks:
        if s.config.outbox_worker:
            await tasks.start(s.outbox.run)
        await tasks.start(s.invalidations.run)
        try:
            yield
        finally:
            tasks.cancel_scope.cancel()
    await s.invalidations.aclose()
    await s.kit.quotas.aclose()
    s.kit.engine.dispose()


def create_app(config: AppConfig | None = None) -> Starlette:
    """Return the app for ``config`` (default: from the environment)."""
    config = config or AppConfig.from_env()
    settings = config.settings()
    quotas = QuotaEngine(settings.quota, key_prefix=config.quota_key_prefix)
    kit = TenantKit(settings, quotas=quotas)
    db = Database(kit.engine)
    outbox = OutboxWorker(
        db,
        kit.tenants,
        max_attempts=config.outbox_max_attempts,
        backoff_seconds=config.outbox_backoff_seconds,
        poll_seconds=config.outbox_poll_seconds,
    )
    analytics = Analytics(db, kit, ROUTES)
    kit.on_reject = analytics.on_reject
    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(SaneRequestId),
            Middleware(RequestLogMiddleware, analytics=analytics),
            Middleware(UnknownPaths),
            Middleware(TenantKitMiddleware, kit=kit),
            Middleware(RefuseStaleTokens),
            Middleware(CaptureContext),
            Middleware(CatchUnexpected),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    passwords = Passwords(time_cost=config.argon2_time_cost, memory_kib=config.argon2_memory_kib)
    invalidations = Invalidations(
        kit, config.quota_storage_uri, channel=f"{config.quota_key_prefix}:cache-invalidation"
    )
    app.state.services = Services(config, kit, db, outbox, analytics, passwords, invalidations)
    return app
