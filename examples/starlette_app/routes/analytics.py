"""Per-tenant analytics (seed 002): what this tenant's requests did."""

from __future__ import annotations

from anyio.to_thread import run_sync
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tenantkit.context import current_tenant_id

from ..openapi import operation
from ..services import json, services
from ..validation import Field, query_int

REPORT = {
    "type": "object",
    "required": ["tenant_id", "total_requests", "by_route", "by_status", "rejections"],
    "properties": {
        "tenant_id": {"type": "string"},
        "total_requests": {"type": "integer"},
        "admitted": {"type": "integer"},
        "rejected": {"type": "integer"},
        "by_route": {"type": "object", "additionalProperties": {"type": "integer"}},
        "by_status": {"type": "object", "additionalProperties": {"type": "integer"}},
        "rejections": {"type": "object", "additionalProperties": {"type": "integer"}},
        "tokens_used": {"type": "integer"},
        "per_minute": {"type": "array"},
        "task_events": {"type": "object"},
    },
}


@operation(
    "This tenant's requests: totals, routes, statuses, rejections, tokens, per minute",
    tag="analytics",
    security="tenant",
    query=(Field("minutes", "integer", minimum=1, maximum=1440, description="window (60)"),),
    responses={200: REPORT},
)
async def request_analytics(request: Request) -> Response:
    minutes = query_int(request, "minutes", 60, low=1, high=1440)
    report = await run_sync(services(request).analytics.report, minutes)
    return json({"tenant_id": current_tenant_id(), **report})


routes = [
    Route("/api/analytics/requests", request_analytics, methods=["GET"], name="analytics"),
]
