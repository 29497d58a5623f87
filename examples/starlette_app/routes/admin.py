"""Platform admin: tenants (``Authorization: Bearer $ADMIN_TOKEN``); their keys: ``admin_keys``.

These paths are in ``Settings.exclude_paths``: the tenant pipeline skips
them and the app checks the admin token itself. Each change and its audit
entry are one transaction: tenantkit's stores write through the session
(``session=``), so a failure anywhere keeps nothing of the change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from anyio.to_thread import run_sync
from sqlalchemy import delete
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tenantkit import audit
from tenantkit.apikeys import IssuedKey, api_key_to_dict
from tenantkit.context import TenantContext, bind, reset
from tenantkit.errors import Conflict, NotFound
from tenantkit.tenants import tenant_to_dict
from tenantkit.types import TENANT_ID_PATTERN, Identity, TenantConfig

from ..auth import require_admin_token
from ..models import TENANT_DATA, DeliveryQueue
from ..openapi import PAGE_QUERY, list_of, operation
from ..services import Services, json, services
from ..validation import Body, Field, invalid, query_int, read_json

#: Quotas and key limits are stored as 32-bit integers.
MAX_LIMIT = 2**31 - 1
#: Compare-and-set rounds of an update without a version before giving up with 409.
_UPDATE_ATTEMPTS = 5
NAMES = Field("name", "string", min_length=1, max_length=200, not_blank=True)
_TENANT_FIELDS = (
    NAMES,
    Field(
        "quota_requests_per_minute",
        "integer",
        nullable=True,
        minimum=0,
        maximum=MAX_LIMIT,
        description="null: unlimited; omitted on creation: 600",
    ),
    Field(
        "quota_tokens_per_minute",
        "integer",
        nullable=True,
        minimum=0,
        maximum=MAX_LIMIT,
        description="null: unlimited; omitted on creation: 100000",
    ),
    Field(
        "allowed_models",
        "array",
        nullable=True,
        max_items=500,
        items=Field("model", "string", min_length=1, max_length=200),
    ),
    Field(
        "allowed_tools",
        "array",
        nullable=True,
        max_items=500,
        items=Field("tool", "string", min_length=1, max_length=200),
    ),
    Field("metadata", "object", description="free-form; notification_webhook_url is used"),
    Field("plan", "string", min_length=1, max_length=64),
    Field("status", "string", enum=("active", "suspended")),
)
CREATE_TENANT = Body(
    (
        Field("tenant_id", "string", required=True, pattern=TENANT_ID_PATTERN.pattern),
        *_TENANT_FIELDS,
    )
)
UPDATE_TENANT = Body(
    (
        *_TENANT_FIELDS,
        Field("version", "integer", minimum=1, maximum=MAX_LIMIT, description="expected version"),
    ),
    min_fields=1,
)
TENANT = {"type": "object", "required": ["id", "status", "version"]}
NEW_KEY = {"type": "object", "required": ["key_id", "key", "key_prefix"]}


def path_tenant_id(request: Request) -> str:
    tenant_id: str = request.path_params["tenant_id"]
    if TENANT_ID_PATTERN.fullmatch(tenant_id) is None:
        raise NotFound(f"tenant {tenant_id!r} not found")
    return tenant_id


def new_key(issued: IssuedKey) -> dict[str, Any]:
    return {
        **api_key_to_dict(issued.record),
        "key_id": issued.record.id,
        "key": issued.key,
        "key_prefix": issued.record.prefix,
    }


@contextmanager
def transaction(s: Services, request: Request, tenant_id: str) -> Iterator[Session]:
    """One transaction on ``tenant_id``'s behalf, committed if the block returns.

    Audit entries written in it go to the tenant's own log, attributed to
    the platform admin, with the request's id and client.
    """
    ctx = TenantContext(
        identity=Identity(tenant_id=tenant_id, source="system"),
        request_id=request.headers.get("x-request-id"),
        client=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )
    token = bind(ctx)
    try:
        with audit.acting_as("platform:admin"), s.db.sessions.begin() as session:
            yield session
    finally:
        reset(token)


def audit_admin(session: Session, action: str, tenant_id: str, **fields: Any) -> None:
    """Record a platform admin's action in the tenant's own audit log, in ``session``."""
    audit.record(session, action, tenant_id=tenant_id, **fields)


def admin_services(request: Request) -> Services:
    s = services(request)
    require_admin_token(request, s.config.admin_token)
    return s


@operation(
    "Create a tenant and its first API key (shown once)",
    tag="admin",
    security="admin",
    body=CREATE_TENANT,
    responses={201: {**TENANT, "properties": {"api_key": NEW_KEY}}},
    errors=(409,),
)
async def create_tenant(request: Request) -> Response:
    s = admin_services(request)
    data = CREATE_TENANT.parse(await read_json(request, max_bytes=s.config.max_body_bytes))
    tenant_id = data.pop("tenant_id")
    # Omitted quotas get the platform defaults (as signups do); an explicit null is unlimited.
    data.setdefault("quota_requests_per_minute", s.config.default_requests_per_minute)
    data.setdefault("quota_tokens_per_minute", s.config.default_tokens_per_minute)
    api_keys = s.kit.api_keys
    assert api_keys is not None  # the app always configures an API key secret

    def work() -> tuple[TenantConfig, IssuedKey]:
        with transaction(s, request, tenant_id) as session:
            config = s.kit.tenants.create(id=tenant_id, session=session, **data)
            issued = api_keys.issue(tenant_id, name="default", session=session)
            audit_admin(
                session, "tenant.created", tenant_id, resource_type="tenant", resource_id=tenant_id
            )
        return config, issued

    config, issued = await run_sync(work)
    await s.invalidations.tenant_changed(tenant_id)  # others may cache it as unknown
    body = {**tenant_to_dict(config), "api_key": new_key(issued)}
    return json(body, 201, location=f"/admin/tenants/{tenant_id}")


@operation(
    "List tenants",
    tag="admin",
    security="admin",
    query=PAGE_QUERY,
    responses={200: list_of(TENANT)},
)
async def list_tenants(request: Request) -> Response:
    s = admin_services(request)
    limit = query_int(request, "limit", 50, low=1, high=200)
    cursor = request.query_params.get("cursor")
    found = await run_sync(lambda: s.kit.tenants.list(limit=limit, cursor=cursor))
    items = [tenant_to_dict(t) for t in found.items]
    return json({"items": items, "next_cursor": found.next_cursor})


@operation("Get a tenant", tag="admin", security="admin", responses={200: TENANT})
async def get_tenant(request: Request) -> Response:
    s = admin_services(request)
    tenant_id = path_tenant_id(request)
    return json(tenant_to_dict(await run_sync(lambda: s.kit.tenants.get(tenant_id))))


@operation(
    "Change a tenant (takes effect on its next request)",
    tag="admin",
    security="admin",
    body=UPDATE_TENANT,
    responses={200: TENANT},
    errors=(409,),
)
async def update_tenant(request: Request) -> Response:
    s = admin_services(request)
    tenant_id = path_tenant_id(request)
    data = UPDATE_TENANT.parse(await read_json(request, max_bytes=s.config.max_body_bytes))
    expected = data.pop("version", None)
    if not data:
        raise invalid([{"field": "body", "message": "give a field to change besides version"}])

    updated = await run_sync(lambda: _update(s, request, tenant_id, expected, data))
    await s.invalidations.tenant_changed(tenant_id)
    return json(tenant_to_dict(updated))


def _update(
    s: Services, request: Request, tenant_id: str, expected: int | None, data: dict[str, Any]
) -> TenantConfig:
    """Apply ``data`` and audit what it replaced, in one transaction; return the result.

    The before-values are read from the database, not this process's cache
    (another process may have changed the tenant since), and the write is a
    compare-and-set on their version, so no change slips in between.
    """
    for attempt in range(_UPDATE_ATTEMPTS):
        s.kit.tenants.invalidate(tenant_id)
        before = tenant_to_dict(s.kit.tenants.get(tenant_id))
        version = before["version"] if expected is None else expected
        try:
            with transaction(s, request, tenant_id) as session:
                config = s.kit.tenants.update(
                    tenant_id, expected_version=version, session=session, **data
                )
                after = tenant_to_dict(config)
                changes = {k: [before[k], after[k]] for k in data if before[k] != after[k]}
                audit_admin(
                    session,
                    "tenant.updated",
                    tenant_id,
                    resource_type="tenant",
                    resource_id=tenant_id,
                    changes=changes,
                )
        except Conflict:
            if expected is not None or attempt == _UPDATE_ATTEMPTS - 1:
                raise
            continue
        return config
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


@operation(
    "Delete a tenant with all its data and keys",
    tag="admin",
    security="admin",
    responses={204: None},
)
async def delete_tenant(request: Request) -> Response:
    s = admin_services(request)
    tenant_id = path_tenant_id(request)
    await run_sync(lambda: s.kit.tenants.get(tenant_id))  # 404 before touching anything

    def purge() -> None:
        with transaction(s, request, tenant_id) as session:
            # Scoped bulk deletes: each statement is limited to this tenant.
            _delete_data(session, tenant_id)
            s.kit.tenants.delete(tenant_id, session=session)  # and its API keys
            # The audit trail outlives the tenant: compliance records are kept to retention.
            audit_admin(
                session, "tenant.deleted", tenant_id, resource_type="tenant", resource_id=tenant_id
            )

    await run_sync(purge)
    await s.invalidations.tenant_changed(tenant_id)
    return Response(status_code=204)


def _delete_data(session: Any, tenant_id: str) -> None:
    session.execute(delete(DeliveryQueue).where(DeliveryQueue.tenant_id == tenant_id))
    for model in TENANT_DATA:
        session.execute(delete(model))


routes = [
    Route("/admin/tenants", create_tenant, methods=["POST"], name="tenants"),
    Route("/admin/tenants", list_tenants, methods=["GET"], name="tenants"),
    Route("/admin/tenants/{tenant_id}", get_tenant, methods=["GET"], name="tenant"),
    Route("/admin/tenants/{tenant_id}", update_tenant, methods=["PUT"], name="tenant"),
    Route("/admin/tenants/{tenant_id}", delete_tenant, methods=["DELETE"], name="tenant"),
]
