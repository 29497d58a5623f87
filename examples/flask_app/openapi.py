"""``/openapi.json``, built from the app's own routes and their ``endpoint`` declarations.

Every rule in ``app.url_map`` appears with its parameters, body schema,
success response and problem responses; ``x-auth`` and ``x-roles`` say who
may call it, so clients (and the end-to-end tests) need no second list.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

from .api import ROLES_FOR, Operation, operation_of
from .openapi_schemas import RESPONSES
from .validation import Schema

SERVICE = "tenantkit Flask example: SaaS organization platform"
VERSION = "0.1.0"
_PARAM = re.compile(r"<(?:[a-z_]+:)?([a-z_]+)>")
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
ERROR_TITLES = {
    400: "Malformed JSON",
    401: "Missing or invalid credentials",
    402: "Plan limit reached (limit, upgrade_to)",
    403: "Not allowed (role, scope, credential kind, suspended)",
    404: "Not found, or another organization's",
    405: "Method not allowed",
    409: "Conflict (duplicate, stale version, already used)",
    410: "Gone (expired)",
    413: "Body too large",
    422: "Invalid fields (each one named)",
    429: "Rate limit exceeded (Retry-After)",
    503: "A backing service is down",
}
SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "member": [{"bearerAuth": []}],
    "admin": [{"bearerAuth": []}],
    "owner": [{"bearerAuth": []}],
    "user": [{"bearerAuth": []}],
    "api_key": [{"apiKey": []}, {"apiKeyBearer": []}],
    "platform": [{"adminToken": []}],
    "public": [],
}
_OBJECT = {"type": "object"}
PROBLEM: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "field": {"type": "string"},
        "errors": {"type": "array", "items": _OBJECT},
        "reason": {"type": "string"},
        "retry_after": {"type": "integer"},
        "limit": {"type": ["integer", "null"]},
        "upgrade_to": {"type": ["string", "null"]},
        "current_version": {"type": "integer"},
    },
}


def build_openapi(app: Flask) -> dict[str, Any]:
    """Return the OpenAPI 3.1 description of every route of ``app``."""
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {"Problem": PROBLEM, **RESPONSES}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        op = operation_of(app.view_functions[rule.endpoint])
        if op is None:
            continue
        path = _PARAM.sub(r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            entry = _operation(op, rule.endpoint, list(rule.arguments), components)
            paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": SERVICE,
            "version": VERSION,
            "description": "Organizations are tenants. Tokens are per membership: the "
            "org_id claim names the organization. Errors are RFC 9457 problem documents.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "apiKeyBearer": {"type": "http", "scheme": "bearer", "bearerFormat": "tk_..."},
                "adminToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _operation(
    op: Operation, endpoint: str, arguments: list[str], components: dict[str, Any]
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in sorted(arguments)
    ]
    if op.query is not None:
        parameters += [
            {"name": f.name, "in": "query", "required": f.required, "schema": f.json_schema()}
            for f in op.query.fields
        ]
    parameters += [
        {"name": f.name, "in": "header", "required": f.required, "schema": f.json_schema()}
        for f in op.headers
    ]
    entry: dict[str, Any] = {
        "operationId": endpoint.replace(".", "_"),
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": parameters,
        "security": SECURITY[op.auth],
        "x-auth": op.auth,
        "responses": _responses(op, components),
    }
    if op.auth in ROLES_FOR:
        entry["x-roles"] = sorted(ROLES_FOR[op.auth])
    if op.scope is not None:
        entry["x-scope"] = op.scope
    if op.description:
        entry["description"] = op.description
    if op.body is not None:
        _register(op.body, components)
        entry["requestBody"] = {
            "required": not op.body_optional,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{op.body.name}"}}
            },
        }
    return entry


def _responses(op: Operation, components: dict[str, Any]) -> dict[str, Any]:
    success: dict[str, Any] = {"description": op.response or "No content"}
    if op.status != 204:
        if op.response is not None and op.response not in components:
            raise LookupError(f"no response schema named {op.response!r} in openapi_schemas")
        schema = {"$ref": f"#/components/schemas/{op.response}"} if op.response else _OBJECT
        success["content"] = {"application/json": {"schema": schema}}
    codes = set(op.responses)
    if op.body is not None:
        codes |= {400, 413, 422}
    if op.query is not None:
        codes.add(422)
    if op.auth not in ("public", "platform"):
        codes |= {401, 429, 503}
    responses: dict[str, Any] = {str(op.status): success}
    for code in sorted(codes):
        responses[str(code)] = {
            "description": ERROR_TITLES.get(code, "Error"),
            "content": {"application/problem+json": {"schema": PROBLEM_REF}},
        }
    return responses


def _register(schema: Schema, components: dict[str, Any]) -> None:
    rendered = schema.json_schema()
    if components.setdefault(schema.name, rendered) != rendered:
        raise LookupError(f"two different schemas are named {schema.name!r}")
