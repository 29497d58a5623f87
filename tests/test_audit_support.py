"""Models, engines and helpers shared by the audit tests (this module has no tests)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import ForeignKey, MetaData, String, create_engine, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from tenantkit import _db, audit
from tenantkit._audit_model import LOG
from tenantkit._db import make_engine
from tenantkit.scoping import TenantScoped


class Model(DeclarativeBase):
    metadata = MetaData()


class Project(TenantScoped, Model):
    __tablename__ = "audit_t_projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    description: Mapped[str | None] = mapped_column(String(200))
    api_token: Mapped[str | None] = mapped_column(String(64))
    tasks: Mapped[list[Task]] = relationship(cascade="all, delete-orphan")


class Task(TenantScoped, Model):
    __tablename__ = "audit_t_tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("audit_t_projects.id"))
    title: Mapped[str] = mapped_column(String(50))


@audit.audited(exclude=("last_seen",), redact=("ssn",), resource_type="person")
class Contact(Model):
    """Not tenant-scoped: audited because it opts in; its tenant comes from the context."""

    __tablename__ = "audit_t_contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100))
    ssn: Mapped[str | None] = mapped_column(String(20))
    last_seen: Mapped[str | None] = mapped_column(String(40))


class Note(TenantScoped, Model):
    """Tenant-scoped but opted out."""

    __tablename__ = "audit_t_notes"
    __audit__ = False

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(100))


def _sqlite(tmp_path: Any) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path}/audit.db")
    yield engine
    engine.dispose()


def _postgres(request: pytest.FixtureRequest) -> Iterator[Engine]:
    url = request.getfixturevalue("postgres_url")
    schema = f"tka_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(
        url.render_as_string(hide_password=False),
        connect_args={"options": f"-csearch_path={schema}"},
    )
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(
    name="engine", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def engine_fixture(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    """An empty database with the audit tables and the test models, on each backend."""
    engines = _sqlite(tmp_path) if request.param == "sqlite" else _postgres(request)
    eng = next(engines)
    audit.create_tables(eng)
    Model.metadata.create_all(eng)
    yield eng
    next(engines, None)


@pytest.fixture(name="pg_engine")
def pg_engine_fixture(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An empty PostgreSQL schema with the audit tables and the test models."""
    engines = _postgres(request)
    eng = next(engines)
    audit.create_tables(eng)
    Model.metadata.create_all(eng)
    yield eng
    next(engines, None)


@pytest.fixture(name="maker")
def maker_fixture(engine: Engine) -> Iterator[sessionmaker[Any]]:
    """A sessionmaker with audit capture installed (removed afterwards)."""
    factory = sessionmaker(engine)
    audit.install(factory, record_unscoped=False)
    yield factory
    audit.uninstall(factory)


class FakeClock:
    """A settable clock standing in for ``tenantkit._db.utcnow``."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(name="clock")
def clock_fixture(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Freeze the time entries are stamped with."""
    fake = FakeClock(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    monkeypatch.setattr(_db, "utcnow", fake)
    return fake


def rows(engine: Engine, tenant_id: str | None = None) -> list[dict[str, Any]]:
    """Return the stored entries (all tenants, or one), in chain order."""
    stmt = select(LOG).order_by(LOG.c.tenant_id, LOG.c.seq)
    if tenant_id is not None:
        stmt = stmt.where(LOG.c.tenant_id == tenant_id)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(stmt)]


def actions(engine: Engine, tenant_id: str | None = None) -> list[str]:
    """Return the stored entries' actions in chain order."""
    return [row["action"] for row in rows(engine, tenant_id)]
