"""Reading one tenant's entries: filters, cursor pages (newest first) and JSON Lines export.

Reads are confined to one tenant: the bound one, or, with no tenant bound
(CLI, admin jobs) or a platform admin bound, the one named. A tenant asking
for another tenant's log is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, select

from . import scoping
from ._audit_chain import Bind, connection_for
from ._audit_model import LOG, AuditEntry, entry_from_row
from ._stores import storable_text
from .context import get_context
from .errors import NoTenantError, TenantMismatch, UnprocessableEntity
from .types import Page, validate_tenant_id

MAX_LIMIT = 200
EXPORT_BATCH = 1000
# A cursor holds a tenant id (at most 63 characters) and a seq, base64-encoded.
MAX_CURSOR_LENGTH = 200
MAX_SEQ = 2**63 - 1  # the seq column is a BIGINT


def query(
    bind: Bind,
    tenant_id: str | None = None,
    *,
    actor: str | None = None,
    action: str | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[AuditEntry]:
    """Return one page of a tenant's entries, newest first.

    ``action`` matches exactly, or as a prefix when it ends in ``*``
    (``"project.*"``); ``start`` is inclusive, ``end`` exclusive. Pass the
    page's ``next_cursor`` back as ``cursor`` for the following page.
    """
    tenant = readable_tenant(tenant_id)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise UnprocessableEntity(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    stmt = _filtered(tenant, actor, action, resource_type, resource_id, start, end)
    if cursor is not None:
        stmt = stmt.where(LOG.c.seq < _decode_cursor(cursor, tenant))
    stmt = stmt.order_by(LOG.c.seq.desc()).limit(limit + 1)
    with connection_for(bind) as conn:
        rows = conn.execute(stmt).all()
    items = [entry_from_row(row) for row in rows[:limit]]
    more = len(rows) > limit
    return Page(items=items, next_cursor=_encode_cursor(tenant, items[-1].seq) if more else None)


def export_jsonl(
    bind: Bind,
    tenant_id: str | None = None,
    *,
    actor: str | None = None,
    action: str | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Iterator[str]:
    """Yield a tenant's entries as JSON lines (``"\\n"``-terminated), oldest first.

    Each line carries the hashes, so the export can be verified elsewhere.
    """
    tenant = readable_tenant(tenant_id)
    base = _filtered(tenant, actor, action, resource_type, resource_id, start, end)
    after = 0
    while True:
        stmt = base.where(LOG.c.seq > after).order_by(LOG.c.seq).limit(EXPORT_BATCH)
        with connection_for(bind) as conn:
            rows = conn.execute(stmt).all()
        for row in rows:
            entry = entry_from_row(row)
            yield json.dumps(entry.to_dict(), ensure_ascii=False, sort_keys=True) + "\n"
        if len(rows) < EXPORT_BATCH:
            return
        after = int(rows[-1].seq)


def readable_tenant(tenant_id: str | None) -> str:
    """Return the tenant whose log the caller may read, or raise."""
    ctx = get_context()
    if ctx is None:
        if tenant_id is None:
            raise NoTenantError("no tenant in context: name the tenant whose audit log to read")
        return validate_tenant_id(tenant_id)
    if tenant_id is None or tenant_id == ctx.tenant_id:
        return ctx.tenant_id
    if scoping.is_admin(ctx.identity):
        return validate_tenant_id(tenant_id)
    raise TenantMismatch("the audit log of another tenant cannot be read")


def _filtered(
    tenant: str,
    actor: str | None,
    action: str | None,
    resource_type: str | None,
    resource_id: str | None,
    start: datetime | None,
    end: datetime | None,
) -> Select[Any]:
    conditions: list[ColumnElement[bool]] = [LOG.c.tenant_id == tenant]
    for name, text in (("actor", actor), ("action", action), ("resource_type", resource_type)):
        if text is not None and (not isinstance(text, str) or not storable_text(text)):
            raise UnprocessableEntity(f"{name} must be a string", field=name)
    if resource_id is not None and not storable_text(str(resource_id)):
        raise UnprocessableEntity("resource_id must be a string", field="resource_id")
    if actor is not None:
        conditions.append(LOG.c.actor == actor)
    if action is not None:
        if action.endswith("*"):
            prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(LOG.c.action.like(prefix + "%", escape="\\"))
        else:
            conditions.append(LOG.c.action == action)
    if resource_type is not None:
        conditions.append(LOG.c.resource_type == resource_type)
    if resource_id is not None:
        conditions.append(LOG.c.resource_id == str(resource_id))
    for name, value in (("start", start), ("end", end)):
        if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
            raise UnprocessableEntity(f"{name} must be a timezone-aware datetime", field=name)
        try:
            _ = value.astimezone(UTC) if value is not None else None  # as the column stores it
        except OverflowError:
            raise UnprocessableEntity(f"{name} is out of range in UTC", field=name) from None
    if start is not None:
        conditions.append(LOG.c.time >= start)
    if end is not None:
        conditions.append(LOG.c.time < end)
    if start is not None and end is not None and end <= start:
        raise UnprocessableEntity("end must be after start", field="end")
    return select(LOG).where(*conditions)


def _encode_cursor(tenant: str, seq: int) -> str:
    raw = f"{tenant}:{seq}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: object, tenant: str) -> int:
    try:
        if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError("not a cursor")
        padded = cursor + "=" * (-len(cursor) % 4)
        owner, _, seq = base64.urlsafe_b64decode(padded.encode("ascii")).decode().rpartition(":")
        value = int(seq)
    except (ValueError, UnicodeError, binascii.Error):
        raise UnprocessableEntity("cursor is not valid", field="cursor") from None
    if owner != tenant or not 1 <= value <= MAX_SEQ:
        raise UnprocessableEntity("cursor is not valid for this audit log", field="cursor")
    return value
