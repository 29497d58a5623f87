"""Service description, health and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from ..api import endpoint
from ..context import platform
from ..database import check_database
from ..openapi import SERVICE, VERSION, build_openapi

bp = Blueprint("meta", __name__)


@bp.get("/")
@endpoint("Describe the service", auth="public", tag="meta", response="Service")
def index() -> ResponseReturnValue:
    return jsonify(
        {
            "service": SERVICE,
            "version": VERSION,
            "links": {
                "openapi": "/openapi.json",
                "health": "/health",
                "onboarding": "/organizations",
                "sign_in": "/auth/token",
            },
        }
    )


@bp.get("/health")
@endpoint(
    "Check the database and the quota storage",
    auth="public",
    tag="meta",
    responses=(503,),
    response="Health",
)
def health() -> ResponseReturnValue:
    p = platform()
    checks = {
        "database": "ok" if check_database(p.engine) else "error",
        "quota_storage": "ok" if p.kit.quotas.health() else "error",
    }
    healthy = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if healthy else "error", "checks": checks}
    return jsonify(body), 200 if healthy else 503


@bp.get("/openapi.json")
@endpoint("This OpenAPI description", auth="public", tag="meta", response="OpenAPI")
def openapi() -> ResponseReturnValue:
    return jsonify(build_openapi(current_app))
