"""Engines and tables: SQLite by default, PostgreSQL with row-level security when configured.

On PostgreSQL the tables are created by the ``DATABASE_URL`` role (their
owner), every tenant-scoped table is put under row-level security, and the
app then runs as a separate role that owns nothing and cannot bypass RLS
(``DATABASE_APP_ROLE``), so even raw SQL cannot read another organization.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

import tenantkit.apikeys
import tenantkit.audit
import tenantkit.billing
import tenantkit.tenants
import tenantkit.usage
import tenantkit.webhooks  # noqa: F401  (each registers its tables on tenantkit's Base)
from tenantkit._db import Base as LibraryBase
from tenantkit._db import make_engine
from tenantkit.rls import apply_rls, create_app_role, grant_ddl

from .models import Base

log = logging.getLogger("examples.flask_app")


def setup_database(
    url: str, *, app_role: str | None, app_password: str | None
) -> tuple[Engine, Engine]:
    """Create every table (ours and tenantkit's); return the app's engine and the jobs' engine.

    Jobs that work across organizations by design (the Stripe meter sync and
    webhooks, audit retention) use the owner's engine; requests never do.
    """
    engine = make_engine(url, pool_pre_ping=True)
    tables = [*LibraryBase.metadata.sorted_tables, *Base.metadata.sorted_tables]
    LibraryBase.metadata.create_all(engine)
    Base.metadata.create_all(engine)
    if engine.dialect.name != "postgresql" or not app_role:
        return engine, engine
    apply_rls(engine, tables)
    with engine.begin() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_roles WHERE rolname = :name"), {"name": app_role}
        ).first()
    if exists is None:
        create_app_role(engine, app_role, password=app_password)
    with engine.begin() as conn:
        for statement in grant_ddl(tables, app_role):
            conn.execute(text(statement))
    runtime_url = make_url(url).set(username=app_role, password=app_password)
    log.info("PostgreSQL: row-level security on; the app runs as role %s", app_role)
    runtime = make_engine(runtime_url.render_as_string(hide_password=False), pool_pre_ping=True)
    return runtime, engine


def check_database(engine: Engine) -> bool:
    """Return whether the database answers."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        log.warning("database health check failed", exc_info=True)
        return False
    return True
