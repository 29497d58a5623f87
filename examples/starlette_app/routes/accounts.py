"""Self-service onboarding and login (seed 003): public routes that mint access tokens.

Both are outside the tenant pipeline (``/onboarding``, ``/auth`` are in
``exclude_paths``), so they bind the tenant themselves once they know it.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from anyio.to_thread import run_sync
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tenantkit import audit
from tenantkit.context import TenantContext, bind, bound_tenant, reset
from tenantkit.errors import TenantNotFound, TenantSuspended, Unauthorized
from tenantkit.identity import encode_token
from tenantkit.quotas import Limit
from tenantkit.tenants import tenant_to_dict
from tenantkit.types import TENANT_ID_PATTERN, Identity, TenantConfig

from ..accounts import add_user, email_actor, find_user
from ..auth import ADMIN, throttle_login
from ..models import User
from ..openapi import operation
from ..services import Services, json, services
from ..validation import Body, Field, email_field, invalid, read_json

PASSWORD = Field("password", "string", required=True, min_length=8, max_length=1024)
ONBOARD = Body(
    (
        Field("tenant_name", "string", required=True, min_length=1, max_length=200, not_blank=True),
        email_field(),
        PASSWORD,
        Field(
            "tenant_id",
            "string",
            pattern=TENANT_ID_PATTERN.pattern,
            description="defaults to a slug of tenant_name",
        ),
        Field(
            "name",
            "string",
            min_length=1,
            max_length=200,
            not_blank=True,
            description="the admin's name",
        ),
    )
)
LOGIN = Body(
    (
        Field("tenant_id", "string", required=True, min_length=1, max_length=63),
        email_field(),
        Field("password", "string", required=True, min_length=1, max_length=1024),
    )
)
TOKEN = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in"],
    "properties": {
        "access_token": {"type": "string"},
        "token_type": {"const": "bearer"},
        "expires_in": {"type": "integer"},
    },
}
_BAD_LOGIN = "invalid tenant, email or password"


def slugify(name: str) -> str:
    """Return a tenant id made from a display name (``"Karachi Tech"`` → ``karachi-tech``)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:63].strip("-")
    return slug if len(slug) >= 2 else ""


def issue_token(s: Services, user: User) -> dict[str, Any]:
    """Return a short-lived access token for ``user``."""
    token = encode_token(
        s.kit.settings,
        tenant_id=user.tenant_id,
        subject=user.id,
        roles=[user.role],
        expires_in=s.config.access_token_ttl,
        email=user.email,
    )
    return {"access_token": token, "token_type": "bearer", "expires_in": s.config.access_token_ttl}


@operation(
    "Sign up: create a tenant, its ADMIN user, and a token",
    tag="accounts",
    security="public",
    body=ONBOARD,
    responses={201: TOKEN},
    errors=(409, 429, 503),
)
async def onboard(request: Request) -> Response:
    s = services(request)
    data = ONBOARD.parse(await read_json(request, max_bytes=s.config.max_body_bytes))
    tenant_id = data.get("tenant_id") or slugify(data["tenant_name"])
    if not tenant_id:
        raise invalid([{"field": "tenant_name", "message": "needs letters or digits for an id"}])
    client = request.client.host if request.client else None
    await s.kit.quotas.acquire_async(
        [Limit("signup-client", f"signup:{client}", "requests", s.config.signups_per_minute)],
        tokens=0,
    )
    hashed = await run_sync(s.passwords.hash, data["password"])

    def work() -> tuple[TenantConfig, User]:
        # One transaction: the tenant, its admin and the audit entry are kept together or
        # not at all (no half-made tenant without an admin, no tenant without its entry).
        ctx = TenantContext(
            identity=Identity(tenant_id=tenant_id, source="system"),
            request_id=request.headers.get("x-request-id"),
            client=client,
            user_agent=request.headers.get("user-agent"),
        )
        token = bind(ctx)
        try:
            with (
                audit.acting_as(email_actor("signup", data["email"])),
                s.db.sessions.begin() as session,
            ):
                tenant = s.kit.tenants.create(
                    id=tenant_id,
                    name=data["tenant_name"],
                    quota_requests_per_minute=s.config.default_requests_per_minute,
                    quota_tokens_per_minute=s.config.default_tokens_per_minute,
                    metadata={"onboarded_by": data["email"]},
                    session=session,
                )
                user = add_user(
                    session,
                    email=data["email"],
                    name=data.get("name") or data["email"],
                    role=ADMIN,
                    password_hash=hashed,
                )
                audit.record(
                    session, "tenant.created", resource_type="tenant", resource_id=tenant_id
                )
        finally:
            reset(token)
        return tenant, user

    tenant, user = await run_sync(work)
    body = {
        "tenant_id": tenant.id,
        "tenant": tenant_to_dict(tenant),
        "user": user.to_dict(),
        **issue_token(s, user),
    }
    return json(body, 201, location=f"/api/users/{user.id}")


@operation(
    "Log in: exchange a password for a short-lived access token",
    tag="accounts",
    security="public",
    body=LOGIN,
    responses={200: TOKEN},
    errors=(401, 403, 429, 503),
)
async def login(request: Request) -> Response:
    s = services(request)
    data = LOGIN.parse(await read_json(request, max_bytes=s.config.max_body_bytes))
    tenant_id, email = data["tenant_id"], data["email"]
    if TENANT_ID_PATTERN.fullmatch(tenant_id) is None:
        raise Unauthorized(_BAD_LOGIN)
    client = request.client.host if request.client else None
    await throttle_login(
        s.kit.quotas,
        tenant_id=tenant_id,
        email=email,
        client=client,
        per_minute=s.config.login_attempts_per_minute,
    )
    user = await run_sync(lambda: _check_password(s, tenant_id, email, data["password"], client))
    return json(issue_token(s, user))


def _check_password(
    s: Services, tenant_id: str, email: str, password: str, client: str | None
) -> User:
    try:
        tenant = s.kit.tenants.get(tenant_id)
    except TenantNotFound:
        s.passwords.verify(None, password)  # same cost as a real check: no tenant oracle
        raise Unauthorized(_BAD_LOGIN) from None
    identity = Identity(tenant_id=tenant_id, source="system", subject=email)
    with bound_tenant(tenant, identity=identity), audit.acting_as(email_actor("login", email)):

        def work(session: Session) -> User | None:
            user = find_user(session, email)
            ok = s.passwords.verify(user.password_hash if user else None, password)
            action = "user.login" if ok else "user.login_failed"
            audit.record(
                session,
                action,
                resource_type="user",
                resource_id=user.id if user else None,
                metadata={"client": client},
            )
            stored = user.password_hash if user else None
            if ok and user is not None and stored and s.passwords.needs_rehash(stored):
                user.password_hash = s.passwords.hash(password)
            return user if ok else None

        user = s.db.transaction(work)
    if user is None:
        raise Unauthorized(_BAD_LOGIN)
    if not tenant.active:
        raise TenantSuspended(f"tenant {tenant_id!r} is suspended", reason="suspended")
    return user


routes = [
    Route("/onboarding", onboard, methods=["POST"], name="onboarding"),
    Route("/auth/token", login, methods=["POST"], name="token"),
]
