"""Text PostgreSQL cannot store (NUL, lone surrogates) is a 4xx there, never a 5xx.

SQLite stores a NUL; PostgreSQL refuses it with an error, so these inputs
only show a defect when the app runs on PostgreSQL.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _server import Server, serve_module
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine

ADMIN_TOKEN = "e2e-admin-review-pg"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def database(postgres_admin_url: URL) -> Iterator[URL]:
    """A PostgreSQL database of the module's own (dropped afterwards)."""
    name = f"tk_review_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_admin_url.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def server(database: URL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app on the module's PostgreSQL database."""
    env = {
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "JWT_SECRET": "e2e-jwt-secret-review-pg-" + "p" * 32,
        "DATABASE_URL": database.render_as_string(hide_password=False),
        "TRUST_TENANT_HEADER": "1",
        "ARGON2_MEMORY_KIB": "8192",
        "ARGON2_TIME_COST": "1",
    }
    workdir: Path = tmp_path_factory.mktemp("starlette-review-pg")
    with serve_module("examples.starlette_app", env=env, cwd=workdir) as running:
        yield running


def test_unstorable_text_is_a_client_error_on_postgres(server: Server) -> None:
    """NUL or a lone surrogate in a body, a path id or a query filter is 404/422, never 5xx."""
    with httpx.Client(base_url=server.url, timeout=15) as client:
        signup = client.post(
            "/onboarding",
            json={"tenant_name": "Pg Review", "email": "a@pg.review", "password": "pg-review"},
        ).json()
        tenant = signup["tenant_id"]
        user = {"Authorization": f"Bearer {signup['access_token']}"}
        header = {"X-Tenant-ID": tenant, "Content-Type": "application/json"}
        json_ = {"Content-Type": "application/json"}
        posts = [
            ("/api/users", header, b'{"email": "x@y.co", "name": "a\\u0000b"}'),
            ("/api/users", header, b'{"email": "x@y.co", "name": "\\ud800"}'),
            (
                "/api/members",
                header,
                b'{"email": "x@y.co", "name": "x\\u0000", "password": '
                b'"longenough", "role": "MEMBER"}',
            ),
            ("/admin/tenants", {**ADMIN, **json_}, b'{"tenant_id": "nul-t", "name": "a\\u0000"}'),
            (f"/admin/tenants/{tenant}/api-keys", {**ADMIN, **json_}, b'{"name": "a\\u0000"}'),
            (
                "/onboarding",
                json_,
                b'{"tenant_name": "N\\u0000", "email": "a@b.co", "password": "longenough"}',
            ),
            (
                "/auth/token",
                json_,
                b'{"tenant_id": "' + tenant.encode() + b'", '
                b'"email": "a\\u0000@b.co", "password": "x"}',
            ),
            ("/tasks", {**user, **json_}, b'{"title": "t\\u0000"}'),
        ]
        for path, headers, body in posts:
            response = client.post(path, headers=headers, content=body)
            assert response.status_code == 422, (path, response.text)
        gets = [
            ("/api/users/a%00b", header, 404),
            ("/tasks/a%00b", user, 404),
            ("/tasks/a%00b/events", user, 404),
            ("/api/audit?actor=a%00b", user, 422),
            ("/api/audit?action=a%00b", user, 422),
            ("/tasks?assigned_to=a%00b", user, 422),
        ]
        for path, headers, status in gets:
            response = client.get(path, headers=headers)
            assert response.status_code == status, (path, response.text)
        for path in ("/api/users/a%00b", "/tasks/a%00b"):
            assert client.delete(path, headers={**header, **user}).status_code < 500


def test_an_email_that_grows_when_lower_cased_is_a_422_on_postgres(server: Server) -> None:
    """A 254-character email longer once lower-cased ('İ' → 'i̇') is a 422, not a 500."""
    domain = f"{'a' * 63}.{'b' * 63}.{'c' * 61}"
    email = f"{'İ' * 64}@{domain}"
    assert len(email) == 254 < len(email.lower())
    with httpx.Client(base_url=server.url, timeout=15) as client:
        tenant = f"grow-{uuid.uuid4().hex[:8]}"
        assert client.post("/admin/tenants", headers=ADMIN, json={"tenant_id": tenant}).is_success
        header = {"X-Tenant-ID": tenant}
        member = {"email": email, "name": "x", "password": "longenough", "role": "MEMBER"}
        for path, headers, body in (
            ("/api/users", header, {"email": email, "name": "x"}),
            ("/api/members", header, member),
            ("/onboarding", {}, {"tenant_name": "Grow", "email": email, "password": "longenough"}),
        ):
            response = client.post(path, headers=headers, json=body)
            assert response.status_code == 422, (path, response.text)
            assert response.json()["fields"] == ["email"]
        assert client.get("/api/users", headers=header).json()["items"] == []
        assert client.get("/admin/tenants/grow", headers=ADMIN).status_code == 404


def test_a_task_update_waits_for_a_concurrent_one_and_records_what_it_changed(
    server: Server, database: URL
) -> None:
    """A PUT racing another writer reads the row after it: no event for a change already made."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        signup = client.post(
            "/onboarding",
            json={
                "tenant_name": f"Race {uuid.uuid4().hex[:8]}",
                "email": "a@race.co",
                "password": "race-pass",
            },
        ).json()
        user = {"Authorization": f"Bearer {signup['access_token']}"}
        task_id = client.post("/tasks", headers=user, json={"title": "race"}).json()["task_id"]
        engine = create_engine(database)
        answers: list[httpx.Response] = []
        try:
            with engine.connect() as writer:
                # Another writer has set the task DONE and not committed yet.
                writer.execute(
                    text("UPDATE tasks SET status = 'DONE' WHERE id = :id"), {"id": task_id}
                )
                put = threading.Thread(
                    target=lambda: answers.append(
                        client.put(f"/tasks/{task_id}", headers=user, json={"status": "DONE"})
                    )
                )
                put.start()
                _wait_for_a_lock_wait(engine, database.database or "")
                writer.commit()
                put.join(30)
        finally:
            engine.dispose()
        assert answers and answers[0].status_code == 200, answers
        assert answers[0].json()["status"] == "DONE"
        events = client.get(f"/tasks/{task_id}/events", headers=user).json()["items"]
    assert [e["type"] for e in events] == ["TaskCreated"]  # the PUT changed nothing


def _wait_for_a_lock_wait(engine: Engine, name: str) -> None:
    """Return once a session of database ``name`` waits for a row lock (the racing PUT)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = :name AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + 30
    with engine.connect() as conn:
        while conn.execute(query, {"name": name}).scalar_one() == 0:
            assert time.monotonic() < deadline, "the PUT never reached the locked row"
            conn.rollback()  # a fresh snapshot of pg_stat_activity
            time.sleep(0.01)
