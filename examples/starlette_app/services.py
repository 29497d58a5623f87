"""What every handler reaches through ``request.app.state.services``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from starlette.requests import Request
from starlette.responses import JSONResponse

from tenantkit.kit import TenantKit

from .auth import Passwords
from .config import AppConfig
from .db import Database
from .invalidation import Invalidations

if TYPE_CHECKING:
    from .analytics import Analytics
    from .outbox.worker import OutboxWorker


@dataclass
class Services:
    """The app's long-lived objects, built once at start-up."""

    config: AppConfig
    kit: TenantKit
    db: Database
    outbox: OutboxWorker
    analytics: Analytics
    passwords: Passwords
    invalidations: Invalidations


def services(request: Request) -> Services:
    """Return the app's services from a request."""
    return cast(Services, request.app.state.services)


def json(body: Any, status: int = 200, *, location: str | None = None) -> JSONResponse:
    """Return a JSON response, with ``Location`` for a created resource."""
    headers = {"Location": location} if location else None
    return JSONResponse(body, status_code=status, headers=headers)
