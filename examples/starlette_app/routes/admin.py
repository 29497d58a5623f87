"""Platform admin: tenants and their API keys (``Authorization: Bearer $ADMIN_TOKEN``).

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
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tenantkit import audit
from tenantkit.apikeys import KEY_ID_PATTERN, APIKeyRow, IssuedKey, api_key_to_dict
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
_NAMES = Field("name", "string", min_length=1, max_length=200, not_blank=True)
_TENANT_FIELDS = (
    _NAMES,
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
CREATE_KEY = Body(
    (
        _NAMES,
        Field("scopes", "array", max_items=50, items=Field("scope", "string", max_length=100)),
        Field("rate_limit", "integer", nullable=True, minimum=1, maximum=MAX_LIMIT),
        Field("token_limit", "integer", nullable=True, minimum=1, maximum=MAX_LIMIT),
    )
)

TENANT = {"type": "object", "required": ["id", "status", "version"]}
NEW_KEY = {"type": "object", "required": ["key_id", "key", "key_prefix"]}


def _tenant_id(request: Request) -> str:
    tenant_id: str = request.path_params["tenant_id"]
    if TENANT_ID_PATTERN.fullmatch(tenant_id) is None:
        raise NotFound(f"tenant {tenant_id!r} not found")
    return tenant_id


def _new_key(issued: IssuedKey) -> dict[str, Any]:
    return {
        **api_key_to_dict(issued.record),
        "key_id": issued.record.id,
        "key": issued.key,
        "key_prefix": issued.record.prefix,
    }


@contextmanager
def _transaction(s: Services, request: Request, tenant_id: str) -> Iterator[Session]:
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


def _audit(session: Session, action: str, tenant_id: str, **fields: Any) -> None:
    """Record a platform admin's action in the tenant's own audit log, in ``session``."""
    audit.record(session, action, tenant_id=tenant_id, **fields)


def _admin(request: Request) -> Services:
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
    s = _admin(request)
    data = CREATE_TENANT.parse(await read_json(request, max_bytes=s.config.max_body_bytes))
    tenant_id = data.pop("tenant_id")
    # Omitted quotas get the platform defaults (as signups do); an explicit null is unlimited.
    data.setdefault("quota_requests_per_minute", s.config.default_requests_per_minute)
    data.setdefault("quota_tokens_per_minute", s.config.default_tokens_per_minute)
    api_keys = s.kit.api_keys
    assert api_keys is not None  # the app always configures an API key secret

    def work() -> tuple[TenantConfig, IssuedKey]:
        with _transaction(s, request, tenant_id) as session:
            config = s.kit.tenants.create(id=tenant_id, session=session, **data)
            issued = api_keys.issue(tenant_id, name="default", session=session)
            _audit(
                session, "tenant.created", tenant_id, resource_type="tenant", resource_id=tenant_id
            )
        return config, issued

    config, issued = await run_sync(work)
    await s.invalidations.tenant_changed(tenant_id)  # others may cache it as unknown
    body = {**tenant_to_dict(config), "api_key": _new_key(issued)}
    return json(body, 201, location=f"/admin/tenants/{tenant_id}")


@operation(
    "List tenants",
    tag="admin",
    security="admin",
    query=PAGE_QUERY,
    responses={200: list_of(TENANT)},
)
async def list_tenants(request: Request) -> Response:
    s = _admin(request)
    limit = query_int(request, "limit", 50, low=1, high=200)
    cursor = request.query_params.get("cursor")
    found = await run_sync(lambda: s.kit.tenants.list(limit=limit, cursor=cursor))
    items = [tenant_to_dict(t) for t in found.items]
    return json({"items": items, "next_cursor": found.next_cursor})


@operation("Get a tenant", tag="admin", security="admin", responses={200: TENANT})
async def get_tenant(request: Request) -> Response:
    s = _admin(request)
    tenant_id = _tenant_id(request)
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
    s = _admin(request)
    tenant_id = _tenant_id(request)
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
            with _transaction(s, request, tenant_id) as session:
                config = s.kit.tenants.update(
                    tenant_id, expected_version=version, session=session, **data
                )
                after = tenant_to_dict(config)
                changes = {k: [before[k], after[k]] for k in data if before[k] != after[k]}
                _audit(
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
    s = _admin(request)
    tenant_id = _tenant_id(request)
    await run_sync(lambda: s.kit.tenants.get(tenant_id))  # 404 before touching anything

    def purge() -> None:
        with _transaction(s, request, tenant_id) as session:
            # Scoped bulk deletes: each statement is limited to this tenant.
            _delete_data(session, tenant_id)
            s.kit.tenants.delete(tenant_id, session=session)  # and its API keys
            # The audit trail outlives the tenant: compliance records are kept to retention.
            _audit(
                session, "tenant.deleted", tenant_id, resource_type="tenant", resource_id=tenant_id
            )

    await run_sync(purge)
    await s.invalidations.tenant_changed(tenant_id)
    return Response(status_code=204)


def _delete_data(session: Any, tenant_id: str) -> None:
    session.execute(delete(DeliveryQueue).where(DeliveryQueue.tenant_id == tenant_id))
    for model in TENANT_DATA:
        session.execute(delete(model))


@operation(
    "List a tenant's API keys (never the key itself)",
    tag="admin",
    security="admin",
    query=PAGE_QUERY,
    responses={200: list_of({"type": "object"})},
)
async def list_keys(request: Request) -> Response:
    s = _admin(request)
    tenant_id = _tenant_id(request)
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
    s = _admin(request)
    tenant_id = _tenant_id(request)
    raw = await read_json(request, max_bytes=s.config.max_body_bytes)
    data = CREATE_KEY.parse(raw)
    api_keys = s.kit.api_keys
    assert api_keys is not None

    def work() -> IssuedKey:
        s.kit.tenants.get(tenant_id)
        with _transaction(s, request, tenant_id) as session:
            issued = api_keys.issue(
                tenant_id,
                name=data.get("name", "api key"),
                scopes=data.get("scopes") or (),
                rate_limit=data.get("rate_limit"),
                token_limit=data.get("token_limit"),
                session=session,
            )
            _audit(
                session,
                "api_key.issued",
                tenant_id,
                resource_type="api_key",
                resource_id=issued.record.id,
            )
        return issued

    issued = await run_sync(work)
    return json(_new_key(issued), 201, location=f"/admin/tenants/{tenant_id}/api-keys")


@operation(
    "Revoke an API key; it stops working at once (again: 204, nothing changes)",
    tag="admin",
    security="admin",
    responses={204: None},
)
async def revoke_key(request: Request) -> Response:
    s = _admin(request)
    tenant_id = _tenant_id(request)
    key_id: str = request.path_params["key_id"]
    api_keys = s.kit.api_keys
    assert api_keys is not None

    def work() -> None:
        with _transaction(s, request, tenant_id) as session:
            if _revoked_already(session, tenant_id, key_id):
                return  # idempotent: no second revocation, no second audit entry
            api_keys.revoke(tenant_id, key_id, session=session)
            _audit(
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
    Route("/admin/tenants", create_tenant, methods=["POST"], name="tenants"),
    Route("/admin/tenants", list_tenants, methods=["GET"], name="tenants"),
    Route("/admin/tenants/{tenant_id}", get_tenant, methods=["GET"], name="tenant"),
    Route("/admin/tenants/{tenant_id}", update_tenant, methods=["PUT"], name="tenant"),
    Route("/admin/tenants/{tenant_id}", delete_tenant, methods=["DELETE"], name="tenant"),
    Route("/admin/tenants/{tenant_id}/api-keys", create_key, methods=["POST"], name="api_keys"),
    Route("/admin/tenants/{tenant_id}/api-keys", list_keys, methods=["GET"], name="api_keys"),
    Route(
        "/admin/tenants/{tenant_id}/api-keys/{key_id}",
        revoke_key,
        methods=["DELETE"],
        name="api_key",
    ),
]
