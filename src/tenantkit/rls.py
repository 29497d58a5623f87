"""PostgreSQL row-level security for tenant-scoped tables: DDL, roles and verification.

Each scoped table gets ``ENABLE`` and ``FORCE ROW LEVEL SECURITY`` and one
policy, in ``USING`` and ``WITH CHECK``::

    tenant_id = nullif((SELECT current_setting('app.tenant_id', true)), '')

Scoped sessions set ``app.tenant_id`` per transaction (``set_config(..., true)``),
so a connection returned to the pool carries no tenant. The application must
connect as a role that neither owns the tables nor has ``BYPASSRLS`` or
superuser: ``create_app_role`` makes one.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ._scoping_catalog import connecting_role, policy_is_tenant_policy, table_security
from ._scoping_models import (
    TENANT_COLUMN,
    TableSource,
    mapped_scoped_tables,
    scoped_tables,
    tables_of,
)
from .errors import ConfigurationError, StorageError

POLICY_NAME = "tenantkit_tenant_isolation"
SETTING = "app.tenant_id"
TENANT_PREDICATE = f"{TENANT_COLUMN} = nullif((SELECT current_setting('{SETTING}', true)), '')"

_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_preparer = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]


def rls_ddl(metadata_or_tables: TableSource, *, app_role: str | None = None) -> list[str]:
    """Return the statements that put every scoped table under row-level security.

    With ``app_role``, also grant that role DML on every table given, use of
    their schemas and of the schemas' sequences (it never owns anything).
    """
    tables = tables_of(metadata_or_tables)
    ddl: list[str] = []
    for table in scoped_tables(tables):
        name = _preparer.format_table(table)
        policy = _preparer.quote(POLICY_NAME)
        ddl += [
            f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY",
            f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY",
            f"DROP POLICY IF EXISTS {policy} ON {name}",
            f"CREATE POLICY {policy} ON {name} AS PERMISSIVE FOR ALL TO PUBLIC "
            f"USING ({TENANT_PREDICATE}) WITH CHECK ({TENANT_PREDICATE})",
        ]
    if app_role is not None:
        ddl += grant_ddl(tables, app_role)
    return ddl


def grant_ddl(tables: TableSource, app_role: str) -> list[str]:
    """Return the GRANTs an application role needs on ``tables`` (DML, schema, sequences)."""
    role = _quote_role(app_role)
    found = tables_of(tables)
    schemas = sorted({t.schema or "public" for t in found})
    ddl = [f"GRANT USAGE ON SCHEMA {_preparer.quote_schema(s)} TO {role}" for s in schemas]
    ddl += [
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {_preparer.format_table(t)} TO {role}"
        for t in sorted(found, key=lambda t: t.fullname)
    ]
    ddl += [
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {_preparer.quote_schema(s)} TO {role}"
        for s in schemas
    ]
    return ddl


def view_ddl(name: str, query: str | Select[Any], *, replace: bool = False) -> str:
    """Return ``CREATE VIEW name WITH (security_invoker = true) AS query``.

    A view runs with its owner's rights unless it is a security invoker
    view (PostgreSQL 15+), and then skips row-level security: build views
    over scoped tables with this. ``name`` may be schema-qualified.
    """
    if isinstance(query, Select):
        query = str(
            query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})  # type: ignore[no-untyped-call]
        )
    quoted = ".".join(_preparer.quote(part) for part in name.split("."))
    verb = "CREATE OR REPLACE VIEW" if replace else "CREATE VIEW"
    return f"{verb} {quoted} WITH (security_invoker = true) AS {query}"


def apply_rls(
    engine_or_connection: Engine | Connection,
    metadata: TableSource,
    *,
    app_role: str | None = None,
) -> list[str]:
    """Run ``rls_ddl`` in one transaction (as the tables' owner) and return what ran."""
    ddl = rls_ddl(metadata, app_role=app_role)
    _require_postgresql(engine_or_connection)
    if isinstance(engine_or_connection, Engine):
        with engine_or_connection.begin() as conn:
            _run(conn, ddl)
    else:
        _run(engine_or_connection, ddl)
    return ddl


def _run(conn: Connection, ddl: list[str], *, secret: str | None = None) -> None:
    for statement in ddl:
        try:
            # Sent as written: through text(), a password like ":x1" was a bind parameter.
            conn.exec_driver_sql(statement, execution_options={"no_parameters": True})
        except SQLAlchemyError as exc:
            if secret is None or secret not in str(exc):
                raise
            # The error quotes the statement: keep the password out of logs and tracebacks.
            shown = statement.replace(f"'{secret}'", "'[REDACTED]'")
            raise StorageError(f"{shown} failed: {type(exc).__name__}") from None


def create_app_role(
    engine_or_connection: Engine | Connection,
    name: str,
    *,
    password: str | None = None,
    metadata: TableSource | None = None,
) -> None:
    """Create a login role with no superuser, no BYPASSRLS and no ownership; grant it DML.

    ``name`` must be a plain lower-case identifier. With ``metadata`` the role
    is granted what ``grant_ddl`` lists.
    """
    _require_postgresql(engine_or_connection)
    role = _quote_role(name)
    ddl = [f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"]
    literal = None
    if password is not None:
        literal = password.replace("'", "''")
        ddl[0] += f" PASSWORD '{literal}'"
    if metadata is not None:
        ddl += grant_ddl(metadata, name)
    if isinstance(engine_or_connection, Engine):
        with engine_or_connection.begin() as conn:
            _run(conn, ddl, secret=literal)
    else:
        _run(engine_or_connection, ddl, secret=literal)


def drop_app_role(engine_or_connection: Engine | Connection, name: str) -> None:
    """Revoke what ``name`` holds in this database and drop the role if it exists."""
    role = _quote_role(name)
    ddl = [
        f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN "
        f"EXECUTE 'DROP OWNED BY {role}'; EXECUTE 'DROP ROLE {role}'; END IF; END $$"
    ]
    if isinstance(engine_or_connection, Engine):
        with engine_or_connection.begin() as conn:
            _run(conn, ddl)
    else:
        _run(engine_or_connection, ddl)


def rls_active(connection: Connection, *, tables: TableSource | None = None) -> bool:
    """Return whether row-level security binds the connecting role on every scoped table.

    True only on PostgreSQL, for a role that is not superuser, has no
    ``BYPASSRLS``, and for each scoped table it can reach (default: every
    mapped ``TenantScoped`` table that exists and that the role holds a
    privilege on) either is not its owner or the table forces RLS, with RLS
    enabled and a tenant policy and no other permissive policy.
    """
    if connection.dialect.name != "postgresql":
        return False
    role = connecting_role(connection)
    if role.superuser or role.bypassrls:
        return False
    for table in scoped_tables(mapped_scoped_tables() if tables is None else tables):
        security = table_security(connection, table)
        if security is None or not (security.accessible or security.owned_by_role):
            continue  # absent or out of the role's reach: raw SQL cannot touch it
        if not security.enabled or (security.owned_by_role and not security.forced):
            return False
        if not security.policies or not all(
            policy_is_tenant_policy(p) for p in security.policies if p.permissive
        ):
            return False
    return True


def _quote_role(name: str) -> str:
    if not _ROLE_NAME.fullmatch(name):
        raise ConfigurationError(f"role name {name!r} must match {_ROLE_NAME.pattern}")
    return str(_preparer.quote(name))


def _require_postgresql(bind: Any) -> None:
    if bind.dialect.name != "postgresql":
        raise ConfigurationError(f"row-level security needs PostgreSQL, not {bind.dialect.name}")
