"""PostgreSQL row-level security: the DDL, raw SQL under the app role, and pool hygiene."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import MetaData, String, create_engine, func, insert, select, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tenantkit._db import NAMING_CONVENTION, make_engine
from tenantkit.context import bound_tenant
from tenantkit.errors import ConfigurationError, CrossTenantError
from tenantkit.rls import apply_rls, grant_ddl, rls_active, rls_ddl, view_ddl
from tenantkit.scoping import (
    TenantScoped,
    async_tenant_sessionmaker,
    forget_rls_verification,
    tenant_sessionmaker,
)
from tenantkit.testing import assert_rls_enforced, temporary_app_role

A, B = "tenant-a", "tenant-b"
POLICY = "tenant_id = nullif((SELECT current_setting('app.tenant_id', true)), '')"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Doc(TenantScoped, Base):
    __tablename__ = "rl_docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(40))


class Secret(TenantScoped, Base):
    """Created without RLS by one test only."""

    __tablename__ = "rl_secrets"
    id: Mapped[int] = mapped_column(primary_key=True)


class Country(Base):
    __tablename__ = "rl_countries"
    code: Mapped[str] = mapped_column(String(2), primary_key=True)


def test_rls_ddl_for_each_scoped_table() -> None:
    """rls_ddl enables, forces and creates the tenant policy on scoped tables only."""
    assert rls_ddl([Doc.__table__, Country.__table__]) == [
        "ALTER TABLE rl_docs ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE rl_docs FORCE ROW LEVEL SECURITY",
        "DROP POLICY IF EXISTS tenantkit_tenant_isolation ON rl_docs",
        "CREATE POLICY tenantkit_tenant_isolation ON rl_docs AS PERMISSIVE FOR ALL TO PUBLIC "
        f"USING ({POLICY}) WITH CHECK ({POLICY})",
    ]


def test_grants_for_the_app_role() -> None:
    """The app role gets DML on every table, its schema and sequences, never ownership."""
    assert grant_ddl([Country.__table__, Doc.__table__], "app_rw") == [
        "GRANT USAGE ON SCHEMA public TO app_rw",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON rl_countries TO app_rw",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON rl_docs TO app_rw",
        "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO app_rw",
    ]
    with pytest.raises(ConfigurationError, match="role name"):
        grant_ddl([], "app; DROP TABLE x")


def test_view_ddl_makes_security_invoker_views() -> None:
    """view_ddl builds views that apply the caller's row-level security."""
    assert view_ddl("app.docs_v", "SELECT 1", replace=True) == (
        "CREATE OR REPLACE VIEW app.docs_v WITH (security_invoker = true) AS SELECT 1"
    )
    ddl = view_ddl("docs_v", select(Doc.id).where(Doc.title == "x"))
    assert ddl.startswith("CREATE VIEW docs_v WITH (security_invoker = true) AS SELECT rl_docs.id")
    assert "'x'" in ddl


def test_apply_rls_needs_postgresql() -> None:
    """Applying RLS to SQLite is a configuration error, not a silent no-op."""
    engine = make_engine("sqlite://")
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        apply_rls(engine, [Doc.__table__])
    with engine.connect() as conn:
        assert rls_active(conn) is False
    engine.dispose()


@dataclass
class PG:
    owner: Engine
    app_url: URL
    role: str


@pytest.fixture(scope="module")
def pg(postgres_url: URL) -> Iterator[PG]:
    owner = create_engine(postgres_url)
    Base.metadata.create_all(owner, tables=[Doc.__table__, Country.__table__])
    with owner.begin() as conn:
        conn.execute(
            insert(Doc.__table__),
            [dict(id=1, tenant_id=A, title="a1"), dict(id=2, tenant_id=B, title="b1")],
        )
        conn.execute(text("SELECT setval(pg_get_serial_sequence('rl_docs', 'id'), 100)"))
    apply_rls(owner, [Doc.__table__])
    with temporary_app_role(owner, [Doc.__table__, Country.__table__]) as role:
        yield PG(owner, postgres_url.set(username=role), role)
    Base.metadata.drop_all(owner, tables=[Doc.__table__, Country.__table__])
    owner.dispose()


@pytest.fixture
def app_engine(pg: PG) -> Iterator[Engine]:
    engine = create_engine(pg.app_url, pool_size=1, max_overflow=0)
    yield engine
    forget_rls_verification(engine)
    engine.dispose()


def _setting(conn: object) -> str | None:
    return conn.execute(select(func.current_setting("app.tenant_id", True))).scalar()  # type: ignore[attr-defined, no-any-return]


def test_raw_sql_is_filtered_by_the_database(app_engine: Engine) -> None:
    """Under the app role raw SQL sees nothing without a tenant and only the set tenant's rows."""
    with app_engine.begin() as conn:
        assert conn.execute(text("SELECT id FROM rl_docs")).all() == []
        conn.execute(select(func.set_config("app.tenant_id", B, True)))
        assert conn.execute(text("SELECT id FROM rl_docs")).all() == [(2,)]
        assert conn.execute(text("UPDATE rl_docs SET title = 'x' WHERE id = 1")).rowcount == 0


def test_writes_for_another_tenant_are_rejected(app_engine: Engine) -> None:
    """WITH CHECK stops raw INSERTs and UPDATEs that name another tenant."""
    for statement in (
        "INSERT INTO rl_docs (tenant_id, title) VALUES ('tenant-b', 'spy')",
        "UPDATE rl_docs SET tenant_id = 'tenant-b' WHERE id = 1",
    ):
        with pytest.raises(DBAPIError, match="row-level security"), app_engine.begin() as conn:
            conn.execute(select(func.set_config("app.tenant_id", A, True)))
            conn.execute(text(statement))


