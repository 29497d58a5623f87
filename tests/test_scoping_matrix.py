"""The statement-shape matrix: shapes x {A, B, no tenant} x {SQLite, PostgreSQL} x {sync, async}.

Each shape runs in a fresh scoped session and must return exactly the rows of
the bound tenant, or be refused. On PostgreSQL it runs twice: as the tables'
owner (superuser, so only the ORM layer filters) and as a non-owner application
role under row-level security (where ``text()`` is allowed and filtered by the
database).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    ForeignKey,
    MetaData,
    String,
    column,
    create_engine,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    table,
    text,
    union,
    update,
)
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    aliased,
    contains_eager,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
    subqueryload,
)
from sqlalchemy.pool import NullPool

from tenantkit._db import NAMING_CONVENTION, make_engine
from tenantkit.context import bound_tenant
from tenantkit.errors import CrossTenantError, NoTenantError
from tenantkit.rls import apply_rls, create_app_role, drop_app_role
from tenantkit.scoping import (
    TenantScoped,
    async_tenant_sessionmaker,
    tenant_fk,
    tenant_key,
    tenant_sessionmaker,
    tenant_unique,
)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Plan(Base):
    """A global (not tenant-scoped) table."""

    __tablename__ = "mx_plans"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))


class Project(TenantScoped, Base):
    __tablename__ = "mx_projects"
    __table_args__ = (tenant_key(), tenant_unique("name"))
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    plan_id: Mapped[int | None] = mapped_column(ForeignKey("mx_plans.id"))
    tasks: Mapped[list[Task]] = relationship(back_populates="project", order_by="Task.id")


class Task(TenantScoped, Base):
    __tablename__ = "mx_tasks"
    __table_args__ = (
        tenant_key(),
        tenant_fk("project_id", "mx_projects"),
        tenant_fk("parent_id", "mx_tasks"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column()
    parent_id: Mapped[int | None] = mapped_column()
    title: Mapped[str] = mapped_column(String(50))
    points: Mapped[int] = mapped_column()
    project: Mapped[Project] = relationship(back_populates="tasks")


A, B, C = "tenant-a", "tenant-b", "tenant-c"
PLANS = [(1, "free"), (2, "pro")]
PROJECTS = [(1, A, "alpha", 1), (2, A, "beta", 2), (3, B, "alpha", 1), (4, C, "gamma", None)]
TASKS = [  # id, tenant, project, parent, title, points
    (1, A, 1, None, "a1", 3),
    (2, A, 1, 1, "a2", 5),
    (3, A, 2, None, "a3", 8),
    (4, B, 3, None, "b1", 2),
    (5, B, 3, 4, "b2", 7),
    (6, C, 4, None, "c1", 1),
]


def projects(t: str) -> list[tuple[Any, ...]]:
    return [p for p in PROJECTS if p[1] == t]


def tasks(t: str) -> list[tuple[Any, ...]]:
    return [r for r in TASKS if r[1] == t]


def ids(rows: Any) -> list[Any]:
    return sorted(r[0] for r in rows)


tt, pt = Task.__table__, Project.__table__
Parent = aliased(Task)


@dataclass(frozen=True)
class Shape:
    name: str
    run: Callable[[Session], Any]
    expect: Callable[[str, str], Any]  # (tenant, backend) -> value or exception class


def rows(stmt_factory: Callable[[], Any]) -> Callable[[Session], Any]:
    return lambda s: sorted(tuple(r) for r in s.execute(stmt_factory()).all())


def _lazy(s: Session) -> Any:
    return sorted((p.id, [t.id for t in p.tasks]) for p in s.scalars(select(Project)))


def _loaded(option: Any, join: bool = False) -> Callable[[Session], Any]:
    def run(s: Session) -> Any:
        stmt = select(Project)
        if join:
            stmt = stmt.join(Project.tasks)
        found = s.scalars(stmt.options(option)).unique()
        return sorted((p.id, [t.id for t in p.tasks]) for p in found)

    return run


def _loaded_where(option: Any, where: Callable[[], Any]) -> Callable[[Session], Any]:
    def run(s: Session) -> Any:
        found = s.scalars(select(Project).options(option).where(where())).unique()
        return sorted((p.id, [t.id for t in p.tasks]) for p in found)

    return run


def _children(t: str) -> list[tuple[int, list[int]]]:
    return [(p[0], [r[0] for r in tasks(t) if r[2] == p[0]]) for p in projects(t)]


def _insert_other_tenant(s: Session) -> Any:
    s.execute(insert(tt).values(tenant_id=C, project_id=4, title="x", points=1))


def _add_other_tenant(s: Session) -> Any:
    s.add(Task(tenant_id=C, project_id=4, title="x", points=1))
    s.flush()


def _add_stamped(s: Session) -> Any:
    first = s.scalars(select(Project).order_by(Project.id)).first()
    assert first is not None
    task = Task(project_id=first.id, title="new", points=1)
    s.add(task)
    s.flush()
    return task.tenant_id


def _from_select() -> Any:
    source = select(tt.c.tenant_id, tt.c.project_id, tt.c.title + "-copy", tt.c.points)
    names = ["tenant_id", "project_id", "title", "points"]
    return insert(tt).from_select(names, source).returning(tt.c.title)


def _bulk_by_pk(s: Session) -> Any:
    s.execute(update(Task), [{"id": 1, "points": 50}, {"id": 4, "points": 50}])
    return sorted(s.execute(select(tt.c.id, tt.c.points)).all())


def _rls_text(t: str, backend: str) -> Any:
    return [(r[0],) for r in tasks(t)] if backend == "pg-app" else CrossTenantError


SHAPES = [
    Shape(
        "orm_entities",
        lambda s: sorted(x.id for x in s.scalars(select(Task))),
        lambda t, b: ids(tasks(t)),
    ),
    Shape(
        "orm_columns",
        rows(lambda: select(Task.id, Task.title)),
        lambda t, b: sorted((r[0], r[4]) for r in tasks(t)),
    ),
    Shape(
        "where_or",
        rows(lambda: select(Task.id).where(or_(Task.points > 4, Task.title == "a1"))),
        lambda t, b: [(r[0],) for r in tasks(t) if r[5] > 4 or r[4] == "a1"],
    ),
    Shape(
        "count",
        lambda s: s.scalar(select(func.count()).select_from(Task)),
        lambda t, b: len(tasks(t)),
    ),
    Shape("legacy_query_count", lambda s: s.query(Task).count(), lambda t, b: len(tasks(t))),
    Shape(
        "relationship_join",
        rows(lambda: select(Task.id, Project.name).join(Task.project)),
        lambda t, b: sorted((r[0], next(p[2] for p in PROJECTS if p[0] == r[2])) for r in tasks(t)),
    ),
    Shape(
        "select_from_join",
        rows(
            lambda: (
                select(Project.name, Task.id)
                .select_from(Task)
                .join(Project, Task.project_id == Project.id)
            )
        ),
        lambda t, b: sorted((next(p[2] for p in PROJECTS if p[0] == r[2]), r[0]) for r in tasks(t)),
    ),
    Shape(
        "outer_join_count",
        rows(
            lambda: (
                select(Project.id, func.count(Task.id))
                .outerjoin(Task, Task.project_id == Project.id)
                .group_by(Project.id)
            )
        ),
        lambda t, b: [(p[0], len([r for r in tasks(t) if r[2] == p[0]])) for p in projects(t)],
    ),
    Shape(
        "aliased_self_join",
        rows(lambda: select(Task.id, Parent.id).join(Parent, Task.parent_id == Parent.id)),
        lambda t, b: [(r[0], r[3]) for r in tasks(t) if r[3] is not None],
    ),
    Shape(
        "global_table_join",
        rows(lambda: select(Project.id, Plan.name).join(Plan, Project.plan_id == Plan.id)),
        lambda t, b: [(p[0], dict(PLANS)[p[3]]) for p in projects(t) if p[3] is not None],
    ),
    Shape(
        "cte",
        rows(lambda: select(select(Task.id).where(Task.points > 2).cte("big").c.id)),
        lambda t, b: [(r[0],) for r in tasks(t) if r[5] > 2],
    ),
    Shape(
        "union",
        rows(lambda: union(select(Task.title), select(Project.name))),
        lambda t, b: sorted({(r[4],) for r in tasks(t)} | {(p[2],) for p in projects(t)}),
    ),
    Shape(
        "exists_uncorrelated",
        rows(lambda: select(Project.id).where(exists(select(Task.id).where(Task.points > 7)))),
        lambda t, b: [(p[0],) for p in projects(t)] if any(r[5] > 7 for r in tasks(t)) else [],
    ),
    Shape(
        "in_subquery",
        rows(
            lambda: select(Task.id).where(
                Task.project_id.in_(select(Project.id).where(Project.name == "alpha"))
            )
        ),
        lambda t, b: [
            (r[0],) for r in tasks(t) if any(p[0] == r[2] and p[2] == "alpha" for p in PROJECTS)
        ],
    ),
    Shape(
        "scalar_subquery_max",
        lambda s: s.scalar(select(select(func.max(Task.points)).scalar_subquery())),
        lambda t, b: max(r[5] for r in tasks(t)),
    ),
    Shape(
        "window_row_number",
        rows(lambda: select(Task.id, func.row_number().over(order_by=Task.points.desc()))),
        lambda t, b: sorted(
            (r[0], i + 1) for i, r in enumerate(sorted(tasks(t), key=lambda r: -r[5]))
        ),
    ),
    Shape("lazy_load", _lazy, lambda t, b: _children(t)),
    Shape("joinedload", _loaded(joinedload(Project.tasks)), lambda t, b: _children(t)),
    Shape("selectinload", _loaded(selectinload(Project.tasks)), lambda t, b: _children(t)),
    Shape("subqueryload", _loaded(subqueryload(Project.tasks)), lambda t, b: _children(t)),
    Shape(
        "contains_eager",
        _loaded(contains_eager(Project.tasks), join=True),
        lambda t, b: [c for c in _children(t) if c[1]],
    ),
    Shape(
        "get_other_tenant",
        lambda s: [getattr(s.get(Task, i), "id", None) for i in (1, 4)],
        lambda t, b: [1 if t == A else None, 4 if t == B else None],
    ),
    Shape(
        "core_select_table",
        rows(lambda: select(tt)),
        lambda t, b: sorted((*r[:1], *r[2:], r[1]) for r in tasks(t)),  # tenant_id comes last
    ),
    Shape(
        "core_table_alias",
        rows(lambda: select(tt.alias("t2").c.id)),
        lambda t, b: [(r[0],) for r in tasks(t)],
    ),
    Shape(
        "core_join",
        rows(
            lambda: select(tt.c.id, pt.c.name).select_from(tt.join(pt, tt.c.project_id == pt.c.id))
        ),
        lambda t, b: sorted((r[0], next(p[2] for p in PROJECTS if p[0] == r[2])) for r in tasks(t)),
    ),
    Shape(
        "core_outer_join",
        rows(
            lambda: select(pt.c.id, tt.c.id).select_from(
                pt.outerjoin(tt, tt.c.project_id == pt.c.id)
            )
        ),
        lambda t, b: sorted((r[2], r[0]) for r in tasks(t)),
    ),
    Shape(
        "core_update",
        rows(lambda: update(tt).values(points=tt.c.points + 1).returning(tt.c.id)),
        lambda t, b: [(r[0],) for r in tasks(t)],
    ),
    Shape(
        "core_delete",
        rows(lambda: delete(tt).where(tt.c.points > 0).returning(tt.c.id)),
        lambda t, b: [(r[0],) for r in tasks(t)],
    ),
    Shape(
        "orm_bulk_update",
        rows(lambda: update(Task).values(points=Task.points + 1).returning(Task.id)),
        lambda t, b: [(r[0],) for r in tasks(t)],
    ),
    Shape(
        "orm_bulk_delete",
        rows(lambda: delete(Task).where(Task.points > 0).returning(Task.id)),
        lambda t, b: [(r[0],) for r in tasks(t)],
    ),
    Shape(
        "insert_from_select",
        rows(_from_select),
        lambda t, b: sorted((r[4] + "-copy",) for r in tasks(t)),
    ),
    Shape(
        "orm_bulk_update_by_pk",
        _bulk_by_pk,
        lambda t, b: [(r[0], 50 if r[0] in (1, 4) else r[5]) for r in tasks(t)],
    ),
    Shape(
        "orm_with_core_subquery",
        rows(lambda: select(Task.id).where(Task.id.in_(select(tt.c.parent_id)))),
        lambda t, b: sorted({(r[3],) for r in tasks(t) if r[3] is not None}),
    ),
    Shape(
        "orm_where_raw_column",
        rows(lambda: select(Project.id).where(tt.c.points > 7, tt.c.project_id == Project.id)),
        lambda t, b: sorted({(r[2],) for r in tasks(t) if r[5] > 7}),
    ),
    Shape(
        "joinedload_with_core_subquery",
        _loaded_where(joinedload(Project.tasks), lambda: Project.id.in_(select(tt.c.project_id))),
        lambda t, b: [c for c in _children(t) if c[1]],
    ),
    Shape(
        "orm_join_to_raw_table",
        rows(lambda: select(Project.id, tt.c.id).join(tt, tt.c.project_id == Project.id)),
        lambda t, b: sorted((r[2], r[0]) for r in tasks(t)),
    ),
    Shape(
        "core_union_all",
        rows(lambda: select(tt.c.id).union_all(select(pt.c.id + 100))),
        lambda t, b: sorted([(r[0],) for r in tasks(t)] + [(p[0] + 100,) for p in projects(t)]),
    ),
    Shape("insert_other_tenant", _insert_other_tenant, lambda t, b: CrossTenantError),
    Shape("add_other_tenant", _add_other_tenant, lambda t, b: CrossTenantError),
    Shape("add_stamped", _add_stamped, lambda t, b: t),
    Shape(
        "lightweight_table",
        rows(lambda: select(table("mx_tasks", column("id")))),
        lambda t, b: CrossTenantError,
    ),
    Shape("text", rows(lambda: text("SELECT id FROM mx_tasks")), _rls_text),
    Shape(
        "literal_text_in_where",
        rows(lambda: select(Task.id).where(text("points > 0"))),
        lambda t, b: [(r[0],) for r in tasks(t)] if b == "pg-app" else CrossTenantError,
    ),
    Shape(
        "core_insert_literal_tenant",
        rows(
            lambda: (
                insert(tt)
                .values(tenant_id=literal(C), project_id=4, title="x", points=1)
                .returning(tt.c.id)
            )
        ),
        lambda t, b: CrossTenantError,
    ),
]


def seed(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(Plan.__table__), [dict(id=i, name=n) for i, n in PLANS])
        conn.execute(
            insert(pt), [dict(id=i, tenant_id=t, name=n, plan_id=p) for i, t, n, p in PROJECTS]
        )
        keys = ("id", "tenant_id", "project_id", "parent_id", "title", "points")
        conn.execute(insert(tt), [dict(zip(keys, r, strict=True)) for r in TASKS])
        if engine.dialect.name == "postgresql":
            for name in ("mx_plans", "mx_projects", "mx_tasks"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), 100)"))


@dataclass
class Backend:
    name: str
    sync: Engine
    async_url: str


@pytest.fixture(scope="module")
def sqlite_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    path: Path = tmp_path_factory.mktemp("matrix") / "mx.db"
    engine = make_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    seed(engine)
    yield Backend("sqlite", engine, f"sqlite+aiosqlite:///{path}")
    engine.dispose()


@pytest.fixture(scope="module")
def pg_backends(postgres_url: URL) -> Iterator[dict[str, Backend]]:
    owner = create_engine(postgres_url)
    Base.metadata.create_all(owner)
    seed(owner)
    role = f"tk_app_{uuid.uuid4().hex[:10]}"
    apply_rls(owner, Base.metadata)
    create_app_role(owner, role, metadata=Base.metadata)
    app_url = postgres_url.set(username=role)
    app = create_engine(app_url)
    url = postgres_url.render_as_string(hide_password=False)
    try:
        yield {
            "pg-owner": Backend("pg-owner", owner, url),
            "pg-app": Backend("pg-app", app, app_url.render_as_string(hide_password=False)),
        }
    finally:
        app.dispose()
        Base.metadata.drop_all(owner)
        drop_app_role(owner, role)
        owner.dispose()


@pytest.fixture(params=["sqlite", "pg-owner", "pg-app"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_backend")  # type: ignore[no-any-return]
    return request.getfixturevalue("pg_backends")[request.param]  # type: ignore[no-any-return]


def _expected(shape: Shape, tenant: str | None, backend: Backend) -> Any:
    return NoTenantError if tenant is None else shape.expect(tenant, backend.name)


def _is_error(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, Exception)


def _run_sync(shape: Shape, backend: Backend) -> Any:
    maker = tenant_sessionmaker(backend.sync)
    with maker() as session:
        try:
            return shape.run(session)
        finally:
            session.rollback()


async def _run_async(shape: Shape, backend: Backend) -> Any:
    engine = create_async_engine(backend.async_url, poolclass=NullPool)
    try:
        maker = async_tenant_sessionmaker(engine)
        async with maker() as session:
            try:
                return await session.run_sync(shape.run)
            finally:
                await session.rollback()
    finally:
        await engine.dispose()


def _check(value: Callable[[], Any], expected: Any) -> None:
    if _is_error(expected):
        with pytest.raises(expected):
            value()
    else:
        assert value() == expected


@pytest.mark.parametrize("tenant", [A, B, None], ids=["tenant-a", "tenant-b", "no-tenant"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_sync_shape(shape: Shape, tenant: str | None, backend: Backend) -> None:
    """A sync scoped session returns exactly the bound tenant's rows for the shape, or refuses."""
    expected = _expected(shape, tenant, backend)
    if tenant is None:
        _check(lambda: _run_sync(shape, backend), expected)
        return
    with bound_tenant(tenant):
        _check(lambda: _run_sync(shape, backend), expected)


@pytest.mark.parametrize("tenant", [A, B, None], ids=["tenant-a", "tenant-b", "no-tenant"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_async_shape(shape: Shape, tenant: str | None, backend: Backend) -> None:
    """An AsyncSession returns exactly the bound tenant's rows for the shape, or refuses."""
    expected = _expected(shape, tenant, backend)

    def run() -> Any:
        if tenant is None:
            return asyncio.run(_run_async(shape, backend))
        with bound_tenant(tenant):
            return asyncio.run(_run_async(shape, backend))

    _check(run, expected)


def test_matrix_is_wide_enough() -> None:
    """The matrix covers at least twenty distinct statement shapes."""
    assert len({s.name for s in SHAPES}) >= 20
