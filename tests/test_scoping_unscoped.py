"""unscoped(): the audited escape hatch needs an admin and a reason, and cleans up after itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, String, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import NullPool

from tenantkit import _scoping_unscoped
from tenantkit._db import NAMING_CONVENTION, make_engine
from tenantkit.context import bound_tenant
from tenantkit.errors import CrossTenantError, Forbidden, NoTenantError, ValidationError
from tenantkit.scoping import (
    TenantScoped,
    UnscopedEvent,
    async_tenant_sessionmaker,
    is_admin,
    on_unscoped,
    remove_unscoped_hook,
    system_identity,
    tenant_sessionmaker,
    unscoped,
)
from tenantkit.types import Identity

A, B = "tenant-a", "tenant-b"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Note(TenantScoped, Base):
    __tablename__ = "us_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(40))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'us.db'}")
    Base.metadata.create_all(eng)
    with eng.begin() as conn:
        conn.execute(
            insert(Note.__table__),
            [dict(id=1, tenant_id=A, body="a"), dict(id=2, tenant_id=B, body="b")],
        )
    yield eng
    eng.dispose()


@pytest.fixture
def maker(engine: Engine) -> sessionmaker[Session]:
    return tenant_sessionmaker(engine)


@pytest.fixture(autouse=True)
def _own_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hooks other tests left registered must not fire here."""
    monkeypatch.setattr(_scoping_unscoped, "_hooks", [])


@pytest.fixture
def events() -> Iterator[list[UnscopedEvent]]:
    seen: list[UnscopedEvent] = []
    on_unscoped(seen.append)
    yield seen
    remove_unscoped_hook(seen.append)


def test_admin_rule() -> None:
    """Superadmins and system jobs are admins; a tenant's own 'admin' role is not."""
    assert is_admin(system_identity())
    assert is_admin(Identity(tenant_id=A, source="jwt", roles=frozenset({"superadmin"})))
    assert not is_admin(Identity(tenant_id=A, source="jwt", roles=frozenset({"admin"})))
    assert not is_admin(Identity(tenant_id=A, source="system"))


def test_rows_of_every_tenant_come_back_with_tenant_id(
    maker: sessionmaker[Session], events: list[UnscopedEvent]
) -> None:
    """Inside unscoped() a query sees all tenants and each row carries its tenant_id."""
    with bound_tenant(system_identity("nightly"), request_id="r-1"), maker() as s:
        with unscoped(s, reason="monthly report"):
            rows = s.execute(select(Note.id, Note.tenant_id).order_by(Note.id)).all()
        assert rows == [(1, A), (2, B)]
    (event,) = events
    assert event.engine is maker.kw["bind"]
    assert (event.reason, event.actor, event.tenant_id, event.request_id) == (
        "monthly report",
        "user:nightly",
        None,
        "r-1",
    )


def test_non_admin_and_missing_reason_are_refused(maker: sessionmaker[Session]) -> None:
    """A tenant user cannot go unscoped, and nobody can without a reason."""
    tenant_admin = Identity(tenant_id=A, source="jwt", roles=frozenset({"admin"}))
    with (
        bound_tenant(tenant_admin),
        maker() as s,
        pytest.raises(Forbidden),
        unscoped(s, reason="peek"),
    ):
        pass
    with maker() as s, pytest.raises(Forbidden), unscoped(s, reason="no context"):
        pass
    with (
        bound_tenant(system_identity()),
        maker() as s,
        pytest.raises(ValidationError),
        unscoped(s, reason="  "),
    ):
        pass


def test_bind_specific_hooks(engine: Engine, maker: sessionmaker[Session]) -> None:
    """A hook registered with bind= hears only about sessions on that engine."""
    here: list[str] = []
    elsewhere: list[str] = []
    other = make_engine("sqlite://")

    def mine(event: UnscopedEvent) -> None:
        here.append(event.reason)

    def theirs(event: UnscopedEvent) -> None:
        elsewhere.append(event.reason)

    on_unscoped(mine, bind=engine)
    on_unscoped(theirs, bind=other)
    with bound_tenant(system_identity()), maker() as s, unscoped(s, reason="scoped to engine"):
        pass
    remove_unscoped_hook(mine)
    remove_unscoped_hook(theirs)
    other.dispose()
    assert (here, elsewhere) == (["scoped to engine"], [])


def test_a_failing_hook_aborts_the_block(maker: sessionmaker[Session]) -> None:
    """If the audit hook cannot record, the unscoped work does not run."""

    def broken(_event: UnscopedEvent) -> None:
        raise RuntimeError("audit store down")

    on_unscoped(broken)
    ran = []
    try:
        with (
            bound_tenant(system_identity()),
            maker() as s,
            pytest.raises(RuntimeError),
            unscoped(s, reason="job"),
        ):
            ran.append(True)
    finally:
        remove_unscoped_hook(broken)
    assert ran == []


def test_foreign_rows_are_evicted_on_exit(
    maker: sessionmaker[Session], events: list[UnscopedEvent]
) -> None:
    """After unscoped(), the session's scoped use never sees objects it loaded unscoped."""
    admin = Identity(tenant_id=A, source="jwt", subject="ops", roles=frozenset({"superadmin"}))
    with bound_tenant(admin), maker() as s:
        assert [n.id for n in s.scalars(select(Note))] == [1]
        with unscoped(s, reason="support ticket 7"):
            other = s.get(Note, 2)
            assert other is not None and other.tenant_id == B
        assert s.get(Note, 2) is None
        assert events[0].tenant_id == A


def test_new_objects_inside_need_a_tenant(maker: sessionmaker[Session]) -> None:
    """A new scoped object created unscoped must name its tenant; with one it is written."""
    with bound_tenant(system_identity()), maker() as s, unscoped(s, reason="import"):
        s.add(Note(body="orphan"))
        with pytest.raises(NoTenantError):
            s.flush()
        s.rollback()
        s.add(Note(body="for b", tenant_id=B))
        s.flush()
        s.commit()
        assert s.scalar(select(Note.tenant_id).where(Note.body == "for b")) == B


def test_unflushed_foreign_changes_are_refused(maker: sessionmaker[Session]) -> None:
    """Leaving unscoped() with pending changes to another tenant's object raises."""
    with (
        bound_tenant(system_identity()),
        maker() as s,
        pytest.raises(CrossTenantError, match="unflushed"),
        unscoped(s, reason="fix"),
    ):
        note = s.get(Note, 2)
        assert note is not None
        note.body = "edited"


def test_nested_blocks_stay_unscoped_until_the_outer_ends(maker: sessionmaker[Session]) -> None:
    """An inner unscoped() block ending does not rescope the outer one."""
    with bound_tenant(system_identity()), maker() as s:
        with unscoped(s, reason="outer"):
            with unscoped(s, reason="inner"):
                pass
            assert len(s.scalars(select(Note)).all()) == 2
        assert s.scalars(select(Note)).all() == []  # the system tenant owns no rows


def test_async_session(engine: Engine) -> None:
    """unscoped() accepts an AsyncSession."""
    url = str(engine.url).replace("sqlite://", "sqlite+aiosqlite://")

    async def main() -> list[str]:
        aengine = create_async_engine(url, poolclass=NullPool)
        try:
            async with async_tenant_sessionmaker(aengine)() as s:
                with unscoped(s, reason="async report"):
                    return list((await s.scalars(select(Note.tenant_id))).all())
        finally:
            await aengine.dispose()

    with bound_tenant(system_identity()):
        assert sorted(asyncio.run(main())) == [A, B]