def test_rls_active_only_for_the_app_role(pg: PG, app_engine: Engine) -> None:
    """rls_active is true for the non-owner app role and false for the superuser owner."""
    with app_engine.connect() as conn:
        assert rls_active(conn, tables=[Doc.__table__]) is True
    with pg.owner.connect() as conn:
        assert rls_active(conn, tables=[Doc.__table__]) is False


def test_rls_active_counts_every_table_the_role_can_reach(pg: PG, app_engine: Engine) -> None:
    """A scoped table without RLS makes rls_active false once the app role is granted it."""
    Secret.__table__.create(pg.owner)
    try:
        with app_engine.connect() as conn:
            assert rls_active(conn) is True  # no privilege on rl_secrets: out of reach
        with pg.owner.begin() as conn:
            conn.execute(text(f"GRANT SELECT ON rl_secrets TO {pg.role}"))
        with app_engine.connect() as conn:
            assert rls_active(conn) is False
    finally:
        Secret.__table__.drop(pg.owner)


def test_assert_rls_enforced(pg: PG, app_engine: Engine) -> None:
    """assert_rls_enforced passes for the app role and names the superuser owner's problems."""
    assert_rls_enforced(app_engine, [Doc.__table__])
    assert_rls_enforced(app_engine)  # every mapped scoped table the role can reach
    with pytest.raises(AssertionError, match="role-superuser"):
        assert_rls_enforced(pg.owner, [Doc.__table__])


def test_fresh_checkout_after_a_request_sees_nothing(app_engine: Engine) -> None:
    """After a session for A ends, the pooled connection carries no tenant."""
    maker = tenant_sessionmaker(app_engine)
    with bound_tenant(A), maker() as s:
        assert s.scalars(select(Doc.id)).all() == [1]
        assert s.scalar(select(func.current_setting("app.tenant_id", True))) == A
        s.commit()
    with app_engine.connect() as conn:
        assert _setting(conn) in ("", None)
        assert conn.execute(text("SELECT count(*) FROM rl_docs")).scalar() == 0


def test_commit_then_continue_keeps_the_tenant(app_engine: Engine) -> None:
    """A new transaction after commit sets the tenant again (per-session after_begin)."""
    maker = tenant_sessionmaker(app_engine)
    with bound_tenant(A), maker() as s:
        s.add(Doc(title="first"))
        s.commit()
        assert s.scalar(select(func.current_setting("app.tenant_id", True))) == A
        assert s.execute(text("SELECT count(*) FROM rl_docs")).scalar() == 2
        s.rollback()
        s.execute(text("DELETE FROM rl_docs WHERE title = 'first'"))
        s.commit()


def test_rolled_back_savepoint_keeps_the_tenant(app_engine: Engine) -> None:
    """Rolling back a savepoint does not undo the transaction's tenant setting."""
    maker = tenant_sessionmaker(app_engine)
    with bound_tenant(B), maker() as s:
        s.execute(select(Doc.id)).all()
        nested = s.begin_nested()
        s.add(Doc(title="temp"))
        s.flush()
        nested.rollback()
        assert s.scalar(select(func.current_setting("app.tenant_id", True))) == B
        assert s.execute(text("SELECT id FROM rl_docs")).all() == [(2,)]


def test_next_tenant_on_the_same_connection(app_engine: Engine) -> None:
    """With one pooled connection, A's session then B's session each see only their rows."""
    maker = tenant_sessionmaker(app_engine)
    seen = []
    for tenant in (A, B):
        with bound_tenant(tenant), maker() as s:
            seen.append(s.execute(text("SELECT id FROM rl_docs")).scalars().all())
    assert seen == [[1], [2]]


def test_a_transaction_begun_for_a_tenant_claims_the_session(app_engine: Engine) -> None:
    """session.connection() under A sets A and binds the session; B cannot use it after."""
    maker = tenant_sessionmaker(app_engine)
    with maker() as s:
        with bound_tenant(A):
            assert _setting(s.connection()) == A
        with bound_tenant(B), pytest.raises(CrossTenantError):
            s.scalars(select(Doc.id)).all()
    with maker() as s:
        assert _setting(s.connection()) in ("", None)  # no tenant: nothing visible


def test_async_pool_hygiene(pg: PG) -> None:
    """AsyncSession (psycopg async): the tenant is set per transaction and gone after."""

    async def main() -> tuple[list[int], str | None]:
        engine = create_async_engine(pg.app_url, pool_size=1, max_overflow=0)
        try:
            maker = async_tenant_sessionmaker(engine)
            with bound_tenant(A):
                async with maker() as s:
                    ids = list((await s.scalars(text("SELECT id FROM rl_docs"))).all())
            async with engine.connect() as conn:
                after = (
                    await conn.execute(select(func.current_setting("app.tenant_id", True)))
                ).scalar()
            return ids, after
        finally:
            await engine.dispose()

    ids, after = asyncio.run(main())
    assert ids == [1]
    assert after in ("", None)


def test_security_invoker_view_is_filtered(pg: PG, app_engine: Engine) -> None:
    """A view with security_invoker applies the caller's RLS; the app role sees one tenant."""
    with pg.owner.begin() as conn:
        conn.execute(text(view_ddl("rl_docs_v", select(Doc.__table__))))
        conn.execute(text(f"GRANT SELECT ON rl_docs_v TO {pg.role}"))
    try:
        with app_engine.begin() as conn:
            conn.execute(select(func.set_config("app.tenant_id", A, True)))
            assert conn.execute(text("SELECT id FROM rl_docs_v")).scalars().all() == [1]
    finally:
        with pg.owner.begin() as conn:
            conn.execute(text("DROP VIEW rl_docs_v"))
