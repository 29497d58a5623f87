"""Models, sessions and refusals of tenantkit.scoping (SQLite; the matrix covers PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import (
    ForeignKey,
    MetaData,
    String,
    bindparam,
    func,
    insert,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    column_property,
    mapped_column,
    sessionmaker,
)
from sqlalchemy.pool import NullPool

from tenantkit._db import NAMING_CONVENTION, make_engine
from tenantkit.context import bound_tenant
from tenantkit.errors import ConfigurationError, CrossTenantError, NoTenantError
from tenantkit.scoping import (
    TenantScoped,
    TenantSession,
    async_tenant_sessionmaker,
    install_scoping,
    is_scoped_table,
    scoped_tables,
    tenant_column,
    tenant_fk,
    tenant_key,
    tenant_sessionmaker,
    tenant_unique,
)

A, B = "tenant-a", "tenant-b"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Team(TenantScoped, Base):
    __tablename__ = "sc_teams"
    __table_args__ = (tenant_key(),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


class Member(TenantScoped, Base):
    __tablename__ = "sc_members"
    __table_args__ = (tenant_key(), tenant_unique("email"), tenant_fk("team_id", "sc_teams"))
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(80))
    team_id: Mapped[int | None] = mapped_column()


class Summary(TenantScoped, Base):
    """Counts teams through the raw Table: nothing can scope that subquery."""

    __tablename__ = "sc_summaries"
    id: Mapped[int] = mapped_column(primary_key=True)
    teams = column_property(
        select(func.count(Team.__table__.c.id)).scalar_subquery()  # type: ignore[attr-defined]
    )


class Tally(TenantScoped, Base):
    """Counts teams through the model: the loader criteria scope the subquery."""

    __tablename__ = "sc_tallies"
    id: Mapped[int] = mapped_column(primary_key=True)
    teams = column_property(select(func.count(Team.id)).scalar_subquery())


class Region(Base):
    __tablename__ = "sc_regions"
    id: Mapped[int] = mapped_column(primary_key=True)
    team_hint: Mapped[int | None] = mapped_column(ForeignKey("sc_teams.id"))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'sc.db'}")
    Base.metadata.create_all(eng)
    with eng.begin() as conn:
        conn.execute(
            insert(Team.__table__),
            [dict(id=1, tenant_id=A, name="red"), dict(id=2, tenant_id=B, name="blue")],
        )
        conn.execute(
            insert(Member.__table__),
            [
                dict(id=1, tenant_id=A, email="x@a.test", team_id=1),
                dict(id=2, tenant_id=B, email="x@a.test", team_id=2),
            ],
        )
    yield eng
    eng.dispose()


@pytest.fixture
def maker(engine: Engine) -> sessionmaker[Session]:
    return tenant_sessionmaker(engine)


def test_mixin_column_is_scoped_indexed_and_not_null() -> None:
    """TenantScoped adds a non-null, indexed String(63) tenant_id that marks the table scoped."""
    col = Team.__table__.c.tenant_id
    assert (col.nullable, col.index, col.type.length) == (False, True, 63)
    assert is_scoped_table(Team.__table__) and not is_scoped_table(Region.__table__)
    assert [t.name for t in scoped_tables(Base.metadata)] == [
        "sc_members",
        "sc_summaries",
        "sc_tallies",
        "sc_teams",
    ]


def test_tenant_column_marks_a_core_table() -> None:
    """tenant_column() opts a Core Table into scoping."""
    from sqlalchemy import Column, Integer, Table

    table = Table("sc_core", MetaData(), Column("id", Integer, primary_key=True), tenant_column())
    assert is_scoped_table(table)


def test_composite_fk_refuses_a_reference_to_another_tenants_row(engine: Engine) -> None:
    """A row of tenant A cannot point at tenant B's row: the composite FK fails."""
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(Member.__table__).values(id=9, tenant_id=A, email="y", team_id=2))


def test_tenant_unique_is_per_tenant(engine: Engine) -> None:
    """The same email exists in two tenants, but twice in one tenant is refused."""
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(Member.__table__).values(id=9, tenant_id=A, email="x@a.test"))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: tenant_unique(), "at least one column"),
        (lambda: tenant_unique("tenant_id"), "adds tenant_id itself"),
        (lambda: tenant_fk("tenant_id", "teams"), "expected 'table.column'"),
        (lambda: tenant_fk("team_id", "teams."), "expected 'table.column'"),
    ],
)
def test_helpers_refuse_bad_declarations(call: object, message: str) -> None:
    """tenant_unique and tenant_fk reject declarations that cannot work."""
    with pytest.raises(ConfigurationError, match=message):
        call()  # type: ignore[operator]


