"""Sign-in (one token per membership) and TOTP enrolment (RFC 6238).

A token names one organization. A user of several organizations signs in
with ``org_id`` for each (without it, the first organization they joined).
When the organization sets ``require_mfa``, a member who enrolled a second
factor must send ``totp_code``; members who have not enrolled are told to.
"""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Blueprint, g, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from tenantkit import audit
from tenantkit.context import bound_tenant
from tenantkit.errors import Conflict, Forbidden, TenantNotFound, Unauthorized, UnprocessableEntity
from tenantkit.quotas import Limit

from .. import schemas
from ..api import endpoint
from ..context import db, platform
from ..members import issue_token
from ..models import Membership, Organization, User
from ..security import TOTP

bp = Blueprint("auth", __name__)
BAD_CREDENTIALS = "invalid email, password or organization"
ISSUER = "tenantkit-flask-example"


@bp.post("/auth/token")
@endpoint(
    "Sign in and get a token for one membership",
    auth="public",
    tag="auth",
    body=schemas.LOGIN,
    responses=(401, 403, 422, 429),
    response="SignIn",
)
def sign_in(body: dict[str, Any]) -> ResponseReturnValue:
    p = platform()
    _throttle(body["email"])
    with p.global_sessions() as accounts:
        user = accounts.scalars(select(User).where(User.email == body["email"])).first()
        password_ok = p.passwords.verify(user.password_hash if user else None, body["password"])
        if user is None or not password_ok:
            raise Unauthorized(BAD_CREDENTIALS)
        org_id = body.get("org_id") or user.home_org_id
        if org_id is None:
            raise Unauthorized(BAD_CREDENTIALS)
        try:
            tenant = p.kit.tenants.get(org_id)
        except TenantNotFound:
            raise Unauthorized(BAD_CREDENTIALS) from None
        if not tenant.active:
            raise Forbidden("this organization is suspended", reason="suspended")
        with bound_tenant(tenant, request_id=g.get("request_id")), p.sessions() as session:
            found = session.execute(
                select(Membership, Organization)
                .join(Organization, Organization.tenant_id == Membership.tenant_id)
                .where(Membership.user_id == user.id)
            ).first()
            if found is None or found[0].status == "invited":
                raise Unauthorized(BAD_CREDENTIALS)
            member, org = found
            if member.status != "active":
                raise Forbidden("your membership of this organization is suspended")
            mfa = _second_factor(user, org, body.get("totp_code"))
            response = issue_token(user, member, org, mfa=mfa)
            audit.record(
                session,
                "auth.login",
                actor=f"user:{user.id}",
                resource_type="user",
                resource_id=user.id,
                metadata={"mfa": mfa},
            )
            session.commit()
        accounts.commit()
    response["mfa_required"] = org.require_mfa
    response["mfa_enrolled"] = user.totp_enabled
    return jsonify(response)


@bp.post("/auth/mfa/enroll")
@endpoint(
    "Start TOTP enrolment: get a secret and an otpauth:// URI",
    auth="user",
    tag="auth",
    status=201,
    responses=(401, 404, 409),
    response="TOTPEnrolment",
)
def enroll() -> ResponseReturnValue:
    user = _current_user()
    if user.totp_enabled:
        raise Conflict("a second factor is already enabled")
    totp = TOTP.generate()
    user.totp_secret = totp.secret
    user.totp_last_step = 0
    # Users are not captured row by row; the entry never holds the secret.
    audit.record(db(), "auth.mfa_enrollment_started", resource_type="user", resource_id=user.id)
    db().commit()
    body = {"secret": totp.secret, "otpauth_uri": totp.uri(user.email, ISSUER)}
    return jsonify(body), 201


@bp.post("/auth/mfa/verify")
@endpoint(
    "Finish TOTP enrolment with a current code",
    auth="user",
    tag="auth",
    body=schemas.TOTP_CODE,
    responses=(401, 404, 409, 422),
    response="TOTPStatus",
)
def verify(body: dict[str, Any]) -> ResponseReturnValue:
    user = _current_user()
    if user.totp_secret is None:
        raise Conflict("start with POST /auth/mfa/enroll")
    if user.totp_enabled:
        raise Conflict("a second factor is already enabled")
    step = TOTP(user.totp_secret).verify(body["code"], platform().clock.time(), last_step=0)
    if step is None:
        raise UnprocessableEntity("the code is not valid now", field="code")
    user.totp_enabled = True
    user.totp_last_step = step
    audit.record(db(), "auth.mfa_enabled", resource_type="user", resource_id=user.id)
    db().commit()
    return jsonify({"mfa_enabled": True})


def _throttle(email: str) -> None:
    """Allow SIGN_IN_RATE_LIMIT attempts a minute per email (429 beyond): no guessing."""
    digest = hashlib.sha256(email.encode()).hexdigest()[:32]  # no email in counter keys
    limit = Limit("sign-in", f"sign-in:{digest}", "requests", platform().config.sign_in_rate_limit)
    platform().kit.quotas.acquire([limit], tokens=0)


def _current_user() -> User:
    found: User = g.user
    user = db().get(User, found.id)
    if user is None:  # deleted between the membership check and now
        raise Unauthorized("unknown user")
    return user


def _second_factor(user: User, org: Organization, code: str | None) -> bool:
    """Return whether a TOTP code was checked; refuse a sign-in that needs one and lacks it."""
    if not user.totp_enabled or user.totp_secret is None:
        return False
    if code is None:
        if org.require_mfa:
            raise Unauthorized(
                "this organization requires your TOTP code (totp_code)", mfa_required=True
            )
        return False
    step = TOTP(user.totp_secret).verify(
        code, platform().clock.time(), last_step=user.totp_last_step
    )
    if step is None:
        raise Unauthorized("the TOTP code is not valid", mfa_required=True)
    user.totp_last_step = step
    return True
