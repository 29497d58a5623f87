"""The Flask extension: registration rules, config, the tenant on g, shared pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, g, jsonify

from tenantkit import context
from tenantkit.flask import FlaskTenantKit
from tenantkit.settings import JWTSettings


def make_app(kit: Any) -> tuple[Flask, FlaskTenantKit]:
    app = Flask(__name__)
    ext = FlaskTenantKit(app, kit=kit)

    @app.get("/me")
    def me() -> Any:
        return jsonify(
            tenant=g.tenant.id,
            identity=g.identity.tenant_id,
            context=context.current_tenant_id(),
            request_id=g.request_id,
        )

    @app.get("/health")
    def health() -> Any:
        return jsonify(status="ok")

    return app, ext


def test_tenant_on_g_and_context(make_kit: Callable[..., Any], jwt_for: Callable[..., str]) -> None:
    """A request admitted by the extension has g.tenant, g.identity and the context set."""
    kit = make_kit()
    app, _ = make_app(kit)
    r = app.test_client().get(
        "/me", headers={"Authorization": f"Bearer {jwt_for(kit, 'globex')}", "X-Request-ID": "r1"}
    )
    assert r.status_code == 200
    assert r.json == {
        "tenant": "globex",
        "identity": "globex",
        "context": "globex",
        "request_id": "r1",
    }
    assert r.headers["X-Request-ID"] == "r1"


def test_rejections_and_exclusions(
    make_kit: Callable[..., Any], jwt_for: Callable[..., str]
) -> None:
    """Missing credentials and a header mismatch are problems; /health skips the pipeline."""
    kit = make_kit()
    app, _ = make_app(kit)
    client = app.test_client()
    missing = client.get("/me")
    assert missing.status_code == 401 and missing.content_type == "application/problem+json"
    mismatch = client.get(
        "/me", headers={"Authorization": f"Bearer {jwt_for(kit, 'acme')}", "X-Tenant-ID": "globex"}
    )
    assert mismatch.status_code == 403
    assert client.get("/health").status_code == 200


def test_second_registration_refused(make_kit: Callable[..., Any]) -> None:
    """init_app refuses a second registration with an instructive error."""
    app, ext = make_app(make_kit())
    assert app.extensions["tenantkit"] is ext
    with pytest.raises(RuntimeError, match="already been registered"):
        FlaskTenantKit(app)


def test_settings_from_app_config(tmp_path: Any) -> None:
    """Without a kit, TENANTKIT_* keys in app.config build the settings."""
    app = Flask(__name__)
    app.config["TENANTKIT_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cfg.db'}"
    app.config["TENANTKIT_RESOLVERS"] = "jwt"
    app.config["TENANTKIT_JWT_SECRET"] = "from-config-secret-long-enough-for-hs256"
    app.config["TENANTKIT_MAX_BODY_BYTES"] = 4096
    ext = FlaskTenantKit()
    ext.init_app(app)
    with app.app_context():
        kit = ext.kit
    assert kit.settings.resolvers == ("jwt",)
    assert kit.settings.jwt == JWTSettings(secret="from-config-secret-long-enough-for-hs256")
    assert kit.settings.max_body_bytes == 4096
    assert app.config["TENANTKIT_EXCLUDE_PATHS"] == kit.settings.exclude_paths


def test_one_extension_many_apps(make_kit: Callable[..., Any], jwt_for: Callable[..., str]) -> None:
    """One extension object serves several apps, each with its own kit and no self.app."""
    kit_a, kit_b = make_kit(), make_kit(tenants={"initech": {}})
    ext = FlaskTenantKit()
    app_a, app_b = Flask("a"), Flask("b")
    ext_a = FlaskTenantKit(kit=kit_a)
    ext_a.init_app(app_a)
    ext_b = FlaskTenantKit(kit=kit_b)
    ext_b.init_app(app_b)
    assert not hasattr(ext, "app")
    assert ext_a.kit_for(app_a) is kit_a and ext_b.kit_for(app_b) is kit_b
    with pytest.raises(RuntimeError, match="not registered"):
        ext_a.kit_for(app_b)
