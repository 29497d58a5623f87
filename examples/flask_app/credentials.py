"""Credentials on public routes, checked by the same tenantkit resolvers as the pipeline."""

from __future__ import annotations

from flask import request

from tenantkit.errors import Unauthorized
from tenantkit.types import Identity, RequestInfo

from .context import platform


def request_info() -> RequestInfo:
    """Return the framework-neutral view of the current Flask request."""
    return RequestInfo(
        method=request.method,
        path=request.path,
        headers={name.lower(): value for name, value in request.headers.items()},
        client=request.remote_addr,
        query_string=request.query_string.decode("latin-1"),
    )


def bearer_identity() -> Identity | None:
    """Return the user a bearer JWT proves, ``None`` without one; 401 for a bad one."""
    info = request_info()
    if info.header("authorization") is None and info.header("x-api-key") is None:
        return None
    who = platform().kit.identity.resolve(info)
    if who.source != "jwt" or who.subject is None:
        raise Unauthorized("a user's bearer token is required here")
    return who
