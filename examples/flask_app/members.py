"""Who the caller is inside an organization: membership, role and session rules.

The JWT proves a user and names one organization (its tenant claim); this
module checks, on every request, that the membership still exists and is
active and that the organization's session rules still accept the token:
``session_timeout`` bounds a token's age even when it was issued under a
longer timeout, and ``require_mfa`` refuses a password-only token of a user
who enrolled a second factor.
"""

from __future__ import annotations

from flask import g
from sqlalchemy import select

from tenantkit.errors import Forbidden, NotFound, Unauthorized
from tenantkit.identity import encode_token
from tenantkit.types import Identity

from .context import db, platform
from .models import Membership, Organization, User


def load_member(who: Identity) -> Membership:
    """Return the caller's active membership in the organization of ``who``, or refuse."""
    session = db()
    row = session.execute(
        select(Membership, User, Organization)
        .join(User, User.id == Membership.user_id)
        .join(Organization, Organization.tenant_id == Membership.tenant_id)
        .where(Membership.user_id == who.subject)
    ).first()
    if row is None or row[0].status == "invited":
        # Not a member looks exactly like an organization that does not exist.
        raise NotFound("organization not found")
    member, user, org = row
    if member.status != "active":
        raise Forbidden("your membership of this organization is suspended", reason="suspended")
    issued = who.claims.get("iat")
    age_limit = org.session_timeout * 60
    if not isinstance(issued, int | float) or platform().clock.time() - issued > age_limit:
        raise _session_error("the session is older than the organization's session_timeout")
    methods = who.claims.get("amr")
    if (
        org.require_mfa
        and user.totp_enabled
        and not (isinstance(methods, list) and "otp" in methods)
    ):
        raise _session_error("this organization requires a TOTP code at sign-in")
    g.user, g.org = user, org
    return member


def issue_token(
    user: User, member: Membership, org: Organization, *, mfa: bool
) -> dict[str, object]:
    """Return the token response for ``user`` acting in ``org`` (one token per membership)."""
    p = platform()
    lifetime = min(p.config.token_ttl_seconds, org.session_timeout * 60)
    token = encode_token(
        p.kit.settings,
        tenant_id=org.id,
        subject=user.id,
        roles=[member.role],
        expires_in=lifetime,
        clock=p.clock.time,
        amr=["pwd", "otp"] if mfa else ["pwd"],  # RFC 8176 authentication methods
    )
    return {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": lifetime,
        "org_id": org.id,
        "user_id": user.id,
        "role": member.role,
    }


def _session_error(detail: str) -> Unauthorized:
    challenge = f'Bearer realm="tenantkit", error="invalid_token", error_description="{detail}"'
    return Unauthorized(detail, headers={"WWW-Authenticate": challenge}, reason="session")