def test_tenant_fk_targets() -> None:
    """tenant_fk points (tenant_id, col) at (table.tenant_id, table.id) or a named column."""
    fk = tenant_fk("team_id", "sc_teams")
    assert [e.target_fullname for e in fk.elements] == ["sc_teams.tenant_id", "sc_teams.id"]
    fk = tenant_fk("code", "app.teams.code")
    assert [e.target_fullname for e in fk.elements] == ["app.teams.tenant_id", "app.teams.code"]


def test_new_objects_are_stamped(maker: sessionmaker[Session]) -> None:
    """A new object gets the session's tenant_id on flush."""
    with bound_tenant(A), maker() as s:
        team = Team(name="green")
        s.add(team)
        s.flush()
        assert team.tenant_id == A


def test_tenant_id_cannot_change_after_insert(maker: sessionmaker[Session]) -> None:
    """Setting tenant_id on a persisted row raises at once."""
    with bound_tenant(A), maker() as s:
        team = s.get(Team, 1)
        assert team is not None
        with pytest.raises(CrossTenantError, match="immutable"):
            team.tenant_id = B


def test_session_used_under_another_tenant_raises(maker: sessionmaker[Session]) -> None:
    """A session that ran for A refuses to run statements for B."""
    with maker() as s:
        with bound_tenant(A):
            assert [t.id for t in s.scalars(select(Team))] == [1]
        with bound_tenant(B), pytest.raises(CrossTenantError, match="belongs to tenant"):
            s.scalars(select(Team)).all()


def test_identity_map_never_serves_another_tenant(maker: sessionmaker[Session]) -> None:
    """get() of a cached object under another tenant raises instead of returning it."""
    with maker() as s:
        with bound_tenant(A):
            assert s.get(Team, 1) is not None
        with bound_tenant(B), pytest.raises(CrossTenantError):
            s.get(Team, 1)


def test_a_closed_session_may_serve_another_tenant(maker: sessionmaker[Session]) -> None:
    """close() empties the identity map, so the session may then serve tenant B."""
    s = maker()
    with bound_tenant(A):
        assert s.get(Team, 1) is not None
    s.close()
    with bound_tenant(B):
        assert s.get(Team, 1) is None
        assert s.scalars(select(Team.id)).all() == [2]
    s.close()


def test_no_tenant_fails_closed(maker: sessionmaker[Session]) -> None:
    """Without a tenant, queries, get() and flushes of scoped objects raise NoTenantError."""
    with maker() as s:
        with pytest.raises(NoTenantError):
            s.execute(select(Region))
        with pytest.raises(NoTenantError):
            s.get(Team, 1)
        s.add(Team(name="x"))
        with pytest.raises(NoTenantError):
            s.flush()


def test_attaching_another_tenants_object_is_refused(
    engine: Engine, maker: sessionmaker[Session]
) -> None:
    """An object loaded for B cannot be added to A's session."""
    with bound_tenant(B), maker() as s:
        blue = s.get(Team, 2)
    with bound_tenant(A), maker() as s, pytest.raises(CrossTenantError, match="cannot join"):
        s.add(blue)


def test_new_object_naming_another_tenant_is_refused(maker: sessionmaker[Session]) -> None:
    """An object created with another tenant's id is refused (on add or flush)."""
    with bound_tenant(A), maker() as s, pytest.raises(CrossTenantError):
        s.add(Team(tenant_id=B, name="spy"))
        s.flush()


def test_update_setting_tenant_id_is_refused(maker: sessionmaker[Session]) -> None:
    """ORM and Core UPDATEs and parameters that set tenant_id are refused."""
    statements = [
        (update(Team).values(tenant_id=B), None),
        (update(Team.__table__).values(tenant_id=B), None),
        (update(Team), [{"id": 1, "tenant_id": B}]),
        (
            update(Team.__table__).where(Team.__table__.c.id == bindparam("k")),
            [{"k": 1, "tenant_id": B}],
        ),
    ]
    for stmt, params in statements:
        with bound_tenant(A), maker() as s, pytest.raises(CrossTenantError, match="immutable"):
            s.execute(stmt, params)


