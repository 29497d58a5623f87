"""Starlette example: what the app records (analytics rows, audit entries) names the right request.

The app is driven in-process over raw ASGI, so a test can hold one request's
response while another runs, or drop a response as a vanished client does,
without depending on timing. Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import pytest
from examples.starlette_app import AppConfig, create_app
from examples.starlette_app.db import prepare
from examples.starlette_app.services import Services
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL
from starlette.applications import Starlette
from starlette.types import Message

from tenantkit.audit import AuditLog
from tenantkit.context import bound_tenant
from tenantkit.errors import TenantNotFound

ADMIN_TOKEN = "e2e-admin-records"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app with its tables created, on SQLite or a PostgreSQL database of its own."""
    name = ""
    admin_url: URL | None = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('records') / 'app.db'}"
    else:
        admin_url = request.getfixturevalue("postgres_admin_url")
        name = f"tk_records_{uuid.uuid4().hex[:10]}"
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = admin_url.set(database=name).render_as_string(hide_password=False)
    config = AppConfig.from_env(
        {
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "JWT_SECRET": "e2e-jwt-secret-records-" + "r" * 32,
            "DATABASE_URL": url,
            "TRUST_TENANT_HEADER": "1",
            "OUTBOX_WORKER": "0",
            "ARGON2_MEMORY_KIB": "8192",
            "ARGON2_TIME_COST": "1",
        }
    )
    built = create_app(config)
    s: Services = built.state.services
    prepare(s.kit, app_role=None)
    try:
        yield built
    finally:
        s.kit.engine.dispose()
        if admin_url is not None:
            admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


class Dropped(OSError):
    """The client went away: the server cannot send the response."""


async def call(
    app: Starlette,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: Any = None,
    started: anyio.Event | None = None,
    release: anyio.Event | None = None,
    drop: bool = False,
) -> tuple[int, dict[str, str], Any]:
    """Send one request over ASGI; return its status, headers and decoded body.

    ``started`` is set when the response starts; the response then waits for
    ``release``. ``drop``: sending the response fails, as to a vanished client.
    """
    raw = b"" if body is None else json.dumps(body).encode()
    pairs = {**(headers or {}), "content-type": "application/json"}
    pairs["content-length"] = str(len(raw))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    done = anyio.Event()
    sent_body = False
    start: Message = {}
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            if drop:
                raise Dropped("client disconnected")
            start = message
            if started is not None:
                started.set()
            if release is not None:
                await release.wait()
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                done.set()

    await app(scope, receive, send)
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    data = b"".join(chunks)
    return start["status"], response_headers, json.loads(data) if data else None


def _services(app: Starlette) -> Services:
    services: Services = app.state.services
    return services


async def _new_tenant(app: Starlette, **fields: Any) -> str:
    tenant_id = f"rec-{uuid.uuid4().hex[:10]}"
    status, _, body = await call(
        app, "POST", "/admin/tenants", headers=ADMIN, body={"tenant_id": tenant_id, **fields}
    )
    assert status == 201, body
    return tenant_id


def _report(app: Starlette, tenant_id: str) -> dict[str, Any]:
    with bound_tenant(tenant_id):
        return _services(app).analytics.report(60)


def _actions(app: Starlette, tenant_id: str, action: str) -> Sequence[Any]:
    return AuditLog(_services(app).kit.engine).query(tenant_id, action=action).items


