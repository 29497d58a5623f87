"""API keys of an organization: create (the key is shown once), list, revoke."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from tenantkit import audit
from tenantkit.apikeys import APIKey, APIKeyRow, APIKeyStore
from tenantkit.errors import UnprocessableEntity

from .. import schemas
from ..api import endpoint
from ..context import db, platform
from ..models import Project
from ..serialize import created, iso, page

bp = Blueprint("api_keys", __name__)


def key_dict(record: APIKey) -> dict[str, Any]:
    """Return a key's metadata (never the key)."""
    return {
        "key_id": record.id,
        "name": record.name,
        "key_prefix": record.prefix,
        "last4": record.last4,
        "project_id": record.project_id,
        "scopes": list(record.scopes),
        "rate_limit": record.rate_limit,
        "created_at": iso(record.created_at),
        "last_used_at": iso(record.last_used_at),
        "revoked_at": iso(record.revoked_at),
    }


@bp.post("/organizations/<org_id>/api-keys")
@endpoint(
    "Create an API key (the key is in this response only)",
    auth="admin",
    tag="api-keys",
    body=schemas.API_KEY,
    status=201,
    responses=(401, 403, 404, 422),
    response="APIKeyCreated",
)
def create_key(org_id: str, body: dict[str, Any]) -> ResponseReturnValue:
    project_id = body.get("project_id")
    if project_id is not None and db().get(Project, project_id) is None:
        raise UnprocessableEntity("project does not exist in this organization", field="project_id")
    issued = keys().issue(
        org_id,
        name=body["name"],
        scopes=body["scopes"],
        rate_limit=body.get("rate_limit"),
        project_id=project_id,
        session=db(),
    )
    _record("api_key.created", issued.record)
    return created(
        {**key_dict(issued.record), "key": issued.key},
        location=f"/organizations/{org_id}/api-keys/{issued.record.id}",
    )


@bp.get("/organizations/<org_id>/api-keys")
@endpoint(
    "List API keys (never the keys themselves)",
    auth="admin",
    tag="api-keys",
    query=schemas.PAGE_QUERY,
    responses=(401, 403, 404, 422),
    response="APIKeyPage",
)
def list_keys(org_id: str, query: dict[str, Any]) -> ResponseReturnValue:
    found = keys().list(org_id, limit=query["limit"], cursor=query.get("cursor"))
    return jsonify(page((key_dict(k) for k in found.items), found.next_cursor))


@bp.delete("/organizations/<org_id>/api-keys/<key_id>")
@endpoint(
    "Revoke an API key; it stops working at once",
    auth="admin",
    tag="api-keys",
    status=204,
    responses=(401, 403, 404),
)
def revoke_key(org_id: str, key_id: str) -> ResponseReturnValue:
    already = _revoked_already(key_id)
    record = keys().revoke(org_id, key_id, session=db())  # 404 unless it is this org's key
    if not already:  # a repeat changes nothing, so it is not audited again
        _record("api_key.revoked", record)
    return "", 204


def _revoked_already(key_id: str) -> bool:
    """Lock the key's row for this transaction; return whether it is revoked already.

    The lock (FOR UPDATE on PostgreSQL) makes a concurrent DELETE of the same
    key wait for this one and then see it revoked, so only one is audited.
    """
    row = db().get(APIKeyRow, key_id, with_for_update=True)
    return row is not None and row.revoked_at is not None


def _record(action: str, record: APIKey) -> None:
    """Audit a key change made in this request's session, and commit the two together."""
    metadata = {"name": record.name, "scopes": list(record.scopes), "prefix": record.prefix}
    audit.record(db(), action, resource_type="api_key", resource_id=record.id, metadata=metadata)
    db().commit()


def keys() -> APIKeyStore:
    """Return the API key store tenantkit verifies keys with."""
    store = platform().kit.api_keys
    if store is None:  # pragma: no cover - create_app always configures one
        raise RuntimeError("API keys are not configured")
    return store
