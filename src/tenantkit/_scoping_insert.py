"""Check and stamp ``INSERT`` statements on tenant-scoped tables.

Rows are stamped with the session's tenant; a row, an upsert or an
``INSERT ... FROM SELECT`` naming another tenant is refused.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import BindParameter, ClauseElement, ColumnClause
from sqlalchemy.sql.expression import Select
from sqlalchemy.util import immutabledict

from ._scoping_models import TENANT_COLUMN, is_scoped_table
from ._scoping_statements import base_table
from .errors import CrossTenantError


def check_insert(insert: Insert, tenant_id: str, params: Any) -> tuple[Insert, Any]:
    """Return ``(insert, params)`` stamped with ``tenant_id``; refuse rows naming another."""
    table = insert.table
    if not is_scoped_table(base_table(table)):
        return insert, params
    insert = _guard_upsert(insert, tenant_id)
    if insert._select_names is not None:
        _check_from_select(insert, tenant_id, params)
        return insert, params
    if insert._multi_values:
        for rows in insert._multi_values:
            for row in rows:
                if not isinstance(row, Mapping):
                    raise CrossTenantError(
                        "multi-row VALUES on a tenant-scoped table must name columns "
                        "(pass dicts with tenant_id)"
                    )
                _check_value(_lookup(row), tenant_id, required=True)
        return insert, params
    in_statement = _lookup(insert._values or {})
    if in_statement is not _MISSING:
        _check_value(in_statement, tenant_id, required=True)
        return insert, params
    batch: list[Any] = [params] if isinstance(params, Mapping) else list(params or [])
    if batch:
        stamped = [_stamp(row, tenant_id) for row in batch]
        return insert, stamped[0] if isinstance(params, Mapping) else stamped
    if isinstance(insert._values, dict):  # a cloned statement holds a plain dict
        insert._values = immutabledict(insert._values)
    return insert.values({TENANT_COLUMN: tenant_id}), params


_MISSING = object()
# The names SQLAlchemy compiles a tenant_id value's bind to: "tenant_id" in
# VALUES, "tenant_id_m0" in multi-row VALUES, "tenant_id_1" for a criterion.
_TENANT_BIND = re.compile(rf"{TENANT_COLUMN}(?:_m?\d+)?")


def check_params(params: Any, tenant_id: str) -> None:
    """Refuse execution parameters that would replace a tenant_id bind with another tenant.

    ``session.execute(stmt, {"tenant_id_1": "other"})`` replaces the bound
    value of that compiled name: the tenant criterion or a checked VALUES.
    """
    for row in [params] if isinstance(params, Mapping) else params or []:
        if not isinstance(row, Mapping):
            continue
        for key, value in row.items():
            name = key if isinstance(key, str) else getattr(key, "key", None)
            if (
                isinstance(name, str)
                and name.startswith(TENANT_COLUMN)
                and _TENANT_BIND.fullmatch(name)
                and value != tenant_id
            ):
                raise CrossTenantError(
                    f"the execution parameter {name!r} would replace the tenant "
                    f"{tenant_id!r} bound in this statement"
                )


def _guard_upsert(insert: Insert, tenant_id: str) -> Insert:
    """Limit ``ON CONFLICT DO UPDATE`` to this tenant's existing row (PostgreSQL, SQLite)."""
    post = insert._post_values_clause
    if post is None or not hasattr(post, "update_whereclause"):
        return insert
    changes = getattr(post, "update_values_to_set", None) or {}
    if any(getattr(k, "key", k) == TENANT_COLUMN for k in changes):
        raise CrossTenantError("ON CONFLICT DO UPDATE cannot change tenant_id")
    guard = insert.table.c[TENANT_COLUMN] == tenant_id
    guarded = copy.copy(post)
    where = post.update_whereclause
    guarded.update_whereclause = guard if where is None else and_(where, guard)
    new = insert._generate()
    new._post_values_clause = guarded
    return new


def _lookup(row: Mapping[Any, Any]) -> Any:
    for key, value in row.items():
        name = key if isinstance(key, str) else getattr(key, "key", None)
        if name == TENANT_COLUMN:
            return value
    return _MISSING


def _check_value(value: Any, tenant_id: str, *, required: bool) -> None:
    if value is _MISSING:
        if required:
            raise CrossTenantError("each row inserted into a tenant-scoped table needs tenant_id")
        return
    if isinstance(value, BindParameter):
        value = value.effective_value
    if isinstance(value, ClauseElement):
        raise CrossTenantError("tenant_id must be a plain value, not an SQL expression")
    if value != tenant_id:
        raise CrossTenantError(
            f"insert names tenant {value!r} while the session belongs to {tenant_id!r}"
        )


def _stamp(row: Any, tenant_id: str) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise CrossTenantError("insert parameters for a tenant-scoped table must be mappings")
    value = _lookup(row)
    if value is _MISSING:
        return {**row, TENANT_COLUMN: tenant_id}
    _check_value(value, tenant_id, required=True)
    return dict(row)


def _check_from_select(insert: Insert, tenant_id: str, params: Any) -> None:
    names = insert._select_names or []
    if TENANT_COLUMN not in names:
        raise CrossTenantError(
            "INSERT ... FROM SELECT into a tenant-scoped table must select tenant_id"
        )
    source = insert.select
    if not isinstance(source, Select):
        raise CrossTenantError("INSERT ... FROM SELECT needs a plain SELECT to be checked")
    column = list(source.selected_columns)[names.index(TENANT_COLUMN)]
    column = getattr(column, "element", column)  # a label
    if isinstance(column, BindParameter):
        if params:  # any of them may name this bind and replace the checked value
            raise CrossTenantError(
                "INSERT ... FROM SELECT of a literal tenant_id takes no execution parameters"
            )
        _check_value(column, tenant_id, required=True)
        return
    table = getattr(column, "table", None)
    if (
        isinstance(column, ColumnClause)
        and column.name == TENANT_COLUMN
        and table is not None
        and is_scoped_table(base_table(table))
    ):
        return  # the scoped SELECT only yields this tenant's tenant_id
    raise CrossTenantError(
        "INSERT ... FROM SELECT must take tenant_id from a scoped table's tenant_id "
        "or from the current tenant id"
    )
