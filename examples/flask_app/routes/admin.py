"""Platform administration with ``ADMIN_TOKEN``: organizations and audit retention."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify
from flask.typing import ResponseReturnValue

from tenantkit import audit
from tenantkit.context import bound_tenant
from tenantkit.errors import UnprocessableEntity
from tenantkit.tenants import tenant_to_dict

from .. import org_changes, schemas
from ..api import endpoint
from ..context import platform
from ..jobs import purge_audit
from ..serialize import page

bp = Blueprint("admin", __name__)
PLATFORM_ACTOR = "platform:admin"


@bp.get("/admin/organizations")
@endpoint(
    "List every organization (platform admin)",
    auth="platform",
    tag="admin",
    query=schemas.PAGE_QUERY,
    responses=(401, 422),
    response="TenantPage",
)
def list_organizations(query: dict[str, Any]) -> ResponseReturnValue:
    found = platform().kit.tenants.list(limit=query["limit"], cursor=query.get("cursor"))
    return jsonify(page((tenant_to_dict(t) for t in found.items), found.next_cursor))


@bp.put("/admin/organizations/<org_id>")
@endpoint(
    "Suspend, reactivate or re-plan an organization (platform admin)",
    auth="platform",
    tag="admin",
    body=schemas.ADMIN_ORG_UPDATE,
    responses=(401, 404, 409, 422),
    response="Tenant",
    description="A suspended organization's requests get 403 at once.",
)
def update_organization(org_id: str, body: dict[str, Any]) -> ResponseReturnValue:
    if not body:
        raise UnprocessableEntity("send status or plan")
    p = platform()
    p.kit.tenants.invalidate(org_id)  # read what is stored: the entry below diffs against it
    before = p.kit.tenants.get(org_id)
    with (
        bound_tenant(before, request_id=g.get("request_id")),
        audit.acting_as(PLATFORM_ACTOR),
        p.sessions() as session,
    ):
        updated = org_changes.change(session, p.kit.tenants, before, **body)
        session.commit()
    return jsonify(tenant_to_dict(updated))


@bp.post("/admin/audit/purge")
@endpoint(
    "Delete audit entries older than AUDIT_RETENTION_DAYS (platform admin)",
    auth="platform",
    tag="admin",
    responses=(401,),
    response="PurgeResult",
)
def purge_audit_now() -> ResponseReturnValue:
    result = purge_audit(platform())
    return jsonify(
        {
            "deleted": result.deleted,
            "per_tenant": dict(result.per_tenant),
            "retention_days": platform().config.audit_retention_days,
        }
    )
