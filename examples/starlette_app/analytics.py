"""Per-tenant request analytics: every tenant request is logged, admitted or rejected.

Two small hooks feed one log:

* ``CaptureContext`` runs *inside* tenantkit's middleware and remembers the
  admitted request's context (tenant, reported tokens) in the ASGI scope;
* ``Analytics.on_reject`` is tenantkit's rejection hook: it notes the tenant
  and cause (quota, policy...) of a refused request, then renders the usual
  problem document.

The note goes into a slot that ``RequestLogMiddleware`` makes for each request
and hands down in a context variable, never into a table keyed by the client's
``X-Request-ID``: two requests sharing an id, or a refusal whose response never
left, cannot move a record onto another request.

``RequestLogMiddleware`` runs *outside* tenantkit's middleware and writes the
row just before the last byte of the response leaves, so a client that has
its answer also finds it in ``/api/analytics/requests``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from anyio.to_thread import run_sync
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session
from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantkit import audit
from tenantkit.context import bound_tenant, get_context
from tenantkit.errors import (
    HTTPError,
    PolicyDenied,
    QuotaExceeded,
    ServiceUnavailable,
    TenantMismatch,
    TenantNotFound,
    TenantSuspended,
    Unauthorized,
)
from tenantkit.kit import TenantKit, default_on_reject
from tenantkit.types import Decision, Identity, RequestInfo

from .db import Database
from .models import METHOD_LENGTH, RequestLog, TaskMetric, minute_of, rfc3339, utcnow
from .problems import complete

log = logging.getLogger("starlette_app")
STATE_KEY = "tenant_context"


#: Rejections worth an audit entry (security-relevant, and bounded: quota 429s are
#: left to analytics, so a client cannot flood the audit trail by hammering).
AUDITED_CAUSES = {"policy": "policy.denied", "tenant_mismatch": "tenant.mismatch"}


@dataclass(frozen=True)
class _Rejection:
    identity: Identity
    cause: str
    problem: Mapping[str, Any]


class _Slot:
    """One request's rejection, if tenantkit refused it (made per request, never shared)."""

    __slots__ = ("rejection",)

    def __init__(self) -> None:
        self.rejection: _Rejection | None = None


#: The slot of the request being handled (set by ``RequestLogMiddleware``).
_current: ContextVar[_Slot | None] = ContextVar("starlette_app_request_slot", default=None)


def cause_of(exc: HTTPError) -> str:
    """Return the analytics cause of a rejection."""
    if isinstance(exc, QuotaExceeded):
        return "quota"
    if isinstance(exc, PolicyDenied):
        return "policy"
    if isinstance(exc, TenantSuspended):
        return "suspended"
    if isinstance(exc, TenantMismatch):
        return "tenant_mismatch"
    if isinstance(exc, ServiceUnavailable):
        return "unavailable"
    return "invalid_request"


