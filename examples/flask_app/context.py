"""The app's services (one ``Platform`` per Flask app) and the per-request database session."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from flask import current_app, g
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from tenantkit.kit import TenantKit
from tenantkit.plans import Plans
from tenantkit.usage import UsageRecorder

from .config import AppConfig
from .security import Passwords

if TYPE_CHECKING:
    from tenantkit.webhooks import StripeWebhooks

    from .billing_service import BillingService

EXTENSION_KEY = "flask_app"


class Clock:
    """Wall-clock time; tests swap in one they can move."""

    def time(self) -> float:
        """Return seconds since the epoch."""
        return time.time()

    def now(self) -> datetime:
        """Return the current time, timezone-aware UTC."""
        return datetime.fromtimestamp(self.time(), UTC)


@dataclass
class Platform:
    """Everything the views share: config, clock, database, tenantkit and its services."""

    config: AppConfig
    clock: Clock
    engine: Engine
    jobs_engine: Engine
    sessions: sessionmaker[Session]
    global_sessions: sessionmaker[Session]
    kit: TenantKit
    passwords: Passwords
    plans: Plans
    usage: UsageRecorder
    webhooks: StripeWebhooks
    billing: BillingService | None = None
    closers: list[Callable[[], object]] = field(default_factory=list)

    def close(self) -> None:
        """Release what the app holds: process-wide hooks, counters, connection pools."""
        while self.closers:
            self.closers.pop()()


def platform() -> Platform:
    """Return the current app's ``Platform``."""
    found: Platform = current_app.extensions[EXTENSION_KEY]
    return found


def db() -> Session:
    """Return this request's tenant-scoped session (opened on first use, closed at teardown)."""
    session: Session | None = g.get("_db_session")
    if session is None:
        session = platform().sessions()
        g._db_session = session
    return session


def close_db(_exc: BaseException | None = None) -> None:
    """Roll back whatever the view did not commit and close the session."""
    session: Session | None = g.pop("_db_session", None)
    if session is not None:
        session.close()


def now() -> datetime:
    """Return the app clock's current time."""
    return platform().clock.now()