def test_core_update_from_another_scoped_table_scopes_both(maker: sessionmaker[Session]) -> None:
    """UPDATE ... FROM a second scoped table filters the target and the FROM table."""
    m, t = Member.__table__, Team.__table__
    stmt = update(m).where(m.c.team_id == t.c.id).values(email="new").returning(m.c.id)
    with bound_tenant(B), maker() as s:
        assert s.execute(stmt).all() == [(2,)]
        s.rollback()


def test_bulk_insert_is_stamped_and_checked(maker: sessionmaker[Session]) -> None:
    """ORM bulk INSERT rows are stamped; a row naming another tenant is refused."""
    with bound_tenant(A), maker() as s:
        s.execute(insert(Team), [{"name": "one"}, {"name": "two", "tenant_id": A}])
        assert s.scalar(select(func.count()).select_from(Team)) == 3
        with pytest.raises(CrossTenantError):
            s.execute(insert(Team), [{"name": "three", "tenant_id": B}])


def test_insert_values_checks(maker: sessionmaker[Session]) -> None:
    """Multi-row VALUES need tenant_id per row; tenant_id cannot be an SQL expression."""
    t = Team.__table__
    with bound_tenant(A), maker() as s:
        with pytest.raises(CrossTenantError, match="needs tenant_id"):
            s.execute(insert(t).values([{"name": "a"}, {"name": "b"}]))
        with pytest.raises(CrossTenantError, match="plain value"):
            s.execute(insert(t).values(name="a", tenant_id=func.lower("TENANT-A")))
        s.execute(insert(t).values([{"name": "a", "tenant_id": A}]))
        s.execute(insert(t).values(name="b"))
        assert s.scalar(select(func.count()).select_from(t)) == 3


def test_insert_from_select_needs_a_checked_tenant_id(maker: sessionmaker[Session]) -> None:
    """INSERT ... FROM SELECT must take tenant_id from a scoped column or the current tenant."""
    t = Team.__table__
    with bound_tenant(A), maker() as s:
        with pytest.raises(CrossTenantError, match="must select tenant_id"):
            s.execute(insert(t).from_select(["name"], select(t.c.name)))
        with pytest.raises(CrossTenantError):
            s.execute(insert(t).from_select(["tenant_id", "name"], select(literal(B), t.c.name)))
        s.execute(insert(t).from_select(["tenant_id", "name"], select(literal(A), t.c.name)))
        assert s.scalar(select(func.count()).select_from(t)) == 2


def test_upsert_cannot_touch_another_tenants_row(
    engine: Engine, maker: sessionmaker[Session]
) -> None:
    """ON CONFLICT DO UPDATE only updates a conflicting row of the session's tenant."""
    t = Team.__table__
    stmt = sqlite.insert(t).values(id=2, name="hijack")
    with bound_tenant(A), maker() as s:
        s.execute(stmt.on_conflict_do_update(index_elements=[t.c.id], set_={"name": "hijack"}))
        s.commit()
        with pytest.raises(CrossTenantError, match="cannot change tenant_id"):
            s.execute(stmt.on_conflict_do_update(index_elements=[t.c.id], set_={"tenant_id": A}))
    with engine.connect() as conn:
        assert conn.execute(select(t.c.name).where(t.c.id == 2)).scalar() == "blue"


def test_legacy_bulk_api_is_refused(maker: sessionmaker[Session]) -> None:
    """bulk_save_objects and the *_mappings methods bypass scoping and are refused."""
    with bound_tenant(A), maker() as s:
        for call in (
            lambda: s.bulk_save_objects([Team(tenant_id=B, name="x")]),
            lambda: s.bulk_insert_mappings(Team, [{"tenant_id": B, "name": "x"}]),  # type: ignore[arg-type]
            lambda: s.bulk_update_mappings(Team, [{"id": 2, "name": "x"}]),  # type: ignore[arg-type]
        ):
            with pytest.raises(CrossTenantError, match="bypasses tenant scoping"):
                call()


def test_column_property_over_a_raw_table_is_refused(engine: Engine) -> None:
    """A column_property reading a scoped Table is refused; one built from the model is scoped."""
    with engine.begin() as conn:
        conn.execute(insert(Summary.__table__).values(id=1, tenant_id=A))
        conn.execute(insert(Tally.__table__).values(id=1, tenant_id=A))
    maker = tenant_sessionmaker(engine)
    with bound_tenant(A), maker() as s:
        assert s.scalars(select(Tally.teams)).all() == [1]
        with pytest.raises(CrossTenantError, match=r"Summary\.teams is a column_property"):
            s.scalars(select(Summary)).all()


