"""Serve the Flask example in this process with waitress, on a clock the test moves.

``tests/e2e/_server.py`` runs an app as ``python -m ...`` in a subprocess
(used here for the start-up test and the seed session). Most end-to-end
tests also need time they control, to expire invitations and sessions and to
refill rate limits without sleeping; they serve ``create_app(..., clock=...)``
from a thread with the same production server, still over real HTTP.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from examples.flask_app import AppConfig, Clock, create_app
from flask import Flask
from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from waitress import wasyncore
from waitress.server import create_server

from tenantkit.rls import drop_app_role

START = 1_800_000_000.0  # 2027-01-15T08:00:00Z: a fixed, ordinary moment
PASSWORD = "correct horse battery"


class FakeClock(Clock):
    """A clock that stands still until the test moves it."""

    def __init__(self, start: float = START) -> None:
        self._now = start
        self._lock = threading.Lock()

    def time(self) -> float:
        """Return the current fake time."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        with self._lock:
            self._now += seconds


@dataclass
class Served:
    """A running app: its URL, its Flask object and its clock."""

    url: str
    app: Flask
    clock: FakeClock
    config: AppConfig
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = None, **headers: str) -> httpx.Client:
        """Return an HTTP client on the app, sending ``token`` as a bearer token."""
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30.0)
        self.clients.append(client)
        return client


def make_config(tmp_dir: Path, **overrides: Any) -> AppConfig:
    """Return a config on a fresh SQLite file, with fast password hashing."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_dir / 'flask_app.db'}",
        "fast_password_hashing": True,
    }
    values.update(overrides)
    return AppConfig(**values).with_secrets()


@contextlib.contextmanager
def serve(config: AppConfig, clock: FakeClock | None = None) -> Iterator[Served]:
    """Serve ``create_app(config)`` with waitress on a free loopback port."""
    clock = clock or FakeClock()
    app = create_app(config, clock=clock)
    server: Any = create_server(app, host="127.0.0.1", port=0, threads=4)
    stop = threading.Event()

    def run() -> None:
        # server.run() loops until interrupted; a short loop lets this thread, which
        # owns the sockets, notice the stop and close them itself.
        while not stop.is_set():
            wasyncore.loop(timeout=0.05, map=server._map, count=1)
        server.task_dispatcher.shutdown(timeout=10)
        for channel in list(server._map.values()):  # the server, its trigger, open connections
            channel.close()

    thread = threading.Thread(target=run, name="waitress-e2e", daemon=True)
    thread.start()
    served = Served(f"http://127.0.0.1:{server.effective_port}", app, clock, config)
    try:
        yield served
    finally:
        for client in served.clients:
            client.close()
        stop.set()
        thread.join(20)
        app.extensions["flask_app"].close()


@contextlib.contextmanager
def serve_on_postgres(postgres_url: URL, tmp_dir: Path) -> Iterator[Served]:
    """Serve the app on PostgreSQL with row-level security, as a role of its own.

    The role is dropped afterwards (its grants live on the shared tables,
    which stay for other tests).
    """
    role = f"tk_flask_{uuid.uuid4().hex[:10]}"
    config = make_config(
        tmp_dir,
        database_url=postgres_url.render_as_string(hide_password=False),
        database_app_role=role,
    )
    try:
        with serve(config, FakeClock()) as running:
            yield running
    finally:
        owner = create_engine(postgres_url)
        with owner.begin() as conn:
            drop_app_role(conn, role)
        owner.dispose()


def unique(prefix: str) -> str:
    """Return a slug no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Org:
    """An onboarded organization and its owner's credentials."""

    id: str
    owner_id: str
    owner_email: str
    token: str


def onboard(served: Served, *, plan: str = "starter", prefix: str = "org") -> Org:
    """Create an organization through the public route; return it with the owner's token."""
    slug = unique(prefix)
    email = f"owner@{slug}.example.com"
    response = served.client().post(
        "/organizations",
        json={
            "name": slug.title(),
            "slug": slug,
            "owner_email": email,
            "owner_password": PASSWORD,
            "plan": plan,
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return Org(slug, body["owner"]["id"], email, body["token"]["access_token"])


def add_member(served: Served, org: Org, role: str = "member", email: str | None = None) -> str:
    """Invite and accept a new user into ``org``; return their token."""
    email = email or f"{unique(role)}@{org.id}.example.com"
    owner = served.client(org.token)
    invited = owner.post(
        f"/organizations/{org.id}/invitations", json={"email": email, "role": role}
    )
    assert invited.status_code == 201, invited.text
    accepted = served.client().post(
        f"/invitations/{invited.json()['token']}/accept",
        json={"name": email.split("@")[0], "password": PASSWORD},
    )
    assert accepted.status_code == 200, accepted.text
    token: str = accepted.json()["token"]["access_token"]
    return token
