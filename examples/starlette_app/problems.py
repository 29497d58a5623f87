"""Every error leaves the app as an RFC 9457 problem document, never a stack trace."""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from tenantkit.errors import (
    PROBLEM_CONTENT_TYPE,
    HTTPError,
    NotFound,
    ServiceUnavailable,
    StorageError,
    UnprocessableEntity,
    ValidationError,
)

log = logging.getLogger("starlette_app")

_STARLETTE_TITLES = {404: "Not Found", 405: "Method Not Allowed"}


class ProblemResponse(Response):
    """A ``application/problem+json`` response."""

    media_type = PROBLEM_CONTENT_TYPE

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), default=str).encode()


def problem(exc: HTTPError, request: Request) -> ProblemResponse:
    """Render a tenantkit ``HTTPError`` for ``request``."""
    return ProblemResponse(
        exc.to_problem(instance=request.url.path), status_code=exc.status, headers=exc.headers
    )


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Render errors raised by handlers and by tenantkit stages."""
    assert isinstance(exc, HTTPError)
    return problem(exc, request)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    """A library ``ValidationError`` (bad field) is a 422 naming the field."""
    assert isinstance(exc, ValidationError)
    field = exc.field or "body"
    error = UnprocessableEntity(
        str(exc), errors=[{"field": field, "message": str(exc)}], fields=[field]
    )
    return problem(error, request)


async def on_storage_error(request: Request, exc: Exception) -> Response:
    """A failing database or Redis is a 503, with the cause in the log only."""
    log.error("storage failure on %s %s: %r", request.method, request.url.path, exc)
    unavailable = ServiceUnavailable(
        "a backing service is unavailable; retry shortly", headers={"Retry-After": "1"}
    )
    return problem(unavailable, request)


async def on_starlette_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (wrong method) as problem documents."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return problem(NotFound(f"no route for {request.url.path}"), request)
    error = HTTPError(exc.detail, headers=exc.headers)
    body = error.to_problem(instance=request.url.path)
    title = _STARLETTE_TITLES.get(exc.status_code, "HTTP Error")
    slug = title.lower().replace(" ", "-")
    body.update(type=f"https://tenantkit.dev/problems/{slug}", title=title, status=exc.status_code)
    return ProblemResponse(body, status_code=exc.status_code, headers=exc.headers)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """A defect: log it with its traceback, answer 500 without one."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    error = HTTPError("an unexpected error occurred; it has been logged")
    return problem(error, request)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    HTTPError: on_http_error,
    ValidationError: on_validation_error,
    StorageError: on_storage_error,
    OperationalError: on_storage_error,
    InterfaceError: on_storage_error,
    PoolTimeout: on_storage_error,
    HTTPException: on_starlette_error,
    Exception: on_unexpected,
}
