"""``create_app``: the Flask app with tenantkit mounted through its Flask extension.

Organizations are tenants. ``/organizations/<org_id>/...`` resolves the
tenant from the path *and* from the credential (a user's JWT whose tenant
claim is the organization, or an API key); tenantkit refuses a credential
for another organization, and this app answers that with a 404. Public
routes (onboarding, sign-in, invitations, webhooks, health, the OpenAPI
description) skip the pipeline.
"""

from __future__ import annotations

from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from tenantkit import audit
from tenantkit.apikeys import APIKeyStore
from tenantkit.flask import FlaskTenantKit
from tenantkit.identity import APIKeyResolver, IdentityChain, JWTResolver, PathResolver
from tenantkit.kit import TenantKit
from tenantkit.plans import PLANS_KEY, Plans
from tenantkit.quotas import QuotaEngine
from tenantkit.scoping import tenant_sessionmaker
from tenantkit.settings import JWTSettings, QuotaSettings, Settings
from tenantkit.types import Identity
from tenantkit.usage import UsageRecorder

from .billing_service import BillingService, build_webhooks
from .config import AppConfig
from .context import EXTENSION_KEY, Clock, Platform, close_db
from .database import setup_database
from .errors import on_reject, register_error_handlers
from .routes import register_routes
from .security import Passwords

ORG_PREFIX = "/organizations"
TENANT_CLAIM = "org_id"
# Matched by whole segments: "/auth/token" skips the pipeline, "/auth/mfa" does not.
PUBLIC_PREFIXES = ("/health", "/openapi.json", "/auth/token", "/invitations", "/webhooks", "/admin")
# These two must match exactly: everything below them is tenant routes.
PUBLIC_EXACT = frozenset({"/", ORG_PREFIX})


class PlatformKit(TenantKit):
    """The tenantkit pipeline, skipping the two public paths that are prefixes of tenant ones."""

    def is_excluded(self, path: str) -> bool:
        """Return whether ``path`` skips the pipeline."""
        return path in PUBLIC_EXACT or super().is_excluded(path)


def create_app(config: AppConfig | None = None, *, clock: Clock | None = None) -> Flask:
    """Build the app: database, tenantkit pipeline, services, routes and error handlers."""
    cfg = config or AppConfig.from_env()
    clock = clock or Clock()
    app = Flask("examples.flask_app", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]

    services = build_platform(cfg, clock)
    FlaskTenantKit(app, kit=services.kit)
    app.extensions[EXTENSION_KEY] = services
    register_error_handlers(app)
    register_routes(app)
    app.teardown_appcontext(close_db)
    return app


def build_platform(cfg: AppConfig, clock: Clock) -> Platform:
    """Create the engines, the tenantkit stages (on the app clock) and the services."""
    engine, jobs_engine = setup_database(
        cfg.database_url, app_role=cfg.database_app_role, app_password=cfg.database_app_password
    )
    settings = Settings(
        database_url=cfg.database_url,
        resolvers=("api_key", "jwt", "path"),
        path_prefix=ORG_PREFIX,
        api_key_secret=cfg.api_key_secret,
        exclude_paths=PUBLIC_PREFIXES,
        max_body_bytes=cfg.max_body_bytes,
        jwt=JWTSettings(secret=cfg.jwt_secret, tenant_claim=TENANT_CLAIM, roles_claim="role"),
        quota=QuotaSettings(storage_uri=cfg.quota_storage_uri),
    )
    kit = _kit(settings, engine, clock, cfg.quota_key_prefix)
    plans = Plans.from_mapping({PLANS_KEY: cfg.plans_json} if cfg.plans_json else {})
    # A session class of this app's own: audit capture listens on it and on nothing else.
    app_session: type[Session] = type("PlatformSession", (Session,), {})
    sessions = tenant_sessionmaker(engine, class_=app_session, expire_on_commit=False)
    audit.install(sessions, record_unscoped=False)
    # Registered by hand so close() can take it back: the hook list is process-wide.
    forget_unscoped_hook = audit.log_unscoped(engine)
    jobs_sessions = sessionmaker(jobs_engine, expire_on_commit=False)
    billing = None
    if cfg.stripe_secret_key:
        billing = BillingService(
            api_key=cfg.stripe_secret_key,
            api_base=cfg.stripe_api_base,
            sessions=jobs_sessions,
            plans=plans,
            tenants=kit.tenants,
        )
    return Platform(
        config=cfg,
        clock=clock,
        engine=engine,
        jobs_engine=jobs_engine,
        sessions=sessions,
        global_sessions=sessionmaker(engine, expire_on_commit=False),
        kit=kit,
        passwords=Passwords(fast=cfg.fast_password_hashing),
        plans=plans,
        usage=UsageRecorder(sessions, plans=plans, plan_of=kit.tenants.get, clock=clock.now),
        webhooks=build_webhooks(cfg.stripe_webhook_secret or "", jobs_sessions, plans, kit.tenants),
        billing=billing,
        closers=[forget_unscoped_hook, kit.quotas.close, engine.dispose, jobs_engine.dispose],
    )


def _kit(settings: Settings, engine: Engine, clock: Clock, key_prefix: str) -> PlatformKit:
    """Compose tenantkit's pipeline from its stages, each on the app clock."""
    api_keys = APIKeyStore(
        engine, secret=settings.api_key_secret, cache=settings.cache, now=clock.now
    )

    def verify_api_key(key: str) -> Identity:
        return api_keys.verify(key).to_identity()

    chain = IdentityChain(
        [
            APIKeyResolver(verify_api_key),
            JWTResolver(settings.jwt, clock=clock.time),
            PathResolver(ORG_PREFIX),
        ],
        require_credential=True,
        tenant_header=settings.tenant_header,
    )
    memory = settings.quota.storage_uri.startswith("memory")
    kit = PlatformKit(
        settings,
        engine=engine,
        api_key_store=api_keys,
        identity=chain,
        quotas=QuotaEngine(
            settings.quota, clock=clock.time if memory else None, key_prefix=key_prefix
        ),
        on_reject=on_reject,
    )
    kit.create_all()
    return kit
