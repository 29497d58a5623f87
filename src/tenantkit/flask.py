"""The Flask extension: mounts the WSGI middleware and puts the tenant on ``g``.

::

    tenantkit = FlaskTenantKit(app)          # or FlaskTenantKit() + init_app(app)

Settings come from ``TENANTKIT_*`` keys in ``app.config``.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from weakref import WeakKeyDictionary

from flask import Flask, current_app, g, request

from .kit import TenantKit
from .settings import ENV_PREFIX, Settings
from .wsgi import ENVIRON_IDENTITY, ENVIRON_REQUEST_ID, ENVIRON_TENANT, TenantKitWSGIMiddleware

EXTENSION_KEY = "tenantkit"


class FlaskTenantKit:
    """Register tenantkit on one or more Flask apps (Flask-SQLAlchemy's extension shape).

    ``kit`` shares one ready ``TenantKit``; otherwise each app gets its own,
    built from its config. ``kit_options`` are passed to ``TenantKit``.
    """

    def __init__(
        self, app: Flask | None = None, *, kit: TenantKit | None = None, **kit_options: Any
    ) -> None:
        self._kit = kit
        self._kit_options = kit_options
        self._kits: WeakKeyDictionary[Flask, TenantKit] = WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Mount the middleware on ``app`` and register the request hook."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "A 'FlaskTenantKit' instance has already been registered on this Flask app."
                " Import and use that instance instead."
            )
        for f in dataclasses.fields(Settings):
            if not dataclasses.is_dataclass(f.type) and f.default is not dataclasses.MISSING:
                app.config.setdefault(ENV_PREFIX + f.name.upper(), f.default)
        kit = self._kit or TenantKit(Settings.from_mapping(app.config), **self._kit_options)
        self._kits[app] = kit
        app.extensions[EXTENSION_KEY] = self
        app.wsgi_app = TenantKitWSGIMiddleware(app.wsgi_app, kit)  # type: ignore[method-assign]
        app.before_request(_expose_on_g)

    def kit_for(self, app: Flask | None = None) -> TenantKit:
        """Return the ``TenantKit`` of ``app`` (default: the current app)."""
        target: Flask = app or current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return self._kits[target]
        except KeyError:
            raise RuntimeError(
                "tenantkit is not registered on this Flask app; call init_app(app) first"
            ) from None

    @property
    def kit(self) -> TenantKit:
        """The current app's ``TenantKit``."""
        return self.kit_for()


def _expose_on_g() -> None:
    g.tenant = request.environ.get(ENVIRON_TENANT)
    g.identity = request.environ.get(ENVIRON_IDENTITY)
    g.request_id = request.environ.get(ENVIRON_REQUEST_ID)
