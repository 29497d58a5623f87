"""ORM bulk UPDATE/DELETE of a joined-inheritance subclass stays within the tenant.

The subclass's own table has no tenant_id: its rows belong to the tenant of
the parent row they extend, so the tenant criterion on the parent table must
be joined to the subclass table, or the statement reaches every tenant's rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ForeignKey, MetaData, String, create_engine, delete, insert, select, update
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tenantkit._db import NAMING_CONVENTION, make_engine
from tenantkit.context import bound_tenant
from tenantkit.errors import CrossTenantError
from tenantkit.rls import apply_rls
from tenantkit.scoping import TenantScoped, tenant_key, tenant_sessionmaker
from tenantkit.testing import temporary_app_role

A, B = "tenant-a", "tenant-b"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Vehicle(TenantScoped, Base):
    __tablename__ = "ri_vehicles"
    __table_args__ = (tenant_key(),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}


class Truck(Vehicle):
    __tablename__ = "ri_trucks"
    id: Mapped[int] = mapped_column(ForeignKey("ri_vehicles.id"), primary_key=True)
    load: Mapped[str] = mapped_column(String(40))
    __mapper_args__ = {"polymorphic_identity": "truck"}


V, T = Vehicle.__table__, Truck.__table__


def seed(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(V),
            [
                dict(id=1, tenant_id=A, name="a-truck", kind="truck"),
                dict(id=2, tenant_id=B, name="b-truck", kind="truck"),
            ],
        )
        conn.execute(insert(T), [dict(id=1, load="apples"), dict(id=2, load="bricks")])


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'ri.db'}")
    Base.metadata.create_all(eng)
    seed(eng)
    yield eng
    eng.dispose()


def state(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        stmt = select(V.c.id, V.c.tenant_id, V.c.name, T.c.load).join(T, T.c.id == V.c.id)
        return [tuple(r) for r in conn.execute(stmt.order_by(V.c.id))]


SEEDED = [(1, A, "a-truck", "apples"), (2, B, "b-truck", "bricks")]


def test_bulk_update_of_a_subclass_touches_only_the_tenants_rows(engine: Engine) -> None:
    """update(Truck).values(...) under A changes A's truck only, not B's."""
    maker = tenant_sessionmaker(engine)
    with bound_tenant(A), maker() as s:
        assert s.execute(update(Truck).values(load="hay")).rowcount == 1
        s.execute(update(Truck).where(Truck.id == 2).values(load="stolen"))
        s.commit()
    assert state(engine) == [(1, A, "a-truck", "hay"), SEEDED[1]]


def test_bulk_update_by_primary_key_of_a_subclass_is_scoped(engine: Engine) -> None:
    """update(Truck) with [{id: <B's id>, ...}] under A changes nothing of B's."""
    maker = tenant_sessionmaker(engine)
    with bound_tenant(A), maker() as s:
        s.execute(update(Truck), [{"id": 2, "load": "stolen", "name": "stolen"}])
        s.execute(update(Truck), [{"id": 1, "load": "hay", "name": "mine"}])
        s.commit()
    assert state(engine) == [(1, A, "mine", "hay"), SEEDED[1]]


def test_a_subclass_update_cannot_move_a_row_to_another_tenant(engine: Engine) -> None:
    """tenant_id set through a subclass's bulk UPDATE by primary key is refused."""
    maker = tenant_sessionmaker(engine)
    with bound_tenant(A), maker() as s, pytest.raises(CrossTenantError, match="immutable"):
        s.execute(update(Truck), [{"id": 1, "tenant_id": B}])
    assert state(engine) == SEEDED


@pytest.fixture
def pg_app(postgres_url: URL) -> Iterator[tuple[Engine, Engine]]:
    owner = create_engine(postgres_url)
    Base.metadata.create_all(owner)
    seed(owner)
    apply_rls(owner, Base.metadata)
    try:
        with temporary_app_role(owner, Base.metadata) as role:
            app = create_engine(postgres_url.set(username=role))
            try:
                yield owner, app
            finally:
                app.dispose()
    finally:
        Base.metadata.drop_all(owner)
        owner.dispose()


def test_postgresql_subclass_update_and_delete_stay_in_the_tenant(
    pg_app: tuple[Engine, Engine],
) -> None:
    """Under RLS too (the subclass table has no policy): B's truck survives A's bulk DML."""
    owner, app = pg_app
    maker = tenant_sessionmaker(app)
    with bound_tenant(A), maker() as s:
        assert s.execute(update(Truck).values(load="hay")).rowcount == 1
        s.execute(update(Truck).where(Truck.id == 2).values(load="stolen"))
        s.execute(update(Truck), [{"id": 2, "load": "stolen"}])
        s.execute(delete(Truck).where(Truck.load != "nothing"))
        s.commit()
    with Session(owner) as s:
        assert s.execute(select(T.c.id, T.c.load)).all() == [(2, "bricks")]