class Analytics:
    """Record tenant requests and report them per tenant."""

    def __init__(self, db: Database, kit: TenantKit, routes: Sequence[BaseRoute]) -> None:
        self.db = db
        self.kit = kit
        self.routes = routes

    # -- hooks ----------------------------------------------------------------------

    def on_reject(self, request: RequestInfo, exc: HTTPError) -> Decision:
        """tenantkit's rejection hook: remember who was refused and why, then render it."""
        identity = self._identity_of(request)
        if isinstance(exc, TenantNotFound) and identity is not None:
            if identity.source == "header":
                identity = None  # a gateway naming an unknown tenant: 404, nobody to log
            else:  # a signed token outliving its tenant is a credential that no longer works
                exc = Unauthorized("the credential's tenant no longer exists")
                identity = None
        rendered = default_on_reject(request, exc)
        decision = Decision(rendered.status, complete(dict(rendered.problem)), rendered.headers)
        slot = _current.get()
        if identity is not None and slot is not None:
            slot.rejection = _Rejection(identity, cause_of(exc), decision.problem)
        return decision

    def _identity_of(self, request: RequestInfo) -> Identity | None:
        # The credential was checked moments ago, so this is a cache hit.
        try:
            return self.kit.identity.resolve(request)
        except HTTPError:
            return None  # no valid credential: the request belongs to no tenant

    async def record(
        self, scope: Scope, status: int, request_id: str, rejection: _Rejection | None = None
    ) -> None:
        """Log one finished tenant request (called by ``RequestLogMiddleware``)."""
        ctx = scope.get("state", {}).get(STATE_KEY)
        if ctx is not None:
            identity, cause, tokens = ctx.identity, None, ctx.meter.used or 0
        elif rejection is not None:
            identity, cause, tokens = rejection.identity, rejection.cause, 0
        else:
            return  # public or admin route, or no credential: not a tenant's request
        now = utcnow()
        row = RequestLog(
            at=now,
            minute=minute_of(now),
            method=scope["method"][:METHOD_LENGTH],
            route=self._route(scope),
            status=status,
            rejected=cause,
            tokens=tokens,
            request_id=request_id or None,
        )
        try:
            await run_sync(self._write, identity, row, rejection)
        except Exception:  # analytics must never break a response
            log.exception("could not record request analytics")

    def _write(self, identity: Identity, row: RequestLog, rejection: _Rejection | None) -> None:
        def work(session: Session) -> None:
            session.add(row)
            action = AUDITED_CAUSES.get(rejection.cause) if rejection else None
            if rejection is not None and action is not None:
                details = {k: v for k, v in rejection.problem.items() if k not in ("type", "title")}
                audit.record(session, action, metadata={**details, "route": row.route})

        with bound_tenant(identity, request_id=row.request_id):
            self.db.transaction(work)

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:  # rejected before routing: find the template ourselves
            route = next((r for r in self.routes if r.matches(scope)[0] == Match.FULL), None)
        return str(getattr(route, "path", "unmatched"))

    # -- report ---------------------------------------------------------------------

    def report(self, minutes: int) -> dict[str, Any]:
        """Return the bound tenant's analytics over the last ``minutes`` minutes (this one too)."""
        end = utcnow()
        start = minute_of(end) - timedelta(minutes=minutes - 1)
        rejected = func.sum(case((RequestLog.rejected.is_not(None), 1), else_=0))
        used = func.coalesce(func.sum(RequestLog.tokens), 0)
        count = func.count()

        def work(session: Session) -> dict[str, Any]:
            recent = RequestLog.minute >= start
            groups = session.execute(
                select(
                    RequestLog.method,
                    RequestLog.route,
                    RequestLog.status,
                    RequestLog.rejected,
                    count,
                    used,
                )
                .where(recent)
                .group_by(
                    RequestLog.method, RequestLog.route, RequestLog.status, RequestLog.rejected
                )
            ).all()
            series = session.execute(
                select(RequestLog.minute, count, rejected, used)
                .where(recent)
                .group_by(RequestLog.minute)
                .order_by(RequestLog.minute)
            ).all()
            metrics = dict(session.execute(select(TaskMetric.name, TaskMetric.value)).all())
            lifetime = session.scalar(select(func.count()).select_from(RequestLog))
            return {
                "window": {"start": rfc3339(start), "end": rfc3339(end), "minutes": minutes},
                **_totals(groups),
                "per_minute": [
                    {"minute": rfc3339(m), "requests": n, "rejected": r, "tokens": t}
                    for m, n, r, t in series
                ],
                "task_events": metrics,
                "lifetime_requests": lifetime or 0,
            }

        return self.db.transaction(work)


def _totals(groups: Sequence[Any]) -> dict[str, Any]:
    by_route: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    rejections: Counter[str] = Counter({"quota": 0, "policy": 0})
    tokens = 0
    for method, route, status, rejected, count, used in groups:
        by_route[f"{method} {route}"] += count
        by_status[str(status)] += count
        tokens += used
        if rejected:
            rejections[rejected] += count
    total = sum(by_status.values())
    rejected_total = sum(rejections.values())
    return {
        "total_requests": total,
        "admitted": total - rejected_total,
        "rejected": rejected_total,
        "by_route": dict(by_route.most_common()),
        "by_status": dict(sorted(by_status.items())),
        "rejections": dict(rejections),
        "tokens_used": tokens,
    }


class CaptureContext:
    """Inside tenantkit's middleware: keep the admitted request's context in the scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[STATE_KEY] = get_context()
        await self.app(scope, receive, send)


class RequestLogMiddleware:
    """Outside tenantkit's middleware: log each tenant request before its last byte is sent."""

    def __init__(self, app: ASGIApp, analytics: Analytics) -> None:
        self.app = app
        self.analytics = analytics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        request_id = ""
        slot = _Slot()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                request_id = Headers(raw=message["headers"]).get("x-request-id", "")
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await self.analytics.record(scope, status, request_id, slot.rejection)
            await send(message)

        token = _current.set(slot)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            _current.reset(token)
