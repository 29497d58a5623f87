"""Test helpers that prove an application's tenant isolation; also a pytest plugin.

Enable the fixtures with ``pytest_plugins = ["tenantkit.testing"]`` in
``conftest.py``: ``two_tenants``, ``as_tenant`` and ``no_tenant``. The
assertions (``assert_isolated``, ``assert_isolated_async``,
``assert_rls_enforced``) work in any test runner.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, func, select, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from . import context
from ._scoping_isolation import Probe, describe, probes, tenants_query, truth_query
from ._scoping_models import TableSource, mapped_scoped_tables, scoped_tables
from .context import bound_tenant
from .doctor import doctor
from .errors import ConfigurationError
from .rls import create_app_role, drop_app_role, rls_active

try:
    import pytest
except ImportError:  # pragma: no cover - the assertions work without pytest
    pytest = None  # type: ignore[assignment]

__all__ = [
    "TwoTenants",
    "as_tenant",
    "assert_isolated",
    "assert_isolated_async",
    "assert_rls_enforced",
    "make_two_tenants",
    "no_tenant",
    "temporary_app_role",
]


@dataclass(frozen=True, slots=True)
class TwoTenants:
    """Two distinct, valid tenant ids for isolation tests."""

    a: str
    b: str

    def __iter__(self) -> Iterator[str]:
        return iter((self.a, self.b))


def make_two_tenants() -> TwoTenants:
    """Return two fresh tenant ids no other test uses."""
    suffix = uuid.uuid4().hex[:8]
    return TwoTenants(a=f"tenant-a-{suffix}", b=f"tenant-b-{suffix}")


def assert_isolated(
    session_factory: sessionmaker[Session],
    models: Iterable[type],
    *,
    tenants: Sequence[str] | None = None,
) -> None:
    """Run the statement-shape matrix on ``models`` and fail on any row of another tenant.

    Seed rows of at least two tenants first. Each shape (entities, columns,
    ``OR true``, aliases, subquery, CTE, UNION, EXISTS, window, Core table
    select and UPDATE, ``get()`` of foreign keys, ``text()``, relationship
    loads) must return exactly the bound tenant's rows or be refused; without
    a tenant it must raise; a foreign INSERT and a reused session must raise.
    ``tenants`` names the tenants when they cannot be listed (under RLS).
    """
    if isinstance(session_factory, async_sessionmaker):
        raise ConfigurationError("use `await assert_isolated_async(...)` for async sessions")
    bind = session_factory.kw.get("bind")

    def plain(fn: Callable[[Session], Any]) -> Any:
        with Session(bind) as session:
            return fn(session)

    failures: list[str] = []
    for model in models:
        truth = _truth(model, tenants, plain)
        for probe in probes(model, truth):
            failures += _run_sync(session_factory, probe)
    _report(failures)


async def assert_isolated_async(
    session_factory: async_sessionmaker[AsyncSession],
    models: Iterable[type],
    *,
    tenants: Sequence[str] | None = None,
) -> None:
    """``assert_isolated`` for an ``async_sessionmaker`` (the same probes, via ``run_sync``)."""
    bind = session_factory.kw.get("bind")
    failures: list[str] = []
    for model in models:
        truth: dict[str, set[tuple[Any, ...]]] = {}
        async with AsyncSession(bind) as session:
            listed = await session.run_sync(tenants_query(model))
        names = list(tenants or listed)
        _need_two(model, names)
        for tenant in names:
            async with AsyncSession(bind) as session:
                truth[tenant] = await session.run_sync(truth_query(model, tenant))
        for probe in probes(model, truth):
            failures += await _run_async(session_factory, probe)
    _report(failures)


def _truth(
    model: type, tenants: Sequence[str] | None, plain: Callable[[Callable[[Session], Any]], Any]
) -> dict[str, set[tuple[Any, ...]]]:
    describe(model)
    names = list(tenants or plain(tenants_query(model)))
    _need_two(model, names)
    return {t: plain(truth_query(model, t)) for t in names}


def _need_two(model: type, names: Sequence[str]) -> None:
    if len(set(names)) < 2:
        raise AssertionError(
            f"{model.__name__}: seed rows for at least two tenants (or pass tenants=...)"
        )


def _run_sync(factory: sessionmaker[Session], probe: Probe) -> list[str]:
    def attempt() -> Any:
        with factory() as session:
            try:
                if probe.reuse_with is not None and probe.tenant is not None:
                    with bound_tenant(probe.tenant):
                        session.scalars(select(func.count())).all()
                    with bound_tenant(probe.reuse_with):
                        return probe.fn(session)
                with _bind(probe.tenant):
                    return probe.fn(session)
            finally:
                session.rollback()

    return _judge(probe, attempt)


async def _run_async(factory: async_sessionmaker[AsyncSession], probe: Probe) -> list[str]:
    outcome: list[Any] = []
    error: list[BaseException] = []
    async with factory() as session:
        try:
            if probe.reuse_with is not None and probe.tenant is not None:
                with bound_tenant(probe.tenant):
                    await session.execute(select(func.count()))
                with bound_tenant(probe.reuse_with):
                    outcome.append(await session.run_sync(probe.fn))
            else:
                with _bind(probe.tenant):
                    outcome.append(await session.run_sync(probe.fn))
        except Exception as exc:
            error.append(exc)
        finally:
            await session.rollback()

    def replay() -> Any:
        if error:
            raise error[0]
        return outcome[0]

    return _judge(probe, replay)


@contextmanager
def _bind(tenant: str | None) -> Iterator[None]:
    if tenant is None:
        with context.no_tenant():
            yield
    else:
        with bound_tenant(tenant):
            yield


def _judge(probe: Probe, attempt: Callable[[], Any]) -> list[str]:
    where = f"{probe.label} [{probe.tenant or 'no tenant'}]"
    expect_error = isinstance(probe.expect, type) and issubclass(probe.expect, BaseException)
    try:
        got = attempt()
    except Exception as exc:
        if expect_error and isinstance(exc, probe.expect):
            return []
        return [f"{where}: raised {type(exc).__name__}: {exc}"]
    if expect_error:
        return [f"{where}: returned {got!r} instead of raising {probe.expect.__name__}"]
    if got != probe.expect:
        return [f"{where}: got {got!r}, expected {probe.expect!r}"]
    return []


def _report(failures: list[str]) -> None:
    if failures:
        raise AssertionError("tenant isolation failed:\n  " + "\n  ".join(failures))


def assert_rls_enforced(engine: Engine, metadata: TableSource | None = None) -> None:
    """Fail unless PostgreSQL row-level security binds ``engine``'s role on every scoped table.

    ``metadata`` defaults to every mapped ``TenantScoped`` table that exists and
    that the role holds a privilege on.

    Runs ``doctor``, ``rls_active`` and a probe: with no tenant set and with
    an unknown tenant set, every scoped table must look empty.
    """
    if metadata is None:
        tables = _reachable(engine, scoped_tables(mapped_scoped_tables()))
    else:
        tables = scoped_tables(metadata)
    failures = [str(p) for p in doctor(engine, tables)]
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            if not rls_active(conn, tables=tables):
                failures.append("rls_active() is false for this role")
            conn.rollback()
            for table in tables:
                for setting in ("", f"tk-probe-{uuid.uuid4().hex[:8]}"):
                    with conn.begin():
                        conn.execute(select(func.set_config("app.tenant_id", setting, True)))
                        exists = conn.execute(
                            text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table.fullname}
                        ).scalar()
                        if (
                            exists
                            and conn.execute(select(func.count()).select_from(table)).scalar()
                        ):
                            failures.append(
                                f"{table.fullname}: rows visible with app.tenant_id={setting!r}"
                            )
    _report(failures)


def _reachable(engine: Engine, tables: list[Table]) -> list[Table]:
    """Return the tables that exist and that ``engine``'s role holds a privilege on."""
    present = sa_inspect(engine)
    found = [t for t in tables if present.has_table(t.name, t.schema)]
    if engine.dialect.name != "postgresql":
        return found
    with engine.connect() as conn:
        check = text("SELECT has_table_privilege(current_user, :t, 'SELECT,INSERT,UPDATE,DELETE')")
        return [t for t in found if conn.execute(check, {"t": t.fullname}).scalar()]


@contextmanager
def temporary_app_role(owner: Engine, metadata: TableSource) -> Iterator[str]:
    """Create a uniquely named non-owner application role for a test; drop it afterwards."""
    name = f"tk_app_{uuid.uuid4().hex[:12]}"
    create_app_role(owner, name, metadata=metadata)
    try:
        yield name
    finally:
        drop_app_role(owner, name)


as_tenant = bound_tenant
no_tenant = context.no_tenant

if pytest is not None:

    @pytest.fixture(name="two_tenants")
    def _two_tenants_fixture() -> TwoTenants:
        """Two fresh tenant ids: ``two_tenants.a`` and ``two_tenants.b``."""
        return make_two_tenants()

    @pytest.fixture(name="as_tenant")
    def _as_tenant_fixture() -> Callable[..., Any]:
        """``with as_tenant("acme"): ...`` binds a tenant for the block."""
        return bound_tenant

    @pytest.fixture(name="no_tenant")
    def _no_tenant_fixture() -> Iterator[None]:
        """Run the test with no tenant bound (scoped code must fail closed)."""
        with context.no_tenant():
            yield
