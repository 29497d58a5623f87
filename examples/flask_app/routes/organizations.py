"""Organizations: public onboarding, the organization view, its settings and its plan."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenantkit import audit
from tenantkit.context import bound_tenant, current_tenant
from tenantkit.errors import Conflict, Unauthorized, UnprocessableEntity
from tenantkit.types import TenantConfig

from .. import org_changes, schemas
from ..api import endpoint
from ..context import db, now, platform
from ..members import issue_token
from ..models import Membership, Organization, User
from ..security import new_id
from ..serialize import created, iso, settings_dict, user_dict
from ..usage_view import current_usage, project_count, seats

bp = Blueprint("organizations", __name__)


@bp.post("/organizations")
@endpoint(
    "Create an organization (public onboarding)",
    auth="public",
    tag="organizations",
    body=schemas.ONBOARDING,
    status=201,
    responses=(401, 409, 422),
    response="Onboarded",
    description="Creates the organization (a tenant), its owner and a token for the owner. "
    "An existing user onboards another organization by giving their own password; an "
    "email with a pending invitation (no password yet) is a 409 until it is accepted.",
)
def onboard(body: dict[str, Any]) -> ResponseReturnValue:
    p = platform()
    org_id = body["slug"]
    # One transaction: the tenant, its organization, the owner and their audit entries,
    # or none of them; the tenant caches learn of it only once that commits.
    with bound_tenant(org_id, request_id=g.get("request_id")), p.sessions() as session:
        tenant = p.kit.tenants.create(
            id=org_id,
            name=body["name"],
            plan=body["plan"],
            quota_requests_per_minute=p.config.default_rate_limit,
            session=session,
        )
        user = _owner(session, body)
        moment = now()
        org = Organization(id=org_id, owner_id=user.id, created_at=moment, updated_at=moment)
        member = Membership(
            user_id=user.id,
            role="owner",
            status="active",
            joined_at=moment,
            created_at=moment,
            updated_at=moment,
        )
        session.add_all([org, member])
        with audit.acting_as(f"user:{user.id}"):
            session.commit()
        token = issue_token(user, member, org, mfa=False)
        summary = _organization(session, org, tenant=tenant)
    if p.billing is not None:
        p.billing.on_onboarding(tenant, user.email)
    return created(
        {"organization": summary, "owner": user_dict(user), "token": token},
        location=f"/organizations/{org_id}",
    )


@bp.get("/organizations/<org_id>")
@endpoint(
    "Get an organization with its plan, limits and current usage",
    auth="member",
    tag="organizations",
    responses=(401, 404),
    response="Organization",
)
def get_organization(org_id: str) -> ResponseReturnValue:
    return jsonify(_organization(db(), g.org))


@bp.put("/organizations/<org_id>/settings")
@endpoint(
    "Change the organization's security settings",
    auth="admin",
    tag="organizations",
    body=schemas.SETTINGS,
    responses=(401, 403, 404, 422),
    response="Settings",
)
def update_settings(org_id: str, body: dict[str, Any]) -> ResponseReturnValue:
    if not body:
        raise UnprocessableEntity(
            "send at least one of require_mfa, allowed_domains, session_timeout"
        )
    org: Organization = g.org
    if "allowed_domains" in body:
        body["allowed_domains"] = sorted(set(body["allowed_domains"]))
    for name, value in body.items():
        setattr(org, name, value)
    org.updated_at = now()
    db().commit()
    return jsonify(settings_dict(org))


@bp.put("/organizations/<org_id>/plan")
@endpoint(
    "Change the organization's plan (owner)",
    auth="owner",
    tag="organizations",
    body=schemas.PLAN_CHANGE,
    responses=(401, 402, 403, 404, 422),
    response="Organization",
    description="A downgrade the current seats or projects do not fit is refused with 402.",
)
def change_plan(org_id: str, body: dict[str, Any]) -> ResponseReturnValue:
    p = platform()
    tenant = current_tenant()
    session = db()
    target = p.plans.get(body["plan"])
    p.plans.enforce(target, "users", seats(session))
    p.plans.enforce(target, "projects", project_count(session))
    if p.billing is not None:
        p.billing.change_plan(tenant.id, target.name)  # the tenant's plan follows Stripe
    elif target.name != tenant.plan:
        org_changes.change(session, p.kit.tenants, tenant, plan=target.name)
        session.commit()
    return jsonify(_organization(session, g.org))


def _owner(session: Session, body: dict[str, Any]) -> User:
    p = platform()
    email = body["owner_email"]
    user = session.scalars(select(User).where(User.email == email)).first()
    if user is not None and user.password_hash is not None:
        if not p.passwords.verify(user.password_hash, body["owner_password"]):
            raise Unauthorized("this email has an account; give its password to onboard")
        return user
    if user is not None:
        # Invited, never signed up: its password is the invitee's to set, by accepting.
        raise Conflict(
            "this email has a pending invitation; accept it (setting a password), then onboard"
            " with that password"
        )
    user = User(id=new_id("usr"), email=email, created_at=now())
    session.add(user)
    user.name = body.get("owner_name") or email.split("@")[0]
    user.password_hash = p.passwords.hash(body["owner_password"])
    user.home_org_id = body["slug"]
    try:
        session.flush()
    except IntegrityError as exc:  # the same new email onboarded twice at once
        raise Conflict("an account with this email was just created; retry") from exc
    return user


def _organization(
    session: Session, org: Organization, *, tenant: TenantConfig | None = None
) -> dict[str, Any]:
    config = tenant or platform().kit.tenants.get(org.id)
    return {
        "id": org.id,
        "name": config.name,
        "slug": org.id,
        "status": config.status,
        **current_usage(session, config),
        "settings": settings_dict(org),
        "owner_id": org.owner_id,
        "created_at": iso(org.created_at),
    }
