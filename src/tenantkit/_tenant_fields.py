"""Validation of a tenant's writable fields, shared by ``TenantStore.create`` and ``update``.

Each bad field is a ``ValidationError`` naming it; good values come back in
the form the ``tenantkit_tenants`` columns store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._stores import check_optional_int, check_text
from .errors import ValidationError
from .types import TenantStatus

__all__ = ["check_status", "clean_fields"]


def clean_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate writable fields, naming the first bad one; return column values."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "name":
            out[name] = check_text(value, name, max_length=200)
        elif name == "plan":
            out[name] = check_text(value, name, max_length=64)
        elif name == "status":
            out[name] = check_status(value)
        elif name in ("quota_requests_per_minute", "quota_tokens_per_minute"):
            out[name] = check_optional_int(value, name, minimum=0)
        elif name in ("allowed_models", "allowed_tools"):
            out[name] = _string_list(value, name)
        elif name == "metadata":
            out[name] = _metadata(value)
    return out


def check_status(value: object) -> TenantStatus:
    """Return ``value`` as a tenant status, or raise ``ValidationError`` naming ``status``."""
    if value == "active":
        return "active"
    if value == "suspended":
        return "suspended"
    raise ValidationError("status must be 'active' or 'suspended'", field="status")


def _string_list(value: object, field: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | frozenset | set):
        raise ValidationError(f"{field} must be a list of strings or null", field=field)
    items = list(value)
    if not all(isinstance(item, str) and item and len(item) <= 200 for item in items):
        raise ValidationError(f"{field} must hold non-empty strings", field=field)
    return list(dict.fromkeys(items))


def _metadata(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValidationError("metadata must be an object with string keys", field="metadata")
    try:
        # A JSON round trip both checks and deep-copies: the caller keeps its object.
        copied: dict[str, Any] = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"metadata must be JSON-serialisable: {exc}", field="metadata"
        ) from exc
    return copied
