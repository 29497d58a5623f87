"""The app's database: tables, row-level security, and scoped, audited sessions.

Handlers are ``async``; SQLAlchemy sessions here are sync and run in a worker
thread, which inherits the request's context (anyio copies it), so tenantkit
scopes every statement to the caller's tenant there too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from tenantkit import audit
from tenantkit.kit import TenantKit
from tenantkit.rls import apply_rls, create_app_role, rls_active
from tenantkit.scoping import tenant_sessionmaker

from .models import Base

T = TypeVar("T")
log = logging.getLogger("starlette_app")


class Database:
    """Sessions scoped to the tenant in context, with audit capture installed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # A Session class of our own: audit capture is installed per class, once.
        session_class = type("AppSession", (Session,), {})
        self.sessions: sessionmaker[Session] = tenant_sessionmaker(
            engine, class_=session_class, expire_on_commit=False
        )
        audit.install(self.sessions)

    def transaction(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one transaction (committed if it returns, rolled back if it raises)."""
        with self.sessions.begin() as session:
            return work(session)

    async def run(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one transaction in a worker thread, in the caller's tenant context."""
        return await anyio.to_thread.run_sync(self.transaction, work)


def prepare(kit: TenantKit, *, app_role: str | None) -> None:
    """Create every table; on PostgreSQL put the app's tables under row-level security.

    With ``app_role``, the app's connections ``SET ROLE`` to that role (created
    if missing, granted DML only), so RLS binds even when ``DATABASE_URL``
    names the tables' owner or a superuser.
    """
    engine = kit.engine
    kit.create_all()
    audit.create_tables(engine)
    Base.metadata.create_all(engine)
    if engine.dialect.name != "postgresql":
        return
    apply_rls(engine, Base.metadata)
    if app_role is not None:
        _grant_app_role(engine, app_role)
        event.listen(engine, "connect", _set_role(app_role))
        engine.dispose()  # pooled connections predate the SET ROLE hook
    with engine.connect() as conn:
        if rls_active(conn):
            log.info("row-level security is enforced for the app's connections")
        else:
            log.warning(
                "row-level security is NOT enforced: the app connects as a superuser, "
                "a BYPASSRLS role or the tables' owner; set DATABASE_APP_ROLE"
            )


def _grant_app_role(engine: Engine, role: str) -> None:
    with engine.begin() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
        if exists.first() is None:
            create_app_role(conn, role)
        for statement in (
            f'GRANT USAGE ON SCHEMA public TO "{role}"',
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"',
            f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"',
        ):
            conn.execute(text(statement))


def _set_role(role: str) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(f'SET ROLE "{role}"')
        dbapi_conn.commit()  # a rolled-back SET would be undone by the pool's reset

    return on_connect
