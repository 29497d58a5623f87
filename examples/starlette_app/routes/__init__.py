"""The app's routes, one module per area; ``ROUTES`` is the whole router table."""

from __future__ import annotations

from starlette.routing import BaseRoute

from . import accounts, admin, analytics, audit, chat, meta, tasks, users

ROUTES: list[BaseRoute] = [
    *meta.routes,
    *admin.routes,
    *accounts.routes,
    *users.routes,
    *chat.routes,
    *analytics.routes,
    *tasks.routes,
    *audit.routes,
]