def test_a_shared_request_id_never_moves_a_record_to_another_tenant(app: Starlette) -> None:
    """Same X-Request-ID: tenant A refused while B is admitted, then a dropped and a 401 one.

    Each tenant's analytics and audit trail show its own requests only: A's
    policy refusal is neither lost nor written into B's log, and the refusal
    whose response never left does not claim a later unauthenticated request.
    """

    async def scenario() -> None:
        a = await _new_tenant(app, allowed_models=["allowed-model"])
        b = await _new_tenant(app)
        shared = f"shared-{uuid.uuid4().hex[:8]}"
        refused = {"model": "forbidden-model", "messages": [{"role": "user", "content": "hi"}]}
        started, release = anyio.Event(), anyio.Event()
        results: dict[str, int] = {}

        async def refused_request() -> None:
            status, _, _ = await call(
                app,
                "POST",
                "/api/chat/completions",
                headers={"X-Tenant-ID": a, "X-Request-ID": shared},
                body=refused,
                started=started,
                release=release,
            )
            results["a"] = status

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(refused_request)
            await started.wait()  # A is refused; its response waits
            status, _, _ = await call(
                app, "GET", "/api/users", headers={"X-Tenant-ID": b, "X-Request-ID": shared}
            )
            results["b"] = status
            release.set()
        assert results == {"a": 403, "b": 200}

        leftover = f"left-{uuid.uuid4().hex[:8]}"
        with pytest.raises(Dropped):
            await call(
                app,
                "POST",
                "/api/chat/completions",
                headers={"X-Tenant-ID": a, "X-Request-ID": leftover},
                body=refused,
                drop=True,
            )
        status, _, _ = await call(app, "GET", "/api/users", headers={"X-Request-ID": leftover})
        assert status == 401

        report_a, report_b = _report(app, a), _report(app, b)
        assert (report_a["total_requests"], report_a["by_status"]) == (1, {"403": 1})
        assert report_a["rejections"]["policy"] == 1
        assert (report_b["total_requests"], report_b["by_status"]) == (1, {"200": 1})
        assert report_b["rejected"] == 0
        assert len(_actions(app, a, "policy.denied")) == 1
        assert len(_actions(app, b, "policy.denied")) == 0

    anyio.run(scenario)


def test_a_long_custom_method_is_still_recorded(app: Starlette) -> None:
    """A method longer than the column is recorded truncated to it, not dropped on PostgreSQL."""

    async def scenario() -> None:
        tenant = await _new_tenant(app)
        status, _, _ = await call(
            app, "BASELINE-CONTROL", "/api/users", headers={"X-Tenant-ID": tenant}
        )
        assert status == 405
        report = _report(app, tenant)
        assert report["total_requests"] == 1
        assert report["by_route"] == {"BASELINE-C /api/users": 1}

    anyio.run(scenario)


@pytest.mark.parametrize("given", ["x" * 300, "has spaces in it", "ok-id, ok-id"])
def test_admin_audit_entries_carry_the_request_id_the_response_sends(
    app: Starlette, given: str
) -> None:
    """An insane X-Request-ID is replaced; the audit entry records the replacement, not it."""

    async def scenario() -> None:
        tenant_id = f"rec-{uuid.uuid4().hex[:10]}"
        status, headers, body = await call(
            app,
            "POST",
            "/admin/tenants",
            headers={**ADMIN, "X-Request-ID": given},
            body={"tenant_id": tenant_id},
        )
        assert status == 201, body
        sent = headers["x-request-id"]
        assert sent != given
        (entry,) = _actions(app, tenant_id, "tenant.created")
        assert entry.request_id == sent

    anyio.run(scenario)


def test_revoking_a_revoked_key_again_changes_nothing(app: Starlette) -> None:
    """Three DELETEs of one key: each 204, one api_key.revoked entry; an unknown key is 404."""

    async def scenario() -> None:
        tenant_id = await _new_tenant(app)
        path = f"/admin/tenants/{tenant_id}/api-keys"
        status, _, issued = await call(app, "POST", path, headers=ADMIN, body={"name": "k"})
        assert status == 201, issued
        key_id = issued["key_id"]
        for _ in range(3):
            status, _, body = await call(app, "DELETE", f"{path}/{key_id}", headers=ADMIN)
            assert status == 204, body
        revoked = _actions(app, tenant_id, "api_key.revoked")
        assert [entry.resource_id for entry in revoked] == [key_id]
        for unknown in ("key_" + "x" * 22, "not-a-key-id"):
            status, _, _ = await call(app, "DELETE", f"{path}/{unknown}", headers=ADMIN)
            assert status == 404

    anyio.run(scenario)


