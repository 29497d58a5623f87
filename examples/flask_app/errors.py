"""Every error leaves as an RFC 9457 problem document; nothing leaks a stack trace.

tenantkit's ``HTTPError`` family renders itself; werkzeug's errors (404 for
an unknown route, 405, 413) and tenantkit's non-HTTP errors are mapped here.
A rejection by the tenantkit pipeline goes through ``on_reject``, where a
credential naming another organization than the path becomes a 404: an
organization you are not a member of does not exist for you.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, request
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import HTTPException

from tenantkit._request import problem_decision
from tenantkit.errors import (
    PROBLEM_BASE_URI,
    PROBLEM_CONTENT_TYPE,
    Conflict,
    CrossTenantError,
    HTTPError,
    NoTenantError,
    NotFound,
    ServiceUnavailable,
    StorageError,
    TenantMismatch,
    UnprocessableEntity,
    ValidationError,
)
from tenantkit.types import Decision, RequestInfo

log = logging.getLogger("examples.flask_app")


class Gone(HTTPError):
    """410: the thing existed but is no longer usable (an expired invitation)."""

    status, title, slug = 410, "Gone", "gone"


def on_reject(info: RequestInfo, exc: HTTPError) -> Decision:
    """Render a pipeline rejection; another organization's credential gets a plain 404."""
    if isinstance(exc, TenantMismatch):
        exc = NotFound("organization not found")
    return problem_decision(exc, instance=info.path)


def problem_response(exc: HTTPError) -> Response:
    """Return the problem document response of ``exc``."""
    body = json.dumps(exc.to_problem(request.path), default=str)
    response = Response(body, status=exc.status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in exc.headers.items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Map every exception a view can raise to a problem document."""

    @app.errorhandler(HTTPError)
    def _http_error(exc: HTTPError) -> Response:
        return problem_response(exc)

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Response:
        extra: dict[str, Any] = {"field": exc.field} if exc.field else {}
        return problem_response(UnprocessableEntity(str(exc), **extra))

    @app.errorhandler(IntegrityError)
    def _integrity(exc: IntegrityError) -> Response:
        # Checks run before writes; only a concurrent request can get here (a lost race).
        log.info("write lost a race: %s", exc.orig)
        return problem_response(
            Conflict("a concurrent request changed the same data; retry", reason="race")
        )

    @app.errorhandler(StaleDataError)
    def _stale(exc: StaleDataError) -> Response:
        return problem_response(
            Conflict("the resource changed since you read it; reload and retry")
        )

    @app.errorhandler(OperationalError)
    @app.errorhandler(StorageError)
    def _storage(exc: Exception) -> Response:
        log.error("a backing store failed: %s", exc, exc_info=exc)
        return problem_response(
            ServiceUnavailable("a backing service is unavailable", headers={"Retry-After": "1"})
        )

    @app.errorhandler(HTTPException)
    def _werkzeug(exc: HTTPException) -> Response:
        status = exc.code or 500
        body = {
            "type": PROBLEM_BASE_URI + (exc.name or "error").lower().replace(" ", "-"),
            "title": exc.name,
            "status": status,
            "detail": exc.description,
            "instance": request.path,
        }
        response = Response(json.dumps(body), status=status, content_type=PROBLEM_CONTENT_TYPE)
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if isinstance(exc, NoTenantError | CrossTenantError):
            log.error("tenant isolation refused an operation", exc_info=exc)
        else:
            log.exception("unhandled error on %s %s", request.method, request.path)
        body = {
            "type": PROBLEM_BASE_URI + "internal",
            "title": "Internal Server Error",
            "status": 500,
            "detail": "the server failed to handle this request; it has been logged",
            "instance": request.path,
        }
        return Response(json.dumps(body), status=500, content_type=PROBLEM_CONTENT_TYPE)
