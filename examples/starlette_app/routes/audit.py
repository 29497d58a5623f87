"""The tenant's audit trail (ADMIN): who changed what, from tenantkit's tamper-evident log.

A deleted tenant's trail is kept (compliance records outlive the tenant), under
its id. A tenant created later under the same id reads only what happened
since its own creation, never its predecessor's entries.
"""

from __future__ import annotations

from anyio.to_thread import run_sync
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tenantkit import audit
from tenantkit.context import current_tenant

from ..auth import require_tenant_admin
from ..openapi import PAGE_QUERY, list_of, operation
from ..services import json, services
from ..validation import Field, invalid, query_int, query_text, query_time

ENTRY = {
    "type": "object",
    "required": ["seq", "time", "actor", "action"],
    "properties": {
        "seq": {"type": "integer"},
        "time": {"type": "string", "format": "date-time"},
        "actor": {"type": "string"},
        "action": {"type": "string"},
        "resource_type": {"type": ["string", "null"]},
        "resource_id": {"type": ["string", "null"]},
        "changes": {"type": ["object", "null"]},
    },
}
FILTERS = (
    Field("actor", "string", max_length=255, description="e.g. user:<id> or api_key:<id>"),
    Field("action", "string", max_length=255, description="exact, or a prefix ending in *"),
    Field("resource_type", "string", max_length=255),
    Field("start", "string", description="RFC 3339, inclusive"),
    Field("end", "string", description="RFC 3339, exclusive"),
)


@operation(
    "This tenant's audit log (ADMIN)",
    tag="audit",
    security="tenant_admin",
    query=(*FILTERS, *PAGE_QUERY),
    responses={200: list_of(ENTRY)},
)
async def audit_log(request: Request) -> Response:
    require_tenant_admin()
    filters = {
        name: query_text(request, name, max_length=255)
        for name in ("actor", "action", "resource_type")
    }
    start, end = query_time(request, "start"), query_time(request, "end")
    if start is not None and end is not None and end <= start:
        raise invalid([{"field": "end", "message": "must be after start"}])
    tenant = current_tenant()
    born = tenant.created_at
    if born is not None and (start is None or start < born):
        start = born  # entries before it belong to a deleted tenant of the same id
    limit = query_int(request, "limit", 50, low=1, high=200)
    cursor = request.query_params.get("cursor")
    engine = services(request).db.engine
    found = await run_sync(
        lambda: audit.query(
            engine,
            tenant.id,
            start=start,
            end=end,
            limit=limit,
            cursor=cursor,
            **filters,
        )
    )
    return json({"items": [e.to_dict() for e in found.items], "next_cursor": found.next_cursor})


routes = [Route("/api/audit", audit_log, methods=["GET"], name="audit")]