def test_onboarding_audits_the_new_tenant_in_its_own_transaction(app: Starlette) -> None:
    """A signup writes tenant.created by the signing-up user; if that write fails, nothing stays."""
    s = _services(app)
    engine = s.kit.engine

    def refuse(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO TENANTKIT_AUDIT_LOG") and (
            "tenant.created" in repr(parameters)
        ):
            raise engine.dialect.loaded_dbapi.OperationalError("injected: audit write failed")

    async def onboard(tenant_id: str) -> tuple[int, dict[str, str], Any]:
        body = {
            "tenant_name": "Signup Audit",
            "tenant_id": tenant_id,
            "email": "owner@signup.example",
            "password": "signup-password",
        }
        return await call(
            app, "POST", "/onboarding", headers={"X-Request-ID": "signup-1"}, body=body
        )

    async def scenario() -> None:
        tenant_id = f"rec-{uuid.uuid4().hex[:10]}"
        event.listen(engine, "before_cursor_execute", refuse)
        try:
            status, _, body = await onboard(tenant_id)
        finally:
            event.remove(engine, "before_cursor_execute", refuse)
        assert status == 503, body
        s.kit.tenants.invalidate(tenant_id)
        with pytest.raises(TenantNotFound):
            s.kit.tenants.get(tenant_id)

        status, headers, body = await onboard(tenant_id)
        assert status == 201, body
        (entry,) = _actions(app, tenant_id, "tenant.created")
        assert (entry.actor, entry.resource_type, entry.resource_id) == (
            "signup:owner@signup.example",
            "tenant",
            tenant_id,
        )
        assert entry.request_id == headers["x-request-id"] == "signup-1"

    anyio.run(scenario)


@pytest.mark.parametrize("blank", ["   ", "\t\n", "\u3000"])
def test_blank_required_text_is_a_422_naming_the_field(app: Starlette, blank: str) -> None:
    """Whitespace-only titles and names are refused like empty ones, naming the field."""

    async def scenario() -> None:
        tenant_id = f"rec-{uuid.uuid4().hex[:10]}"
        signup = {"tenant_name": "Blank", "email": "o@blank.example", "password": "blank-pass"}
        status, _, body = await call(
            app, "POST", "/onboarding", body={**signup, "tenant_id": tenant_id}
        )
        assert status == 201, body
        user = {"Authorization": f"Bearer {body['access_token']}"}
        status, _, task = await call(app, "POST", "/tasks", headers=user, body={"title": "ok"})
        assert status == 201, task
        tenant = {"X-Tenant-ID": tenant_id}
        member = {"email": "m@blank.example", "password": "member-pass", "role": "MEMBER"}
        cases = [
            ("POST", "/tasks", user, {"title": blank}, "title"),
            ("PUT", f"/tasks/{task['task_id']}", user, {"title": blank}, "title"),
            ("POST", "/api/users", tenant, {"email": "u@blank.example", "name": blank}, "name"),
            ("POST", "/api/members", user, {**member, "name": blank}, "name"),
            (
                "POST",
                "/onboarding",
                {},
                {**signup, "tenant_name": blank, "tenant_id": "b-1"},
                "tenant_name",
            ),
            ("POST", "/onboarding", {}, {**signup, "tenant_id": "b-2", "name": blank}, "name"),
            ("POST", "/admin/tenants", ADMIN, {"tenant_id": "b-3", "name": blank}, "name"),
            ("POST", f"/admin/tenants/{tenant_id}/api-keys", ADMIN, {"name": blank}, "name"),
            ("PUT", f"/admin/tenants/{tenant_id}", ADMIN, {"name": blank}, "name"),
        ]
        for method, path, headers, payload, field in cases:
            status, _, problem = await call(app, method, path, headers=headers, body=payload)
            assert (status, problem.get("fields")) == (422, [field]), (method, path, problem)

    anyio.run(scenario)
