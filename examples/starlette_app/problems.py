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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantkit.context import get_context
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


def complete(body: dict[str, Any]) -> dict[str, Any]:
    """Give every 403 a ``reason`` and every 422 its ``errors``, whoever raised it.

    The app's own errors carry both; a few of tenantkit's name the cause only
    in ``type`` (tenant mismatch) or the field only in ``field`` (a bad cursor).
    """
    status = body.get("status")
    if status == 403 and "reason" not in body:
        body["reason"] = str(body.get("type", "forbidden")).rsplit("/", 1)[-1].replace("-", "_")
    if status == 422 and "errors" not in body:
        field = str(body.get("field") or "body")
        body["errors"] = [{"field": field, "message": str(body.get("detail", "is invalid"))}]
    if status == 422 and "fields" not in body:
        named = (e.get("field") for e in body["errors"] if isinstance(e, dict))
        body["fields"] = list(dict.fromkeys(str(f) for f in named if f))
    return body


def problem(exc: HTTPError, request: Request) -> ProblemResponse:
    """Render a tenantkit ``HTTPError`` for ``request``."""
    return ProblemResponse(
        complete(exc.to_problem(instance=request.url.path)),
        status_code=exc.status,
        headers=exc.headers,
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


class CatchUnexpected:
    """Render an unhandled exception as the 500 problem *inside* the tenant pipeline.

    Starlette answers uncaught exceptions from its outermost layer, past
    every middleware; caught here, the 500 gets ``X-Request-ID`` and the
    rate-limit headers like any other response. Nothing ran to completion,
    so the request is charged no tokens beyond those it reported.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if started:  # too late for another answer; Starlette logs it
                raise
            ctx = get_context()
            if ctx is not None and ctx.meter.used is None:
                ctx.meter.used = 0
            response = await on_unexpected(Request(scope, receive), exc)
            await response(scope, receive, send)


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
