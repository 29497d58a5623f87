"""tenantkit.testing: the assertions catch leaks, and the pytest plugin fixtures work."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import ForeignKey, MetaData, String, create_engine, insert
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.pool import NullPool

from tenantkit._db import NAMING_CONVENTION, make_engine
from tenantkit.errors import ConfigurationError
from tenantkit.rls import apply_rls
from tenantkit.scoping import (
    TenantScoped,
    async_tenant_sessionmaker,
    tenant_fk,
    tenant_key,
    tenant_sessionmaker,
)
from tenantkit.testing import (
    TwoTenants,
    assert_isolated,
    assert_isolated_async,
    make_two_tenants,
    temporary_app_role,
)

pytest_plugins = ["pytester"]

A, B = "tenant-a", "tenant-b"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Board(TenantScoped, Base):
    __tablename__ = "tt_boards"
    __table_args__ = (tenant_key(),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))
    cards: Mapped[list[Card]] = relationship(back_populates="board")


class Card(TenantScoped, Base):
    __tablename__ = "tt_cards"
    __table_args__ = (tenant_fk("board_id", "tt_boards"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    board_id: Mapped[int] = mapped_column()
    board: Mapped[Board] = relationship(back_populates="cards")


class Label(Base):
    __tablename__ = "tt_labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    board_id: Mapped[int | None] = mapped_column(ForeignKey("tt_boards.id"))


def _seed(engine: Engine) -> None:
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(Board.__table__),
            [dict(id=1, tenant_id=A, name="a"), dict(id=2, tenant_id=B, name="b")],
        )
        conn.execute(
            insert(Card.__table__),
            [
                dict(id=1, tenant_id=A, board_id=1),
                dict(id=2, tenant_id=A, board_id=1),
                dict(id=3, tenant_id=B, board_id=2),
            ],
        )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'tt.db'}")
    _seed(eng)
    yield eng
    eng.dispose()


def test_scoped_sessions_pass(engine: Engine) -> None:
    """assert_isolated passes for tenant_sessionmaker on the app's models."""
    assert_isolated(tenant_sessionmaker(engine), [Board, Card])


def test_a_leaky_session_factory_fails(engine: Engine) -> None:
    """A plain sessionmaker leaks, and assert_isolated says which shapes leaked."""
    with pytest.raises(AssertionError) as caught:
        assert_isolated(sessionmaker(engine), [Board])
    report = str(caught.value)
    assert "Board: select entities [tenant-a]" in report
    assert "Board: INSERT naming another tenant [tenant-a]" in report


def test_needs_two_tenants_and_scoped_models(engine: Engine) -> None:
    """One tenant's rows are not enough to prove isolation; unscoped models are refused."""
    with pytest.raises(AssertionError, match="at least two tenants"):
        assert_isolated(tenant_sessionmaker(engine), [Board], tenants=[A])
    with pytest.raises(ConfigurationError, match="not a TenantScoped model"):
        assert_isolated(tenant_sessionmaker(engine), [Label])


def test_async_variant(engine: Engine) -> None:
    """assert_isolated_async runs the same probes through an AsyncSession."""
    url = str(engine.url).replace("sqlite://", "sqlite+aiosqlite://")

    async def main() -> None:
        aengine = create_async_engine(url, poolclass=NullPool)
        try:
            await assert_isolated_async(async_tenant_sessionmaker(aengine), [Board, Card])
        finally:
            await aengine.dispose()

    asyncio.run(main())
    with pytest.raises(ConfigurationError, match="assert_isolated_async"):
        assert_isolated(async_tenant_sessionmaker(create_async_engine(url)), [Board])  # type: ignore[arg-type]


def test_postgres_app_role_under_rls(postgres_url: URL) -> None:
    """Under the RLS app role (tenants named explicitly) the matrix passes, text() included."""
    owner = create_engine(postgres_url)
    _seed(owner)
    apply_rls(owner, Base.metadata)
    try:
        with temporary_app_role(owner, Base.metadata) as role:
            app = create_engine(postgres_url.set(username=role))
            try:
                assert_isolated(tenant_sessionmaker(app), [Board, Card], tenants=[A, B])
            finally:
                app.dispose()
    finally:
        Base.metadata.drop_all(owner)
        owner.dispose()


def test_make_two_tenants() -> None:
    """Two fresh, distinct, valid tenant ids."""
    pair = make_two_tenants()
    assert isinstance(pair, TwoTenants) and pair.a != pair.b
    assert list(pair) == [pair.a, pair.b]


def test_plugin_fixtures(pytester: pytest.Pytester) -> None:
    """With pytest_plugins = ['tenantkit.testing'], the fixtures bind and clear tenants."""
    pytester.makeconftest('pytest_plugins = ["tenantkit.testing"]\n')
    pytester.makepyfile(
        """
        import pytest
        from tenantkit.context import current_tenant_id, get_context
        from tenantkit.errors import NoTenantError

        def test_two(two_tenants, as_tenant):
            with as_tenant(two_tenants.a):
                assert current_tenant_id() == two_tenants.a
            with as_tenant(two_tenants.b):
                assert current_tenant_id() == two_tenants.b

        def test_none(no_tenant):
            assert get_context() is None
            with pytest.raises(NoTenantError):
                current_tenant_id()
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)
