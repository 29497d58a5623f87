"""Engines with the usage and billing tables, on SQLite files or the session's PostgreSQL."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable

from sqlalchemy import Engine, Table
from sqlalchemy.orm import Session, sessionmaker

from tenantkit._db import Base, make_engine

OUR_TABLES = (
    "tenantkit_usage_events",
    "tenantkit_usage_alerts",
    "tenantkit_billing_accounts",
    "tenantkit_stripe_webhook_events",
)


def our_tables() -> list[Table]:
    """Return the usage and billing tables that are registered (imported) on ``Base``."""
    for module in ("tenantkit.usage", "tenantkit.billing", "tenantkit.webhooks"):
        importlib.import_module(module)  # registers the tables on Base

    return [Base.metadata.tables[name] for name in OUR_TABLES if name in Base.metadata.tables]


def engine_for(url: str) -> Engine:
    """Return an engine on ``url`` with the usage and billing tables created."""
    engine = make_engine(url)
    Base.metadata.create_all(engine, tables=our_tables())
    return engine


def sessions(engine: Engine) -> Callable[[], Session]:
    """Return a plain (unscoped) session factory on ``engine``."""
    return sessionmaker(engine, expire_on_commit=False)


def tenant_id(prefix: str = "t") -> str:
    """Return a tenant id no other test uses (tests share the PostgreSQL database)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wipe(engine: Engine) -> None:
    """Delete every row of the usage and billing tables (meter sync runs across tenants)."""
    with engine.begin() as conn:
        for table in our_tables():
            conn.execute(table.delete())
