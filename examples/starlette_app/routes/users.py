"""A tenant's users (seed 002) and members who log in (seed 003).

Every query below names no tenant: the scoped session adds it, so another
tenant's id is simply not found (404, never 403: existence is not revealed).
"""

from __future__ import annotations

from typing import Any

from anyio.to_thread import run_sync
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tenantkit.errors import Conflict, NotFound

from ..accounts import add_user
from ..auth import ROLES, require_tenant_admin
from ..models import User, is_id
from ..openapi import PAGE_QUERY, list_of, operation
from ..paging import page, page_params
from ..services import json, services
from ..validation import Body, Field, email_field, read_json

NAME = Field("name", "string", required=True, min_length=1, max_length=200, not_blank=True)
CREATE_USER = Body((email_field(), NAME))
CREATE_MEMBER = Body(
    (
        email_field(),
        NAME,
        Field("password", "string", required=True, min_length=8, max_length=1024),
        Field("role", "string", required=True, enum=ROLES),
    )
)
USER = {
    "type": "object",
    "required": ["id", "email", "name", "role"],
    "properties": {
        "id": {"type": "string"},
        "tenant_id": {"type": "string"},
        "email": {"type": "string"},
        "name": {"type": "string"},
        "role": {"type": "string", "enum": list(ROLES)},
        "can_log_in": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"},
    },
}


@operation(
    "List the tenant's users",
    tag="users",
    security="tenant",
    query=PAGE_QUERY,
    responses={200: list_of(USER)},
)
async def list_users(request: Request) -> Response:
    limit, after = page_params(request)

    def work(session: Session) -> dict[str, Any]:
        query = select(User).order_by(User.id).limit(limit + 1)
        if after is not None:
            query = query.where(User.id > after)
        return page(session.scalars(query).all(), limit)

    return json(await services(request).db.run(work))


@operation(
    "Add a user to the tenant",
    tag="users",
    security="tenant",
    body=CREATE_USER,
    responses={201: USER},
    errors=(409,),
)
async def create_user(request: Request) -> Response:
    s = services(request)
    require_tenant_admin()
    data = CREATE_USER.parse(await read_json(request, max_bytes=s.config.max_body_bytes))
    user = await s.db.run(lambda session: add_user(session, email=data["email"], name=data["name"]))
    return json(user.to_dict(), 201, location=f"/api/users/{user.id}")


@operation("Get a user", tag="users", security="tenant", responses={200: USER})
async def get_user(request: Request) -> Response:
    user_id = request.path_params["user_id"]
    user = await services(request).db.run(lambda session: _user(session, user_id))
    return json(user.to_dict())


@operation(
    "Delete a user (409 while they have created tasks)",
    tag="users",
    security="tenant",
    responses={204: None},
    errors=(409,),
)
async def delete_user(request: Request) -> Response:
    require_tenant_admin()
    user_id = request.path_params["user_id"]

    def work(session: Session) -> None:
        session.delete(_user(session, user_id))
        try:
            session.flush()
        except IntegrityError as exc:
            raise Conflict(
                "the user has created tasks; delete or reassign them first", reason="has_tasks"
            ) from exc

    await services(request).db.run(work)
    return Response(status_code=204)


@operation(
    "Add a member who can log in (ADMIN only)",
    tag="users",
    security="tenant_admin",
    body=CREATE_MEMBER,
    responses={201: USER},
    errors=(409,),
)
async def create_member(request: Request) -> Response:
    s = services(request)
    require_tenant_admin()
    data = CREATE_MEMBER.parse(await read_json(request, max_bytes=s.config.max_body_bytes))
    hashed = await run_sync(s.passwords.hash, data["password"])
    user = await s.db.run(
        lambda session: add_user(
            session,
            email=data["email"],
            name=data["name"],
            role=data["role"],
            password_hash=hashed,
        )
    )
    return json(user.to_dict(), 201, location=f"/api/users/{user.id}")


def _user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id) if is_id(user_id) else None
    if user is None:
        raise NotFound(f"user {user_id!r} not found")
    return user


routes = [
    Route("/api/users", list_users, methods=["GET"], name="users"),
    Route("/api/users", create_user, methods=["POST"], name="users"),
    Route("/api/users/{user_id}", get_user, methods=["GET"], name="user"),
    Route("/api/users/{user_id}", delete_user, methods=["DELETE"], name="user"),
    Route("/api/members", create_member, methods=["POST"], name="members"),
]
