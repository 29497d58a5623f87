"""Members of an organization: list with filters, change role, projects or status."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified
from sqlalchemy.orm.exc import StaleDataError

from tenantkit.context import current_tenant
from tenantkit.errors import Conflict, Forbidden, NotFound

from .. import schemas
from ..api import endpoint
from ..context import db, now
from ..models import Invitation, Membership, Organization, Project, User
from ..pagination import decode_cursor, encode_cursor, filtered_page
from ..serialize import member_dict, page
from ..usage_view import enforce, seats
from .invitations import check_projects

bp = Blueprint("users", __name__)


@bp.get("/organizations/<org_id>/users")
@endpoint(
    "List the organization's users",
    auth="member",
    tag="users",
    query=schemas.USER_QUERY,
    responses=(401, 404, 422),
    response="MemberPage",
)
def list_users(org_id: str, query: dict[str, Any]) -> ResponseReturnValue:
    base = select(Membership, User).join(User, User.id == Membership.user_id)
    if "role" in query:
        base = base.where(Membership.role == query["role"])
    if "status" in query:
        base = base.where(Membership.status == query["status"])
    project_id = query.get("project_id")

    def fetch(after: int | None, size: int) -> list[tuple[Membership, User]]:
        statement = base.order_by(Membership.id).limit(size)
        if after is not None:
            statement = statement.where(Membership.id > after)
        return [(m, u) for m, u in db().execute(statement)]

    rows, last = filtered_page(
        fetch,
        # Project access is a short JSON list per member: filtered here, portably.
        lambda row: project_id is None or project_id in row[0].projects,
        lambda row: row[0].id,
        limit=query["limit"],
        after=decode_cursor(query.get("cursor"), int),
    )
    next_cursor = None if last is None else encode_cursor(last)
    return jsonify(page((member_dict(m, u) for m, u in rows), next_cursor))


@bp.put("/organizations/<org_id>/users/<user_id>")
@endpoint(
    "Change a member's role, project access or status",
    auth="admin",
    tag="users",
    body=schemas.USER_UPDATE,
    responses=(401, 402, 403, 404, 409, 422),
    response="Member",
    description="Send the version you read; a stale version is a 409. Only an owner "
    "grants or changes the owner role; the last owner cannot be demoted or suspended. "
    "Reactivating a suspended member takes a seat: past the plan's users, 402.",
)
def update_user(org_id: str, user_id: str, body: dict[str, Any]) -> ResponseReturnValue:
    session = db()
    found = session.execute(
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.user_id == user_id)
    ).first()
    if found is None:
        raise NotFound("user not found")
    member, user = found
    if member.version != body["version"]:
        raise _stale(member.version)
    caller: Membership = g.member
    touches_owner = member.role == "owner" or body.get("role") == "owner"
    if touches_owner and caller.role != "owner":
        raise Forbidden("only an owner can grant or change the owner role", reason="role")
    if "status" in body and member.status == "invited":
        raise Conflict("an invited user becomes active by accepting the invitation")
    losing_owner = member.role == "owner" and (
        body.get("role", "owner") != "owner" or body.get("status") == "suspended"
    )
    if losing_owner and _active_owners(session) <= 1:
        raise Conflict("an organization keeps at least one active owner")
    if body.get("status") == "active" and member.status == "suspended":
        enforce(current_tenant(), "users", seats(session) + 1)  # a suspended member holds no seat
    if "projects" in body:
        check_projects(session, body["projects"])
    for name in ("role", "projects", "status"):
        if name in body:
            setattr(member, name, body[name])
    member.updated_at = now()
    if touches_owner:
        _owners_changed(session, g.org)
    try:
        session.commit()
    except StaleDataError as exc:  # changed by someone else between our read and write
        session.rollback()
        raise _stale(None) from exc
    return jsonify(member_dict(member, user))


def _active_owners(session: Session) -> int:
    owners = session.scalars(
        select(Membership.id).where(Membership.role == "owner", Membership.status == "active")
    )
    return len(list(owners))


def _owners_changed(session: Session, org: Organization) -> None:
    """Point ``owner_id`` at an active owner and write the organization row, under its version.

    Two owners demoting each other at once both count two owners; without a
    common row both commits pass and no owner is left. The organization's
    version check lets the first commit win and turns the second into a 409.
    """
    owners = list(
        session.scalars(  # autoflush: sees the change being made
            select(Membership.user_id)
            .where(Membership.role == "owner", Membership.status == "active")
            .order_by(Membership.id)
        )
    )
    if owners and org.owner_id not in owners:
        org.owner_id = owners[0]
    org.updated_at = now()
    flag_modified(org, "updated_at")  # written even when the clock has not moved


def _stale(current: int | None) -> Conflict:
    detail = "the resource changed since you read it; reload and retry"
    if current is None:
        return Conflict(detail)
    return Conflict(detail, current_version=current)


@bp.delete("/organizations/<org_id>/users/<user_id>")
@endpoint(
    "Remove a member (or withdraw an invitation)",
    auth="admin",
    tag="users",
    status=204,
    responses=(401, 403, 404, 409),
    description="Frees the seat, withdraws open invitations and takes the user off project "
    "teams. Only an owner removes an owner; the last active owner stays.",
)
def remove_user(org_id: str, user_id: str) -> ResponseReturnValue:
    session = db()
    member = session.scalars(select(Membership).where(Membership.user_id == user_id)).first()
    if member is None:
        raise NotFound("user not found")
    caller: Membership = g.member
    if member.role == "owner":
        if caller.role != "owner":
            raise Forbidden("only an owner can remove an owner", reason="role")
        if member.status == "active" and _active_owners(session) <= 1:
            raise Conflict("an organization keeps at least one active owner")
    moment = now()
    for invitation in session.scalars(
        select(Invitation).where(Invitation.user_id == user_id, Invitation.accepted_at.is_(None))
    ):
        invitation.revoked_at = moment
    for project in session.scalars(select(Project)):
        team = [entry for entry in project.team if entry.get("user_id") != user_id]
        if len(team) != len(project.team):
            project.team, project.updated_at = team, moment
    session.delete(member)
    if member.role == "owner":
        _owners_changed(session, g.org)
    session.commit()
    return "", 204
