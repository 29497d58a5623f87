"""The organization's audit log (owner/admin), newest first, with cursor pagination."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from tenantkit import audit
from tenantkit.errors import UnprocessableEntity

from .. import schemas
from ..api import endpoint
from ..context import platform
from ..serialize import page
from ..validation import parse_moment

bp = Blueprint("audit", __name__)


@bp.get("/organizations/<org_id>/audit")
@endpoint(
    "Query the audit log",
    auth="admin",
    tag="audit",
    query=schemas.AUDIT_QUERY,
    responses=(401, 403, 404, 422),
    response="AuditPage",
    description="start_date and end_date take YYYY-MM-DD (end_date includes that whole day) "
    "or RFC 3339 times; action ending in '*' matches a prefix ('project.*').",
)
def query_audit(org_id: str, query: dict[str, Any]) -> ResponseReturnValue:
    start = parse_moment(query["start_date"]) if "start_date" in query else None
    end = None
    if "end_date" in query:
        # A bare date names a whole day: the exclusive end is the next midnight.
        end = parse_moment(query["end_date"], end_of_day=True)
    if start is not None and end is not None and end < start:
        raise UnprocessableEntity("end_date is before start_date", field="end_date")
    found = audit.query(
        platform().engine,
        org_id,
        actor=f"user:{query['user_id']}" if "user_id" in query else None,
        action=query.get("action"),
        resource_type=query.get("resource_type"),
        start=start,
        end=end,
        limit=query["limit"],
        cursor=query.get("cursor"),
    )
    return jsonify(page((entry.to_dict() for entry in found.items), found.next_cursor))
