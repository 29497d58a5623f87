"""Read what PostgreSQL's catalogs say about roles, scoped tables, policies and views."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

_preparer = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]

# pg_get_expr() of the tenant predicate, whitespace removed and lower-cased, e.g.
# ((tenant_id)::text=nullif((selectcurrent_setting('app.tenant_id'::text,true)as
# current_setting),''::text))
_TENANT_EXPR = re.compile(
    r"^\(*tenant_id\)?(::(text|charactervarying))?="
    r"nullif\(\(selectcurrent_setting\('app\.tenant_id'(::text)?,true\)(ascurrent_setting)?\),"
    r"''(::text)?\)\)*$"
)


@dataclass(frozen=True, slots=True)
class RoleInfo:
    """The connecting role's power over row-level security."""

    name: str
    superuser: bool
    bypassrls: bool


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """One row-level security policy as ``pg_policies`` shows it."""

    name: str
    permissive: bool
    command: str
    using: str | None
    check: str | None


@dataclass(frozen=True, slots=True)
class TableSecurity:
    """A table's RLS switches, owner, policies and the first column of each index."""

    oid: int
    owner: str
    enabled: bool
    forced: bool
    owned_by_role: bool
    accessible: bool
    policies: tuple[PolicyInfo, ...]
    index_leads: tuple[str, ...]


def connecting_role(conn: Connection) -> RoleInfo:
    """Return the current role's name, superuser and BYPASSRLS flags."""
    row = conn.execute(
        text("SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
    ).one()
    return RoleInfo(name=row[0], superuser=bool(row[1]), bypassrls=bool(row[2]))


def table_security(conn: Connection, table: Table) -> TableSecurity | None:
    """Return ``table``'s security facts, or ``None`` when it does not exist."""
    row = conn.execute(
        text(
            "SELECT c.oid, pg_get_userbyid(c.relowner), c.relrowsecurity, "
            "c.relforcerowsecurity, pg_has_role(current_user, c.relowner, 'MEMBER'), "
            "has_table_privilege(current_user, c.oid, 'SELECT,INSERT,UPDATE,DELETE') "
            "FROM pg_class c WHERE c.oid = to_regclass(:name)"
        ),
        {"name": _preparer.format_table(table)},
    ).one_or_none()
    if row is None:
        return None
    oid = int(row[0])
    policies = conn.execute(
        text(
            "SELECT polname, polpermissive, polcmd, pg_get_expr(polqual, polrelid), "
            "pg_get_expr(polwithcheck, polrelid) FROM pg_policy WHERE polrelid = :oid "
            "ORDER BY polname"
        ),
        {"oid": oid},
    ).all()
    leads = conn.execute(
        text(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE i.indrelid = :oid"
        ),
        {"oid": oid},
    ).scalars()
    return TableSecurity(
        oid=oid,
        owner=row[1],
        enabled=bool(row[2]),
        forced=bool(row[3]),
        owned_by_role=bool(row[4]),
        accessible=bool(row[5]),
        policies=tuple(
            PolicyInfo(name=p[0], permissive=bool(p[1]), command=p[2], using=p[3], check=p[4])
            for p in policies
        ),
        index_leads=tuple(leads),
    )


def is_tenant_expression(expr: str | None) -> bool:
    """Return whether ``expr`` is exactly the tenant predicate (nothing OR-ed in)."""
    if expr is None:
        return False
    return _TENANT_EXPR.match(re.sub(r"\s+", "", expr).lower()) is not None


def policy_is_tenant_policy(policy: PolicyInfo) -> bool:
    """Return whether ``policy`` limits reads and writes to ``app.tenant_id``."""
    if policy.command == "a":  # INSERT policies only have WITH CHECK
        return is_tenant_expression(policy.check)
    if not is_tenant_expression(policy.using):
        return False
    return policy.check is None or is_tenant_expression(policy.check)


@dataclass(frozen=True, slots=True)
class DependentObject:
    """A view or function that reads a scoped table, and how it runs."""

    kind: str  # "view", "materialized view", "function"
    name: str
    table: str
    invoker: bool


def dependents(conn: Connection, table: Table, oid: int) -> list[DependentObject]:
    """Return views (directly or through other views) and functions that read ``table``."""
    found: list[DependentObject] = []
    seen: set[int] = set()
    frontier = [oid]
    while frontier:
        rows = conn.execute(
            text(
                "SELECT DISTINCT v.oid, v.relkind, v.oid::regclass::text, "
                "coalesce(v.reloptions::text[], '{}') "
                "FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
                "JOIN pg_class v ON v.oid = r.ev_class "
                "WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = ANY(:oids) "
                "AND v.oid <> ALL(:oids)"
            ),
            {"oids": frontier},
        ).all()
        frontier = []
        for view_oid, kind, name, options in rows:
            if view_oid in seen:
                continue
            seen.add(view_oid)
            frontier.append(view_oid)
            invoker = any(
                o.lower() in ("security_invoker=true", "security_invoker=on", "security_invoker=1")
                for o in options
            )
            label = "materialized view" if kind == "m" else "view"
            found.append(DependentObject(label, name, table.fullname, invoker))
    functions = conn.execute(
        text(
            "SELECT p.oid::regprocedure::text FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND p.prosrc ~* ('\\m' || :name || '\\M')"
        ),
        {"name": re.escape(table.name)},
    ).scalars()
    found += [DependentObject("function", f, table.fullname, False) for f in functions]
    return found
