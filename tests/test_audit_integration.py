"""Audit through the adapters, async sessions, scoped sessions, unscoped() and subscribers."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tenantkit import audit, scoping
from tenantkit.asgi import TenantKitMiddleware
from tenantkit.audit import AuditEntry
from tenantkit.context import bind, bound_tenant, current_tenant_id, reset
from tenantkit.wsgi import TenantKitWSGIMiddleware
from test_audit_support import (  # noqa: F401  (fixtures)
    Model,
    Project,
    actions,
    engine_fixture,
    maker_fixture,
    rows,
)

Maker = sessionmaker[Any]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def received() -> Iterator[list[list[AuditEntry]]]:
    """Collect what subscribers are told; unsubscribe afterwards."""
    batches: list[list[AuditEntry]] = []
    unsubscribe = audit.subscribe(batches.append)
    yield batches
    unsubscribe()


@pytest.fixture
def kit_and_maker(make_kit: Callable[..., Any]) -> Iterator[tuple[Any, Maker]]:
    """A kit on SQLite with the test models and an audited sessionmaker on its engine."""
    kit = make_kit()
    audit.create_tables(kit.engine)
    Model.metadata.create_all(kit.engine)
    factory = sessionmaker(kit.engine)
    audit.install(factory, record_unscoped=False)
    yield kit, factory
    audit.uninstall(factory)


# -- subscribers ------------------------------------------------------------


def test_subscribers_hear_of_committed_entries_only(
    engine: Engine, maker: Maker, received: list[list[AuditEntry]]
) -> None:
    """Subscribers get each commit's entries after it; a rollback tells them nothing."""
    with bound_tenant("acme"), maker() as session:
        session.add(Project(tenant_id="acme", name="a"))
        session.flush()
        assert received == []
        session.commit()
        session.add(Project(tenant_id="acme", name="b"))
        session.flush()
        session.rollback()
    assert [[e.action for e in batch] for batch in received] == [["project.created"]]
    assert received[0][0].hash == rows(engine)[0]["hash"]


