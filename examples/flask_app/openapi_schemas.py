"""JSON Schemas of the success responses, by the name each ``endpoint`` gives its response."""

from __future__ import annotations

from typing import Any

STRING = {"type": "string"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
MAYBE_TIME = {"type": ["string", "null"], "format": "date-time"}
MAYBE_STRING = {"type": ["string", "null"]}
MONEY = {"type": ["string", "null"], "description": "Decimal amount, e.g. '29.00'"}
COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}
LIMITS = {"type": "object", "additionalProperties": {"type": ["integer", "null"]}}
STRINGS = {"type": "array", "items": STRING}


def obj(**properties: Any) -> dict[str, Any]:
    """Return an object schema whose listed properties are all present."""
    return {"type": "object", "properties": properties, "required": sorted(properties)}


def ref(name: str) -> dict[str, str]:
    """Return a reference to another component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def page_of(name: str) -> dict[str, Any]:
    """Return the list envelope of ``name`` items."""
    return obj(items={"type": "array", "items": ref(name)}, next_cursor=MAYBE_STRING)


SETTINGS = obj(require_mfa=BOOLEAN, allowed_domains=STRINGS, session_timeout=INTEGER)
MEMBER = obj(
    user_id=STRING,
    email=STRING,
    name=STRING,
    role={"enum": ["owner", "admin", "member"]},
    status={"enum": ["active", "invited", "suspended"]},
    projects=STRINGS,
    mfa_enabled=BOOLEAN,
    version=INTEGER,
    invited_at=MAYBE_TIME,
    joined_at=MAYBE_TIME,
    updated_at=TIME,
)
TOKEN = obj(
    access_token=STRING,
    token_type={"const": "bearer"},
    expires_in=INTEGER,
    org_id=STRING,
    user_id=STRING,
    role=STRING,
)
ORGANIZATION = obj(
    id=STRING,
    name=STRING,
    slug=STRING,
    status={"enum": ["active", "suspended"]},
    plan=STRING,
    limits=LIMITS,
    usage=COUNTS,
    billing_cycle=STRING,
    settings=SETTINGS,
    owner_id=STRING,
    created_at=TIME,
)
PROJECT = obj(
    id=STRING,
    org_id=STRING,
    name=STRING,
    slug=STRING,
    type=STRING,
    environment=STRING,
    team={"type": "array", "items": obj(user_id=STRING, role=STRING)},
    version=INTEGER,
    created_by=STRING,
    created_at=TIME,
    updated_at=TIME,
)
API_KEY = obj(
    key_id=STRING,
    name=STRING,
    key_prefix=STRING,
    last4=STRING,
    project_id=MAYBE_STRING,
    scopes=STRINGS,
    rate_limit={"type": ["integer", "null"]},
    created_at=TIME,
    last_used_at=MAYBE_TIME,
    revoked_at=MAYBE_TIME,
)
USAGE_RECORD = obj(
    id=STRING,
    tenant_id=STRING,
    project_id=MAYBE_STRING,
    type=STRING,
    quantity=INTEGER,
    metadata={"type": "object"},
    occurred_at=TIME,
    idempotency_key=MAYBE_STRING,
    meter_status=STRING,
    duplicate=BOOLEAN,
)
USAGE_REPORT = obj(
    tenant_id=STRING,
    billing_cycle=STRING,
    period_start=TIME,
    period_end=TIME,
    plan=STRING,
    currency=STRING,
    totals=COUNTS,
    by_project={"type": "array", "items": obj(project_id=MAYBE_STRING, totals=COUNTS)},
    limits=LIMITS,
    overage=COUNTS,
    base_amount=MONEY,
    overage_amount=MONEY,
    amount=MONEY,
    events=INTEGER,
    meter_status=COUNTS,
)
AUDIT_ENTRY = obj(
    tenant_id=STRING,
    seq=INTEGER,
    time=TIME,
    actor=STRING,
    action=STRING,
    resource_type=MAYBE_STRING,
    resource_id=MAYBE_STRING,
    changes={"type": ["object", "null"]},
    metadata={"type": ["object", "null"]},
    request_id=MAYBE_STRING,
    client_ip=MAYBE_STRING,
    user_agent=MAYBE_STRING,
    prev_hash=STRING,
    hash=STRING,
)
TENANT = obj(
    id=STRING,
    name=STRING,
    status=STRING,
    plan=STRING,
    quota_requests_per_minute={"type": ["integer", "null"]},
    quota_tokens_per_minute={"type": ["integer", "null"]},
    allowed_models={"type": ["array", "null"]},
    allowed_tools={"type": ["array", "null"]},
    metadata={"type": "object"},
    version=INTEGER,
    created_at=TIME,
    updated_at=TIME,
)

RESPONSES: dict[str, dict[str, Any]] = {
    "Service": obj(service=STRING, version=STRING, links={"type": "object"}),
    "Health": obj(
        status={"enum": ["ok", "error"]}, checks=obj(database=STRING, quota_storage=STRING)
    ),
    "OpenAPI": {"type": "object", "required": ["openapi", "paths"]},
    "Token": TOKEN,
    "SignIn": {
        "allOf": [TOKEN, obj(mfa_required=BOOLEAN, mfa_enrolled=BOOLEAN)],
    },
    "Organization": ORGANIZATION,
    "Onboarded": obj(organization=ref("Organization"), owner=ref("User"), token=ref("Token")),
    "User": obj(id=STRING, email=STRING, name=STRING, mfa_enabled=BOOLEAN, created_at=TIME),
    "Settings": SETTINGS,
    "Member": MEMBER,
    "MemberPage": page_of("Member"),
    "InvitationCreated": obj(
        invitation_id=STRING,
        org_id=STRING,
        email=STRING,
        role=STRING,
        projects=STRINGS,
        token=STRING,
        accept_url=STRING,
        expires_at=TIME,
    ),
    "Accepted": obj(membership=ref("Member"), token=ref("Token")),
    "Project": PROJECT,
    "ProjectPage": page_of("Project"),
    "APIKey": API_KEY,
    "APIKeyCreated": {"allOf": [API_KEY, obj(key=STRING)]},
    "APIKeyPage": page_of("APIKey"),
    "UsageRecord": USAGE_RECORD,
    "UsageReport": USAGE_REPORT,
    "AuditEntry": AUDIT_ENTRY,
    "AuditPage": page_of("AuditEntry"),
    "BillingSummary": obj(
        org_id=STRING,
        plan=STRING,
        billing_cycle=STRING,
        period_start=TIME,
        period_end=TIME,
        currency=STRING,
        usage=COUNTS,
        limits=LIMITS,
        overage=COUNTS,
        base_amount=MONEY,
        overage_amount=MONEY,
        amount_due=MONEY,
        stripe={"type": "object", "required": ["configured"]},
    ),
    "WebhookResult": obj(
        received=BOOLEAN, event_id=STRING, type=STRING, handled=BOOLEAN, duplicate=BOOLEAN
    ),
    "TOTPEnrolment": obj(secret=STRING, otpauth_uri=STRING),
    "TOTPStatus": obj(mfa_enabled=BOOLEAN),
    "Tenant": TENANT,
    "TenantPage": page_of("Tenant"),
    "PurgeResult": obj(deleted=INTEGER, per_tenant=COUNTS, retention_days=INTEGER),
}
