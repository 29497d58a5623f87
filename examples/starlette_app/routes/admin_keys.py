"""Platform admin: a tenant's API keys (``Authorization: Bearer $ADMIN_TOKEN``).

Listed, issued (the key shown once) and revoked, each change with its audit
entry in one transaction, as the tenant routes in ``admin`` are.
"""

from __future__ import annotations

from typing import Any

from anyio.to_thread import run_sync
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tenantkit.apikeys import KEY_ID_PATTERN, APIKeyRow, IssuedKey, api_key_to_dict

from ..openapi import PAGE_QUERY, list_of, operation
from ..services import json
from ..validation import Body, Field, query_int, read_json
from .admin import (
    MAX_LIMIT,
    NAMES,
    NEW_KEY,
    admin_services,
    audit_admin,
    new_key,
    path_tenant_id,
    transaction,
)

CREATE_KEY = Body(
    (
        NAMES,
        Field("scopes", "array", max_items=50, items=Field("scope", "string", max_length=100)),
        Field("rate_limit", "integer", nullable=True, minimum=1, maximum=MAX_LIMIT),
        Field("token_limit", "integer", nullable=True, minimum=1, maximum=MAX_LIMIT),
    )
)


@operation(
    "List a tenant's API keys (never the key itself)",
    tag="admin",
    security="admin",
    query=PAGE_QUERY,
    responses={200: list_of({"type": "object"})},
)
async def list_keys(request: Request) -> Response:
    s = admin_services(request)
    tenant_id = path_tenant_id(request)
    limit = query_int(request, "limit", 50, low=1, high=200)
    cursor = request.query_params.get("cursor")
    api_keys = s.kit.api_keys
    assert api_keys is not None

    def work() -> dict[str, Any]:
        s.kit.tenants.get(tenant_id)
        found = api_keys.list(tenant_id, limit=limit, cursor=cursor)
        return {
            "items": [api_key_to_dict(k) for k in found.items],
            "next_cursor": found.next_cursor,
        }

    return json(await run_sync(work))


@operation(
    "Issue another API key for a tenant (shown once)",
    tag="admin",
    security="admin",
    body=CREATE_KEY,
    responses={201: NEW_KEY},
)
async def create_key(request: Request) -> Response:
    s = admin_services(request)
    tenant_id = path_tenant_id(request)
    raw = await read_json(request, max_bytes=s.config.max_body_bytes)
    data = CREATE_KEY.parse(raw)
    api_keys = s.kit.api_keys
    assert api_keys is not None

    def work() -> IssuedKey:
        s.kit.tenants.get(tenant_id)
        with transaction(s, request, tenant_id) as session:
            issued = api_keys.issue(
                tenant_id,
                name=data.get("name", "api key"),
                scopes=data.get("scopes") or (),
                rate_limit=data.get("rate_limit"),
                token_limit=data.get("token_limit"),
                session=session,
            )
            audit_admin(
                session,
                "api_key.issued",
                tenant_id,
                resource_type="api_key",
                resource_id=issued.record.id,
            )
        return issued

    issued = await run_sync(work)
    return json(new_key(issued), 201, location=f"/admin/tenants/{tenant_id}/api-keys")


@operation(
    "Revoke an API key; it stops working at once (again: 204, nothing changes)",
    tag="admin",
    security="admin",
    responses={204: None},
)
async def revoke_key(request: Request) -> Response:
    s = admin_services(request)
    tenant_id = path_tenant_id(request)
    key_id: str = request.path_params["key_id"]
    api_keys = s.kit.api_keys
    assert api_keys is not None

    def work() -> None:
        with transaction(s, request, tenant_id) as session:
            if _revoked_already(session, tenant_id, key_id):
                return  # idempotent: no second revocation, no second audit entry
            api_keys.revoke(tenant_id, key_id, session=session)
            audit_admin(
                session, "api_key.revoked", tenant_id, resource_type="api_key", resource_id=key_id
            )

    await run_sync(work)
    await s.invalidations.keys_changed(tenant_id)
    return Response(status_code=204)


def _revoked_already(session: Session, tenant_id: str, key_id: str) -> bool:
    """Whether the tenant's key ``key_id`` is revoked (False if unknown: revoke answers 404).

    The row is locked (PostgreSQL), so of two concurrent revokes the second
    waits for the first to commit and then finds it revoked.
    """
    if KEY_ID_PATTERN.fullmatch(key_id) is None:
        return False
    revoked_at = session.execute(
        select(APIKeyRow.revoked_at)
        .where(APIKeyRow.id == key_id, APIKeyRow.tenant_id == tenant_id)
        .with_for_update()
    ).scalar_one_or_none()
    return revoked_at is not None


routes = [
    Route("/admin/tenants/{tenant_id}/api-keys", create_key, methods=["POST"], name="api_keys"),
    Route("/admin/tenants/{tenant_id}/api-keys", list_keys, methods=["GET"], name="api_keys"),
    Route(
        "/admin/tenants/{tenant_id}/api-keys/{key_id}",
        revoke_key,
        methods=["DELETE"],
        name="api_key",
    ),
]
