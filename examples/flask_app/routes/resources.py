"""Resource usage recorded with API keys, and the monthly usage report."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from tenantkit import audit
from tenantkit.context import current_identity, current_tenant
from tenantkit.errors import Forbidden, UnprocessableEntity
from tenantkit.plans import Resource
from tenantkit.usage import UsageEvent

from .. import schemas
from ..api import endpoint
from ..context import db, platform
from ..models import Project
from ..usage_view import API_CALLS, STORAGE, TYPE_ALIASES, enforce
from ..validation import Field

bp = Blueprint("resources", __name__)
IDEMPOTENCY_HEADER = "Idempotency-Key"


@bp.post("/organizations/<org_id>/resources")
@endpoint(
    "Record resource usage (API key with write:resources)",
    auth="api_key",
    scope="write:resources",
    tag="usage",
    body=schemas.RESOURCE,
    status=201,
    responses=(401, 402, 403, 404, 409, 422, 429),
    response="UsageRecord",
    headers=(
        Field(
            IDEMPOTENCY_HEADER,
            "string",
            min_length=1,
            max_length=255,
            description="Same as idempotency_key in the body (they must agree if both are sent).",
        ),
    ),
    description="idempotency_key (or the Idempotency-Key header) makes a retry safe: the "
    "repeat answers with the original event and is not counted twice. A key bound to a "
    "project records usage for that project only. On a plan with a hard API-call cap, "
    "calls past the month's allowance are 402; storage past the plan's limit is 402.",
)
def record_usage(org_id: str, body: dict[str, Any]) -> ResponseReturnValue:
    who = current_identity()
    key_project = who.claims.get("project_id")
    if key_project is not None and key_project != body["project_id"]:
        raise Forbidden("this API key is bound to another project", reason="project")
    if db().get(Project, body["project_id"]) is None:
        raise UnprocessableEntity("project does not exist in this organization", field="project_id")
    header_key = request.headers.get(IDEMPOTENCY_HEADER)
    key = body.get("idempotency_key") or header_key
    if body.get("idempotency_key") and header_key and header_key != body["idempotency_key"]:
        raise UnprocessableEntity(
            f"the {IDEMPOTENCY_HEADER} header and idempotency_key differ", field="idempotency_key"
        )
    kind = TYPE_ALIASES.get(body["type"], body["type"])
    p = platform()
    tenant = current_tenant()
    if kind in (API_CALLS, STORAGE):
        _check_plan(tenant, kind, body["quantity"], key)
    record = p.usage.record(
        kind,
        body["quantity"],
        project_id=body["project_id"],
        metadata=body.get("metadata") or {},
        idempotency_key=key,
        session=db(),  # the event and its audit entry commit together
    )
    if not record.duplicate:
        audit.record(
            db(),
            "resource.recorded",
            resource_type="usage_event",
            resource_id=record.id,
            metadata={"type": kind, "quantity": record.quantity, "project_id": record.project_id},
        )
    db().commit()
    if p.billing is not None and not record.duplicate:
        p.billing.on_usage(record)
    response = jsonify(record.to_dict())
    response.status_code = 201
    if record.duplicate:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/organizations/<org_id>/usage")
@endpoint(
    "Usage report for a billing cycle (default: the current month)",
    auth="member",
    tag="usage",
    query=schemas.USAGE_QUERY,
    responses=(401, 404, 422),
    response="UsageReport",
)
def usage_report(org_id: str, query: dict[str, Any]) -> ResponseReturnValue:
    report = platform().usage.report(org_id, query.get("billing_cycle"), plan=current_tenant())
    return jsonify(report.to_dict())


def _check_plan(tenant: Any, kind: str, quantity: int, key: str | None) -> None:
    """Refuse usage past a hard plan limit (402), unless it repeats a recorded event."""
    p = platform()
    plan = p.plans.resolve(tenant)
    if kind == API_CALLS and plan.api_call_cap != "hard":
        return  # soft caps bill the overage instead
    if key is not None and _already_recorded(key):
        return
    report = p.usage.report(tenant.id, plan=tenant)
    resource: Resource = "api_calls" if kind == API_CALLS else "storage_gb"
    enforce(tenant, resource, report.totals.get(kind, 0) + quantity)


def _already_recorded(key: str) -> bool:
    found = db().scalars(select(UsageEvent.id).where(UsageEvent.idempotency_key == key)).first()
    return found is not None
