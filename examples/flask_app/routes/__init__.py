"""The HTTP routes, one small blueprint per resource."""

from __future__ import annotations

from flask import Flask

from . import (
    admin,
    api_keys,
    audit,
    auth,
    billing,
    invitations,
    meta,
    organizations,
    projects,
    resources,
    users,
)

BLUEPRINTS = (
    meta.bp,
    organizations.bp,
    auth.bp,
    invitations.bp,
    users.bp,
    projects.bp,
    resources.bp,
    api_keys.bp,
    audit.bp,
    billing.bp,
    admin.bp,
)


def register_routes(app: Flask) -> None:
    """Register every blueprint on ``app``."""
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
