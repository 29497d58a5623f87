"""Who may do what: the platform admin token, tenant roles, passwords and login throttling.

tenantkit has already authenticated the tenant (API key, JWT or trusted
header) before a tenant route runs; these helpers only apply the app's rules
to that identity.
"""

from __future__ import annotations

import hashlib
import hmac
import math

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from tenantkit.context import current_identity, get_context, report_tokens
from tenantkit.errors import Forbidden, Unauthorized
from tenantkit.quotas import Limit, QuotaEngine
from tenantkit.types import Identity, TenantConfig

from .problems import problem

ADMIN = "ADMIN"
MEMBER = "MEMBER"


def require_admin_token(request: Request, admin_token: str) -> None:
    """Accept only ``Authorization: Bearer <ADMIN_TOKEN>``; anything else is 401."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), admin_token.encode()
    ):
        raise Unauthorized("the admin routes need Authorization: Bearer <ADMIN_TOKEN>")


def caller() -> Identity:
    """Return the identity tenantkit admitted for this request."""
    return current_identity()


ROLES = (ADMIN, MEMBER)
#: Credentials that act for the whole tenant: the platform-issued API key, and the
#: trusted gateway's header (accepted only with TRUST_TENANT_HEADER=1).
SERVICE_SOURCES = ("api_key", "header")


def is_tenant_admin(identity: Identity) -> bool:
    """An ADMIN user, or a service credential (API key, trusted gateway)."""
    return identity.has_role(ADMIN) or identity.source in SERVICE_SOURCES


def require_tenant_admin() -> Identity:
    """Return the caller if they administer the tenant, else 403."""
    identity = caller()
    if not is_tenant_admin(identity):
        raise Forbidden("this route is for the tenant's ADMIN users", reason="role", required=ADMIN)
    return identity


def require_user() -> Identity:
    """Return the caller if they are a logged-in user (a JWT), else 403."""
    identity = caller()
    if identity.source != "jwt" or not identity.subject:
        raise Forbidden(
            "this route needs a user's access token (POST /auth/token)", reason="user_token"
        )
    if not (identity.has_role(ADMIN) or identity.has_role(MEMBER)):
        raise Forbidden("the token carries no ADMIN or MEMBER role", reason="role")
    return identity


class Passwords:
    """argon2id password hashing (memory-hard); parameters default to RFC 9106's low-memory profile.

    A hash made with weaker parameters than the current ones is upgraded at the
    next successful login (``needs_rehash``).
    """

    def __init__(
        self, *, time_cost: int = 3, memory_kib: int = 65_536, parallelism: int = 4
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
        )
        self._dummy: str | None = None

    def hash(self, password: str) -> str:
        """Return the argon2id hash of ``password``."""
        return self._hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """Return whether ``password`` matches ``stored``; as costly when ``stored`` is None."""
        if stored is None:
            # Verify against a throwaway hash so an unknown user costs as much as a known one.
            self._dummy = self._dummy or self._hasher.hash("tenantkit-timing-equaliser")
        try:
            return self._hasher.verify(stored or self._dummy or "", password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """Return whether ``stored`` was made with other parameters than today's."""
        return self._hasher.check_needs_rehash(stored)


async def throttle_login(
    quotas: QuotaEngine, *, tenant_id: str, email: str, client: str | None, per_minute: int
) -> None:
    """Count a login attempt against the per-account and per-client limits (429 when over).

    The counters live where the tenant quotas live (memory or Redis), so
    several processes share them; the storage-failure policy is the same too.
    """
    account = hashlib.sha256(email.encode()).hexdigest()[:32]
    limits = [
        Limit("login-account", f"{{{tenant_id}}}:login:{account}", "requests", per_minute),
        Limit("login-client", f"login-client:{client or 'unknown'}", "requests", per_minute * 10),
    ]
    await quotas.acquire_async(limits, tokens=0)


def issued_before(identity: Identity, tenant: TenantConfig) -> bool:
    """Return whether a user token was minted before its tenant was created.

    A deleted tenant's id can be taken again (``POST /onboarding`` is public);
    its users' tokens name the same id under the same secret and would open
    the new tenant until they expire. ``iat`` counts whole seconds, so a token
    of the second of creation passes.
    """
    iat = identity.claims.get("iat")
    if identity.source != "jwt" or tenant.created_at is None:
        return False
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        return False
    return iat < math.floor(tenant.created_at.timestamp())


class RefuseStaleTokens:
    """Inside tenantkit's middleware: 401 for a token of a deleted namesake of the tenant."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context() if scope["type"] == "http" else None
        if ctx is None or ctx.tenant is None or not issued_before(ctx.identity, ctx.tenant):
            await self.app(scope, receive, send)
            return
        report_tokens(0)
        reason = "token issued before its tenant was created"
        challenge = f'Bearer error="invalid_token", error_description="{reason}"'
        error = Unauthorized(reason, headers={"WWW-Authenticate": challenge})
        await problem(error, Request(scope, receive))(scope, receive, send)