def test_failing_subscriber_is_logged_and_the_commit_stands(
    engine: Engine,
    maker: Maker,
    received: list[list[AuditEntry]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subscriber that raises is logged; the commit and later subscribers are unaffected."""

    def broken(entries: list[AuditEntry]) -> None:
        raise RuntimeError("webhook down")

    unsubscribe = audit.subscribe(broken)
    try:
        with (
            caplog.at_level(logging.ERROR, "tenantkit.audit"),
            bound_tenant("acme"),
            maker() as session,
        ):
            session.add(Project(tenant_id="acme", name="a"))
            session.commit()
    finally:
        unsubscribe()
    assert actions(engine) == ["project.created"]
    assert "webhook down" in caplog.text
    assert len(received) == 1


def test_savepoint_entries_reach_subscribers_only_if_kept(
    engine: Engine, maker: Maker, received: list[list[AuditEntry]]
) -> None:
    """Entries of a rolled-back savepoint are not announced; a released one's are."""
    with bound_tenant("acme"), maker() as session:
        with session.begin_nested():
            session.add(Project(tenant_id="acme", name="kept"))
        nested = session.begin_nested()
        session.add(Project(tenant_id="acme", name="dropped"))
        session.flush()
        nested.rollback()
        session.commit()
    announced = [e.changes["name"][1] for batch in received for e in batch if e.changes]
    assert announced == ["kept"]


def test_audit_log_record_notifies_after_its_commit(
    engine: Engine, received: list[list[AuditEntry]]
) -> None:
    """AuditLog.record commits on its own and then notifies."""
    entry = audit.AuditLog(engine).record("quota.exceeded", tenant_id="acme", actor="api_key:k1")
    assert received == [[entry]]
    assert rows(engine)[0]["actor"] == "api_key:k1"


# -- async sessions -----------------------------------------------------------


def _async_engine(engine: Engine) -> Any:
    """An async engine on the same database (and PostgreSQL schema) as ``engine``."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    if engine.dialect.name == "sqlite":
        return create_async_engine(f"sqlite+aiosqlite:///{engine.url.database}")
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar()
    return create_async_engine(
        engine.url.render_as_string(hide_password=False),
        connect_args={"options": f"-csearch_path={schema}"},
    )


@pytest.mark.anyio
async def test_async_sessions_are_captured(engine: Engine) -> None:
    """An async_sessionmaker gets the same capture; rollback leaves nothing."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    async_engine = _async_engine(engine)
    factory = async_sessionmaker(async_engine)
    audit.install(factory)
    try:
        with bound_tenant("acme"):
            async with factory() as session:
                session.add(Project(tenant_id="acme", name="a"))
                await session.commit()
                session.add(Project(tenant_id="acme", name="b"))
                await session.flush()
                await session.rollback()
                await session.execute(update(Project).values(description="bulk"))
                await audit.arecord(session, "user.login")
                await session.commit()
            async with factory() as session:
                found = await session.run_sync(lambda s: audit.query(s).items)
                assert (await session.run_sync(lambda s: audit.verify(s, "acme"))).ok
    finally:
        audit.uninstall(factory)
        await async_engine.dispose()
    assert [e.action for e in found] == ["user.login", "project.updated", "project.created"]


def test_installing_on_an_async_maker_leaves_other_sessions_alone(engine: Engine) -> None:
    """install() on an async_sessionmaker does not audit plain Session objects."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    factory = async_sessionmaker()
    audit.install(factory)
    try:
        with bound_tenant("acme"), Session(engine) as session:
            session.add(Project(tenant_id="acme", name="a"))
            session.commit()
    finally:
        audit.uninstall(factory)
    assert actions(engine) == []


# -- scoped sessions and unscoped() ------------------------------------------


def test_scoped_bulk_update_records_only_the_tenants_rows(engine: Engine) -> None:
    """Through a tenant-scoped session a bulk UPDATE changes and records only own rows."""
    with Session(engine) as plain:
        plain.add_all([Project(tenant_id="acme", name="a"), Project(tenant_id="beta", name="b")])
        plain.commit()
    factory = scoping.tenant_sessionmaker(engine)
    audit.install(factory, record_unscoped=False)
    try:
        with bound_tenant("acme"), factory() as session:
            session.execute(update(Project).values(description="touched"))
            session.commit()
    finally:
        audit.uninstall(factory)
    assert [(r["tenant_id"], r["action"]) for r in rows(engine)] == [("acme", "project.updated")]
    with Session(engine) as plain:
        beta = plain.scalars(select(Project).where(Project.tenant_id == "beta")).one()
    assert beta.description is None


def test_unscoped_use_is_recorded(engine: Engine) -> None:
    """Every unscoped() block leaves an 'unscoped.used' entry; uninstall stops that."""
    factory = scoping.tenant_sessionmaker(engine)
    audit.install(factory)  # the sessionmaker's engine records unscoped() uses
    identity = scoping.system_identity("nightly-job")
    try:
        with bound_tenant(identity), factory() as session:
            with scoping.unscoped(session, reason="backfill projects"):
                session.add(Project(tenant_id="beta", name="x"))
                session.flush()
            session.commit()
    finally:
        audit.uninstall(factory)
    with bound_tenant(identity), factory() as session, scoping.unscoped(session, reason="later"):
        pass
    used = [r for r in rows(engine) if r["action"] == "unscoped.used"]
    assert [u["metadata"]["reason"] for u in used] == ["backfill projects"]
    assert used[0]["actor"] == "user:nightly-job"
    assert [r["action"] for r in rows(engine, "beta")] == ["project.created"]


def test_unscoped_hook_is_shared_per_engine(engine: Engine) -> None:
    """Two installs on one engine record each unscoped() use once, until both are gone."""
    first, second = scoping.tenant_sessionmaker(engine), scoping.tenant_sessionmaker(engine)
    audit.install(first)
    audit.install(second)
    identity = scoping.system_identity()

    def use(reason: str) -> None:
        with bound_tenant(identity), first() as session, scoping.unscoped(session, reason=reason):
            pass

    try:
        use("both installed")
        audit.uninstall(first)
        use("one installed")
    finally:
        audit.uninstall(second)
    use("none installed")
    reasons = [r["metadata"]["reason"] for r in rows(engine) if r["action"] == "unscoped.used"]
    assert reasons == ["both installed", "one installed"]


# -- through the adapters ------------------------------------------------------


def _starlette_app(kit: Any, factory: Maker) -> TenantKitMiddleware:
    async def create(request: Request) -> Response:
        body = json.loads(await request.body())
        with factory() as session:
            project = Project(tenant_id=current_tenant_id(), name=body["name"])
            session.add(project)
            session.flush()
            if body.get("fail"):
                session.rollback()
                return JSONResponse({"error": "refused"}, status_code=422)
            session.commit()
            return JSONResponse({"id": project.id}, status_code=201)

    async def rename_all(request: Request) -> Response:
        with factory() as session:
            mine = Project.tenant_id == current_tenant_id()
            session.execute(update(Project).where(mine).values(name="renamed"))
            session.commit()
        return JSONResponse({"ok": True})

    routes = [
        Route("/projects", create, methods=["POST"]),
        Route("/projects/rename", rename_all, methods=["POST"]),
    ]
    return TenantKitMiddleware(Starlette(routes=routes), kit)


@pytest.mark.anyio
async def test_changes_through_the_asgi_adapter(
    kit_and_maker: tuple[Any, Maker], jwt_for: Callable[..., str]
) -> None:
    """Each change in a Starlette request is one entry with the request's actor and id."""
    kit, factory = kit_and_maker
    app = _starlette_app(kit, factory)
    headers = {
        "Authorization": f"Bearer {jwt_for(kit, 'acme', subject='ann')}",
        "X-Request-ID": "req-asgi-1",
        "User-Agent": "tests/1.0",
    }
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (
            await client.post("/projects", json={"name": "a"}, headers=headers)
        ).status_code == 201
        assert (
            await client.post("/projects", json={"name": "b"}, headers=headers)
        ).status_code == 201
        failed = await client.post("/projects", json={"name": "c", "fail": True}, headers=headers)
        assert failed.status_code == 422
        assert (await client.post("/projects/rename", headers=headers)).status_code == 200
    stored = rows(kit.engine, "acme")
    assert [r["action"] for r in stored] == [
        "project.created",
        "project.created",
        "project.updated",
        "project.updated",
    ]
    first = stored[0]
    assert (first["actor"], first["request_id"], first["client_ip"], first["user_agent"]) == (
        "user:ann",
        "req-asgi-1",
        "10.1.2.3",
        "tests/1.0",
    )
    assert audit.verify(kit.engine, "acme").ok


def _wsgi_app(factory: Maker) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"{}")
        with factory() as session:
            if environ["PATH_INFO"] == "/projects":
                session.add(Project(tenant_id=current_tenant_id(), name=body["name"]))
                session.flush()
                if body.get("fail"):
                    session.rollback()
                    start_response("422 Unprocessable Entity", [("Content-Type", "text/plain")])
                    return [b"refused"]
            else:
                mine = Project.tenant_id == current_tenant_id()
                session.execute(update(Project).where(mine).values(name="renamed"))
            session.commit()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def test_changes_through_the_wsgi_adapter(
    kit_and_maker: tuple[Any, Maker], jwt_for: Callable[..., str]
) -> None:
    """Each change in a WSGI request is one entry; a rolled-back request leaves none."""
    kit, factory = kit_and_maker
    app = TenantKitWSGIMiddleware(_wsgi_app(factory), kit)
    headers = {
        "Authorization": f"Bearer {jwt_for(kit, 'globex', subject='bob')}",
        "X-Request-ID": "req-wsgi-1",
    }
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as client:
        assert client.post("/projects", json={"name": "a"}, headers=headers).status_code == 200
        assert (
            client.post("/projects", json={"name": "b", "fail": True}, headers=headers).status_code
            == 422
        )
        assert client.post("/rename", json={}, headers=headers).status_code == 200
    stored = rows(kit.engine, "globex")
    assert [r["action"] for r in stored] == ["project.created", "project.updated"]
    assert {(r["actor"], r["request_id"]) for r in stored} == {("user:bob", "req-wsgi-1")}
    assert rows(kit.engine, "acme") == []


def test_context_outside_requests_is_untouched(engine: Engine, maker: Maker) -> None:
    """Binding and resetting a context around a session leaves nothing bound afterwards."""
    from tenantkit.context import TenantContext, get_context
    from tenantkit.types import Identity

    token = bind(TenantContext(identity=Identity(tenant_id="acme", source="system")))
    try:
        with maker() as session:
            session.add(Project(tenant_id="acme", name="a"))
            session.commit()
    finally:
        reset(token)
    assert get_context() is None
    assert rows(engine)[0]["actor"] == "system"


def test_unscoped_on_another_database_is_not_recorded_here(engine: Engine, tmp_path: Any) -> None:
    """An install records unscoped() on its own engine only; another database is left alone."""
    other = create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    Model.metadata.create_all(other)
    factory, stranger = scoping.tenant_sessionmaker(engine), scoping.tenant_sessionmaker(other)
    audit.install(factory)
    identity = scoping.system_identity("job")
    try:
        with (
            bound_tenant(identity),
            stranger() as session,
            scoping.unscoped(session, reason="elsewhere"),
        ):
            pass
        with bound_tenant(identity), factory() as session, scoping.unscoped(session, reason="here"):
            pass
    finally:
        audit.uninstall(factory)
        other.dispose()
    used = [r for r in rows(engine) if r["action"] == "unscoped.used"]
    assert [u["metadata"]["reason"] for u in used] == ["here"]
