"""``/openapi.json``: built by walking the router, so every route is described.

Each endpoint carries an :class:`Operation` (set with :func:`operation`); a
route without one is a start-up error rather than a silently missing entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from starlette.routing import BaseRoute, Route

from .validation import Body, Field

F = TypeVar("F", bound=Callable[..., Any])
Security = Literal["public", "admin", "tenant", "user", "tenant_admin"]

#: Errors every route of a security class can answer, beside its own.
_SECURITY_ERRORS: dict[str, tuple[int, ...]] = {
    "public": (),
    "admin": (401, 503),
    # 400: a malformed X-Tenant-ID; 404: a tenant that does not exist (any longer).
    "tenant": (400, 401, 403, 404, 429, 503),
    "user": (400, 401, 403, 404, 429, 503),
    "tenant_admin": (400, 401, 403, 404, 429, 503),
}
_SECURITY_SCHEMES: dict[str, list[dict[str, list[str]]]] = {
    "public": [],
    "admin": [{"adminToken": []}],
    "tenant": [{"apiKey": []}, {"bearer": []}, {"tenantHeader": []}],
    "user": [{"bearer": []}],
    "tenant_admin": [{"apiKey": []}, {"bearer": []}],
}
_ERROR_TEXT = {
    400: "Malformed JSON or tenant header",
    401: "Missing or invalid credentials",
    403: "Authenticated but not allowed (tenant, role, policy, suspended)",
    404: "Unknown id, an id of another tenant, or an unknown tenant",
    409: "Conflict (duplicate)",
    413: "Body over the limit",
    422: "Invalid fields; `errors` names each",
    429: "Quota exceeded; see Retry-After",
    503: "A backing service is down",
}


@dataclass(frozen=True)
class Operation:
    """What ``/openapi.json`` says about one endpoint."""

    summary: str
    tag: str
    security: Security
    body: Body | None = None
    query: tuple[Field, ...] = ()
    responses: Mapping[int, Mapping[str, Any] | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()


def operation(
    summary: str,
    *,
    tag: str,
    security: Security,
    body: Body | None = None,
    query: Iterable[Field] = (),
    responses: Mapping[int, Mapping[str, Any] | None] | None = None,
    errors: Iterable[int] = (),
) -> Callable[[F], F]:
    """Describe an endpoint for ``/openapi.json``."""
    spec = Operation(
        summary, tag, security, body, tuple(query), dict(responses or {200: None}), tuple(errors)
    )

    def mark(endpoint: F) -> F:
        endpoint.__openapi__ = spec  # type: ignore[attr-defined]
        return endpoint

    return mark


def build(routes: Iterable[BaseRoute], *, title: str, version: str) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        spec: Operation | None = getattr(route.endpoint, "__openapi__", None)
        if spec is None:
            raise RuntimeError(f"route {route.path} has no @operation description")
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(route.path, {})[method.lower()] = _operation(route, method, spec)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": {"Problem": PROBLEM_SCHEMA},
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"},
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an access token (JWT) or an API key (tk_...)",
                },
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "tenantHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Tenant-ID",
                    "description": "only when the app runs with TRUST_TENANT_HEADER=1",
                },
            },
        },
    }


def _operation(route: Route, method: str, spec: Operation) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in route.param_convertors
    ]
    params += [
        {"name": f.name, "in": "query", "required": False, "schema": f.schema()} for f in spec.query
    ]
    out: dict[str, Any] = {
        "operationId": f"{method.lower()}_{route.name}",
        "summary": spec.summary,
        "tags": [spec.tag],
        "security": _SECURITY_SCHEMES[spec.security],
        "parameters": params,
        "responses": {},
    }
    if spec.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": spec.body.schema()}},
        }
    for status, schema in spec.responses.items():
        if schema is None and status == 204:
            out["responses"][str(status)] = {"description": "No content"}
        else:
            content = {"application/json": {"schema": dict(schema or {"type": "object"})}}
            out["responses"][str(status)] = {"description": "Success", "content": content}
    errors = set(spec.errors) | set(_SECURITY_ERRORS[spec.security])
    if spec.body is not None:
        errors |= {400, 413, 422}
    if spec.query:
        errors.add(422)
    if route.param_convertors:
        errors.add(404)
    for status in sorted(errors):
        out["responses"][str(status)] = {
            "description": _ERROR_TEXT.get(status, "Error"),
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
    return out


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem document",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
        "reason": {"type": "string"},
        "retry_after": {"type": "integer"},
    },
}


def list_of(item: Mapping[str, Any]) -> dict[str, Any]:
    """Return the schema of a paginated list of ``item``."""
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": dict(item)},
            "next_cursor": {"type": ["string", "null"]},
        },
    }


PAGE_QUERY = (
    Field("limit", "integer", minimum=1, maximum=200, description="page size (default 50)"),
    Field("cursor", "string", description="next_cursor of the previous page"),
)
