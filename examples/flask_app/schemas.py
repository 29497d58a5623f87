"""Request bodies and query strings of every route, declared once (validation + OpenAPI)."""

from __future__ import annotations

from .validation import SLUG, Field, Schema

PLANS = ("free", "starter", "pro", "enterprise")
INVITABLE_ROLES = ("admin", "member")
ROLES = ("owner", "admin", "member")
STATUSES = ("active", "invited", "suspended")
PROJECT_TYPES = ("web", "mobile", "api", "backend", "data", "ml", "desktop", "other")
ENVIRONMENTS = ("development", "staging", "production")
TEAM_ROLES = ("lead", "member", "viewer")
SCOPES = ("read:resources", "write:resources", "read:usage")
ID = r"^[A-Za-z0-9_-]{1,64}$"
LOGIN_ID = r"^[a-z0-9][a-z0-9-]{1,62}$"

_project_ids = Field(
    "projects",
    "array",
    max_items=100,
    items=Field("project_id", "string", pattern=ID),
    description="Ids of the projects the member may access.",
)
_limit = Field("limit", "integer", minimum=1, maximum=200, default=50)
_cursor = Field("cursor", "string", max_length=500)

ONBOARDING = Schema(
    "Onboarding",
    (
        Field("name", "string", required=True, min_length=1, max_length=200),
        Field("slug", "string", required=True, pattern=SLUG, description="Becomes the org id."),
        Field("owner_email", "string", required=True, format="email", max_length=254),
        Field("owner_password", "string", required=True, min_length=8, max_length=256),
        Field("owner_name", "string", max_length=200),
        Field("plan", "string", enum=PLANS, default="free"),
    ),
)
LOGIN = Schema(
    "Login",
    (
        Field("email", "string", required=True, format="email", max_length=254),
        Field("password", "string", required=True, min_length=1, max_length=256),
        Field("org_id", "string", pattern=LOGIN_ID),
        Field("totp_code", "string", pattern=r"^[0-9]{6}$"),
    ),
)
SETTINGS = Schema(
    "OrganizationSettings",
    (
        Field("require_mfa", "boolean"),
        Field(
            "allowed_domains",
            "array",
            max_items=100,
            items=Field("domain", "string", format="hostname", max_length=253),
            description="Invitations go only to these email domains; empty allows any.",
        ),
        Field(
            "session_timeout",
            "integer",
            minimum=5,
            maximum=43200,
            description="Minutes a sign-in lasts; bounds every token's lifetime.",
        ),
    ),
)
PLAN_CHANGE = Schema("PlanChange", (Field("plan", "string", required=True, enum=PLANS),))
INVITATION = Schema(
    "Invitation",
    (
        Field("email", "string", required=True, format="email", max_length=254),
        Field("role", "string", enum=INVITABLE_ROLES, default="member"),
        _project_ids,
    ),
)
ACCEPT = Schema(
    "InvitationAcceptance",
    (
        Field("name", "string", min_length=1, max_length=200),
        Field("password", "string", min_length=8, max_length=256),
    ),
    description="A new user sends name and password; an existing user sends a bearer token.",
)
USER_QUERY = Schema(
    "UserQuery",
    (
        Field("role", "string", enum=ROLES),
        Field("status", "string", enum=STATUSES),
        Field("project_id", "string", pattern=ID),
        _limit,
        _cursor,
    ),
)
USER_UPDATE = Schema(
    "MembershipUpdate",
    (
        Field("role", "string", enum=ROLES),
        _project_ids,
        Field("status", "string", enum=("active", "suspended")),
        Field("version", "integer", required=True, minimum=1, description="Optimistic lock."),
    ),
)
TEAM_MEMBER = Schema(
    "TeamMember",
    (
        Field("user_id", "string", required=True, pattern=ID),
        Field("role", "string", enum=TEAM_ROLES, default="member"),
    ),
)
PROJECT = Schema(
    "ProjectCreate",
    (
        Field("name", "string", required=True, min_length=1, max_length=200),
        Field("slug", "string", required=True, pattern=SLUG),
        Field("type", "string", enum=PROJECT_TYPES, default="web"),
        Field("environment", "string", enum=ENVIRONMENTS, default="development"),
        Field("team", "array", max_items=200, items=TEAM_MEMBER, default=[]),
    ),
)
PROJECT_UPDATE = Schema(
    "ProjectUpdate",
    (
        Field("name", "string", min_length=1, max_length=200),
        Field("type", "string", enum=PROJECT_TYPES),
        Field("environment", "string", enum=ENVIRONMENTS),
        Field("team", "array", max_items=200, items=TEAM_MEMBER),
        Field("version", "integer", required=True, minimum=1, description="Optimistic lock."),
    ),
)
PAGE_QUERY = Schema("PageQuery", (_limit, _cursor))
PROJECT_QUERY = Schema(
    "ProjectQuery",
    (
        Field("include", "string", enum=("resources",)),
        Field("billing_cycle", "string", pattern=r"^\d{4}-(0[1-9]|1[0-2])$"),
    ),
)
RESOURCE = Schema(
    "ResourceUsage",
    (
        Field("project_id", "string", required=True, pattern=ID),
        Field("type", "string", required=True, pattern=r"^[a-z][a-z0-9_.:-]{0,63}$"),
        Field("quantity", "integer", required=True, minimum=1, maximum=2**53),
        Field("metadata", "object", max_items=50),
        Field("idempotency_key", "string", min_length=1, max_length=255),
    ),
)
USAGE_QUERY = Schema(
    "UsageQuery",
    (Field("billing_cycle", "string", pattern=r"^\d{4}-(0[1-9]|1[0-2])$"),),
)
API_KEY = Schema(
    "APIKeyRequest",
    (
        Field("name", "string", required=True, min_length=1, max_length=200),
        Field("project_id", "string", pattern=ID),
        Field(
            "scopes",
            "array",
            max_items=len(SCOPES),
            items=Field("scope", "string", enum=SCOPES),
            default=["read:resources", "write:resources"],
        ),
        Field("rate_limit", "integer", minimum=1, maximum=1_000_000, description="Per minute."),
    ),
)
AUDIT_QUERY = Schema(
    "AuditQuery",
    (
        Field("start_date", "string", format="date-or-time"),
        Field("end_date", "string", format="date-or-time"),
        Field("user_id", "string", pattern=ID),
        Field("action", "string", max_length=100),
        Field("resource_type", "string", max_length=100),
        _limit,
        _cursor,
    ),
)
TOTP_CODE = Schema("TOTPCode", (Field("code", "string", required=True, pattern=r"^[0-9]{6}$"),))
ADMIN_ORG_UPDATE = Schema(
    "AdminOrganizationUpdate",
    (
        Field("status", "string", enum=("active", "suspended")),
        Field("plan", "string", enum=PLANS),
    ),
)
PAYMENT_METHOD = Schema(
    "PaymentMethod",
    (Field("payment_method_id", "string", required=True, pattern=r"^pm_[A-Za-z0-9_]{1,200}$"),),
)
