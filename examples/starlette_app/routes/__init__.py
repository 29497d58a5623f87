"""The app's routes, one module per area; ``ROUTES`` is the whole router table."""

from __future__ import annotations

from starlette.routing import BaseRoute

from . import accounts, admin, admin_keys, analytics, audit, chat, meta, tasks, users

ROUTES: list[BaseRoute] = [
    *meta.routes,
    *admin.routes,
    *admin_keys.routes,
    *accounts.routes,
    *users.routes,
    *chat.routes,
    *analytics.routes,
    *tasks.routes,
    *audit.routes,
]
