"""``doctor``: read PostgreSQL's catalogs and name every way tenant isolation is misconfigured.

Connect with the engine the application uses: the role matters (a superuser,
a ``BYPASSRLS`` role or the tables' owner skips row-level security).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Engine

from ._scoping_catalog import (
    PolicyInfo,
    connecting_role,
    dependents,
    policy_is_tenant_policy,
    table_security,
)
from ._scoping_models import TENANT_COLUMN, TableSource, scoped_tables
from .rls import POLICY_NAME

NOT_POSTGRESQL = "not-postgresql"
NO_SCOPED_TABLES = "no-scoped-tables"
TABLE_MISSING = "table-missing"
RLS_DISABLED = "rls-disabled"
RLS_NOT_FORCED = "rls-not-forced"
POLICY_MISSING = "policy-missing"
POLICY_UNSAFE = "policy-unsafe"
ROLE_SUPERUSER = "role-superuser"
ROLE_BYPASSRLS = "role-bypassrls"
ROLE_OWNS_TABLE = "role-owns-table"
SECURITY_DEFINER_VIEW = "security-definer-view"
MATERIALIZED_VIEW = "materialized-view"
SECURITY_DEFINER_FUNCTION = "security-definer-function"
MISSING_TENANT_INDEX = "missing-tenant-index"


@dataclass(frozen=True, slots=True)
class Problem:
    """One misconfiguration: a stable ``code``, the ``object`` it concerns, and what to do."""

    code: str
    object: str
    message: str

    @property
    def table(self) -> str:
        """The table, view, function or role named by the problem (same as ``object``)."""
        return self.object

    def __str__(self) -> str:
        return f"{self.code}: {self.object}: {self.message}"


def doctor(engine: Engine | Connection, metadata: TableSource) -> list[Problem]:
    """Return every isolation problem of ``metadata``'s scoped tables as seen by ``engine``'s role.

    An empty list means: PostgreSQL, a role without superuser, ``BYPASSRLS``
    or table ownership, and each scoped table with RLS enabled and forced,
    the tenant policy and nothing looser, an index led by ``tenant_id``, and
    no view or security-definer function that reads it with its owner's rights.
    """
    if engine.dialect.name != "postgresql":
        return [
            Problem(
                NOT_POSTGRESQL,
                engine.dialect.name,
                "row-level security needs PostgreSQL; only the ORM layer isolates tenants here",
            )
        ]
    if isinstance(engine, Connection):
        return _examine(engine, metadata)
    with engine.connect() as conn:
        return _examine(conn, metadata)


def _examine(conn: Connection, metadata: TableSource) -> list[Problem]:
    problems: list[Problem] = []
    role = connecting_role(conn)
    if role.superuser:
        problems.append(
            Problem(
                ROLE_SUPERUSER,
                role.name,
                "the connecting role is a superuser and bypasses row-level security; "
                "connect as a role made with tenantkit.rls.create_app_role",
            )
        )
    if role.bypassrls:
        problems.append(
            Problem(
                ROLE_BYPASSRLS,
                role.name,
                f"the connecting role has BYPASSRLS; ALTER ROLE {role.name} NOBYPASSRLS",
            )
        )
    tables = scoped_tables(metadata)
    if not tables:
        problems.append(
            Problem(NO_SCOPED_TABLES, "metadata", "no TenantScoped table in this metadata")
        )
    for table in tables:
        problems += _examine_table(conn, table, role.name)
    return list(dict.fromkeys(problems))


def _examine_table(conn: Connection, table: Table, role: str) -> list[Problem]:
    name = table.fullname
    security = table_security(conn, table)
    if security is None:
        return [Problem(TABLE_MISSING, name, "the scoped table does not exist in this database")]
    found: list[Problem] = []
    fix = "run `tenantkit db apply-rls` (or tenantkit.rls.apply_rls) as the owner"
    if not security.enabled:
        found.append(Problem(RLS_DISABLED, name, f"row-level security is not enabled; {fix}"))
    if not security.forced:
        found.append(
            Problem(
                RLS_NOT_FORCED,
                name,
                f"row-level security is not forced, so the owner {security.owner!r} "
                f"skips it; {fix}",
            )
        )
    if not _covered(security.policies):
        found.append(
            Problem(
                POLICY_MISSING,
                name,
                f"no policy limits rows to app.tenant_id (expected {POLICY_NAME!r}); {fix}",
            )
        )
    for policy in security.policies:
        if policy.permissive and not policy_is_tenant_policy(policy):
            found.append(
                Problem(
                    POLICY_UNSAFE,
                    f"{name}.{policy.name}",
                    "a permissive policy other than the tenant predicate widens what "
                    "every tenant sees; drop it or make it RESTRICTIVE",
                )
            )
    if security.owned_by_role:
        found.append(
            Problem(
                ROLE_OWNS_TABLE,
                name,
                f"the connecting role {role!r} owns the table (owner {security.owner!r}); "
                "owners can disable RLS: connect as a separate application role",
            )
        )
    if not security.index_leads or TENANT_COLUMN not in security.index_leads:
        found.append(
            Problem(
                MISSING_TENANT_INDEX,
                name,
                "no index starts with tenant_id; every scoped query filters on it",
            )
        )
    for dep in dependents(conn, table, security.oid):
        if dep.kind == "materialized view":
            found.append(
                Problem(
                    MATERIALIZED_VIEW,
                    dep.name,
                    f"materialized view over {name} holds every tenant's rows without RLS",
                )
            )
        elif dep.kind == "view" and not dep.invoker:
            found.append(
                Problem(
                    SECURITY_DEFINER_VIEW,
                    dep.name,
                    f"view over {name} runs with its owner's rights; "
                    f"ALTER VIEW {dep.name} SET (security_invoker = true)",
                )
            )
        elif dep.kind == "function":
            found.append(
                Problem(
                    SECURITY_DEFINER_FUNCTION,
                    dep.name,
                    f"SECURITY DEFINER function reads {name} with its owner's rights; "
                    "make it SECURITY INVOKER",
                )
            )
    return found


def _covered(policies: Iterable[PolicyInfo]) -> bool:
    commands = {p.command for p in policies if p.permissive and policy_is_tenant_policy(p)}
    return "*" in commands or {"r", "a", "w", "d"} <= commands