def test_memo_tells_orm_and_core_forms_apart(maker: sessionmaker[Session]) -> None:
    """select(Model.id) and select(table.c.id) share a shape but not a memo entry."""
    t = Team.__table__
    for _ in range(2):
        with bound_tenant(A), maker() as s:
            assert s.scalars(select(Team.id)).all() == [1]
            assert s.scalars(select(t.c.id)).all() == [1]
            assert s.scalars(select(t.c.id).where(t.c.id > 0)).all() == [1]
            assert s.scalars(select(Team.id).where(Team.id > 0)).all() == [1]


def test_literal_columns(maker: sessionmaker[Session]) -> None:
    """literal_column('*') and names pass; an SQL fragment in literal_column is refused."""
    with bound_tenant(A), maker() as s:
        assert s.scalar(select(func.count(literal_column("*"))).select_from(Team)) == 1
        with pytest.raises(CrossTenantError, match="literal_column"):
            s.execute(select(Team.id).where(literal_column("1 = 1 OR id > 0")))


def test_full_outer_join_is_refused(maker: sessionmaker[Session]) -> None:
    """A Core FULL OUTER JOIN of a scoped table cannot be scoped and is refused."""
    m, t = Member.__table__, Team.__table__
    with bound_tenant(A), maker() as s, pytest.raises(CrossTenantError, match="FULL OUTER"):
        s.execute(select(m.c.id).select_from(m.join(t, m.c.team_id == t.c.id, full=True)))


def test_orm_outer_join_to_a_raw_table_is_refused(maker: sessionmaker[Session]) -> None:
    """An ORM query outer-joined to a scoped Table (not the model) is refused."""
    t = Team.__table__
    with bound_tenant(A), maker() as s, pytest.raises(CrossTenantError, match="outer join"):
        s.execute(select(Member.id).outerjoin(t, Member.team_id == t.c.id))


def test_global_tables_need_a_tenant_too(maker: sessionmaker[Session]) -> None:
    """A scoped session runs nothing without a tenant, even on a global table."""
    with maker() as s, pytest.raises(NoTenantError):
        s.execute(select(Region.id))


def test_plain_sessions_are_untouched(engine: Engine, maker: sessionmaker[Session]) -> None:
    """No listener leaks onto ordinary sessions: a plain Session sees every tenant."""
    with Session(engine) as s:
        assert s.scalars(select(Team.id).order_by(Team.id)).all() == [1, 2]


def test_install_scoping_targets(engine: Engine) -> None:
    """install_scoping scopes a sessionmaker, an async_sessionmaker and a Session class."""
    plain = install_scoping(sessionmaker(engine))
    assert issubclass(plain.class_, TenantSession)
    with bound_tenant(A), plain() as s:
        assert s.scalars(select(Team.id)).all() == [1]
    amaker = install_scoping(async_sessionmaker())
    assert issubclass(amaker.kw["sync_session_class"], TenantSession)
    assert issubclass(install_scoping(Session), TenantSession)
    with pytest.raises(ConfigurationError):
        install_scoping(object())


def test_async_session_is_scoped(engine: Engine) -> None:
    """AsyncSession: execute, get, flush stamping, no tenant and reuse all follow the rules."""
    url = str(engine.url).replace("sqlite://", "sqlite+aiosqlite://")

    async def main() -> None:
        aengine = create_async_engine(url, poolclass=NullPool)
        maker = async_tenant_sessionmaker(aengine, expire_on_commit=False)
        try:
            async with maker() as s:
                with bound_tenant(B):
                    assert (await s.scalars(select(Team.id))).all() == [2]
                    assert await s.get(Team, 1) is None
                    team = Team(name="async")
                    s.add(team)
                    await s.flush()
                    assert team.tenant_id == B
                    await s.rollback()
                with bound_tenant(A), pytest.raises(CrossTenantError):
                    await s.execute(select(Team))
            async with maker() as s:
                with pytest.raises(NoTenantError):
                    await s.execute(select(Team))
        finally:
            await aengine.dispose()

    asyncio.run(main())
