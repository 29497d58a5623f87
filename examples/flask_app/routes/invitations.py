"""Invitations: an admin invites an email; the invitee accepts once, before it expires.

The token reads ``<org_id>.<secret>``: accepting it binds that organization
as the tenant before anything is looked up, so the lookup itself is scoped.
Only the token's SHA-256 is stored. A new user accepts with a name and a
password; an existing user accepts with their bearer token (of any of their
organizations) or their password, and gets a token for the new membership.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, g, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from tenantkit import audit
from tenantkit.context import bound_tenant, current_tenant
from tenantkit.errors import (
    Conflict,
    Forbidden,
    NotFound,
    TenantNotFound,
    Unauthorized,
    UnprocessableEntity,
)

from .. import schemas
from ..api import endpoint
from ..context import db, now, platform
from ..credentials import bearer_identity
from ..errors import Gone
from ..members import issue_token
from ..models import Invitation, Membership, Organization, Project, User
from ..security import new_id, new_invitation_token, split_invitation_token, token_digest
from ..serialize import iso, member_dict
from ..usage_view import enforce, seats

bp = Blueprint("invitations", __name__)


@bp.post("/organizations/<org_id>/invitations")
@endpoint(
    "Invite someone by email (one-time token)",
    auth="admin",
    tag="users",
    body=schemas.INVITATION,
    status=201,
    responses=(401, 402, 403, 404, 409, 422),
    response="InvitationCreated",
    description="An email outside the organization's allowed_domains is a 422.",
)
def invite(org_id: str, body: dict[str, Any]) -> ResponseReturnValue:
    session = db()
    org: Organization = g.org
    email: str = body["email"]
    domain = email.rsplit("@", 1)[1]
    if org.allowed_domains and domain not in org.allowed_domains:
        raise UnprocessableEntity(
            f"{domain} is not one of this organization's allowed_domains",
            field="email",
            allowed_domains=list(org.allowed_domains),
        )
    check_projects(session, body.get("projects") or [])
    moment = now()
    user = session.scalars(select(User).where(User.email == email)).first()
    if user is None:
        user = User(id=new_id("usr"), email=email, name="", created_at=moment)
        session.add(user)
        session.flush()
    member = session.scalars(select(Membership).where(Membership.user_id == user.id)).first()
    if member is not None and member.status != "invited":
        raise Conflict("this email already belongs to a member", user_id=user.id)
    if member is None:
        enforce(current_tenant(), "users", seats(session) + 1)
        member = Membership(user_id=user.id, status="invited", created_at=moment)
        session.add(member)
    else:  # a new invitation replaces the open ones (an expired one can be renewed)
        for old in session.scalars(
            select(Invitation).where(
                Invitation.user_id == user.id, Invitation.accepted_at.is_(None)
            )
        ):
            old.revoked_at = moment
    member.role = body["role"]
    member.projects = body.get("projects") or []
    member.invited_by = g.member.user_id
    member.updated_at = moment
    token, digest = new_invitation_token(org_id)
    invitation = Invitation(
        id=new_id("inv"),
        token_hash=digest,
        email=email,
        user_id=user.id,
        role=body["role"],
        projects=member.projects,
        invited_by=g.member.user_id,
        created_at=moment,
        expires_at=moment + timedelta(seconds=platform().config.invitation_ttl_seconds),
    )
    session.add(invitation)
    session.commit()
    return jsonify(
        {
            "invitation_id": invitation.id,
            "org_id": org_id,
            "email": email,
            "role": invitation.role,
            "projects": invitation.projects,
            "token": token,
            "accept_url": f"/invitations/{token}/accept",
            "expires_at": iso(invitation.expires_at),
        }
    ), 201


@bp.post("/invitations/<token>/accept")
@endpoint(
    "Accept an invitation",
    auth="public",
    tag="users",
    body=schemas.ACCEPT,
    body_optional=True,
    responses=(401, 403, 404, 409, 410, 422),
    response="Accepted",
    description="A new user sends name and password. An existing user sends "
    "Authorization: Bearer <their token> (or their password). Used: 409; expired: 410.",
)
def accept(token: str, body: dict[str, Any]) -> ResponseReturnValue:
    p = platform()
    org_id = split_invitation_token(token)
    if org_id is None:
        raise NotFound("invitation not found")
    try:
        tenant = p.kit.tenants.get(org_id)
    except (TenantNotFound, ValueError):
        raise NotFound("invitation not found") from None
    with bound_tenant(tenant, request_id=g.get("request_id")), p.sessions() as session:
        invitation = session.scalars(
            select(Invitation).where(Invitation.token_hash == token_digest(token))
        ).first()
        if invitation is None or invitation.revoked_at is not None:
            raise NotFound("invitation not found")
        if invitation.accepted_at is not None:
            raise Conflict("this invitation has already been used")
        if invitation.expires_at <= now():
            raise Gone("this invitation has expired; ask for a new one")
        if not tenant.active:
            raise Forbidden("this organization is suspended", reason="suspended")
        user = session.get(User, invitation.user_id)
        member = session.scalars(
            select(Membership).where(Membership.user_id == invitation.user_id)
        ).first()
        if user is None or member is None or member.status != "invited":
            raise Conflict("this invitation no longer matches a pending membership")
        _prove_identity(user, body)
        moment = now()
        member.status, member.joined_at, member.updated_at = "active", moment, moment
        invitation.accepted_at = moment
        user.home_org_id = user.home_org_id or org_id
        with audit.acting_as(f"user:{user.id}"):
            session.commit()
        org = session.get(Organization, org_id)
        if org is None:  # pragma: no cover - every tenant of this app has its row
            raise NotFound("invitation not found")
        response = {
            "membership": {"org_id": org_id, **member_dict(member, user)},
            "token": issue_token(user, member, org, mfa=False),
        }
    return jsonify(response)


def _prove_identity(user: User, body: dict[str, Any]) -> None:
    """Check that the caller may act as ``user``; a new user sets name and password."""
    p = platform()
    if user.password_hash is None:
        missing = [name for name in ("name", "password") if not body.get(name)]
        if missing:
            raise UnprocessableEntity(
                f"a new account needs {' and '.join(missing)}",
                field=missing[0],
                errors=[{"field": m, "message": "is required"} for m in missing],
            )
        user.name = body["name"]
        user.password_hash = p.passwords.hash(body["password"])
        return
    who = bearer_identity()
    if who is not None:
        if who.subject != user.id:
            raise Forbidden("this invitation was sent to another account")
        return
    if body.get("password") and p.passwords.verify(user.password_hash, body["password"]):
        return
    raise Unauthorized("this email has an account: accept with its bearer token or password")


def check_projects(session: Session, project_ids: list[str]) -> None:
    if not project_ids:
        return
    found = set(session.scalars(select(Project.id).where(Project.id.in_(project_ids))))
    for index, project_id in enumerate(project_ids):
        if project_id not in found:
            raise UnprocessableEntity(
                f"project {project_id!r} does not exist in this organization",
                field=f"projects[{index}]",
            )
