"""The model side of scoping: the ``TenantScoped`` mixin and constraint helpers.

A table is *scoped* when its ``tenant_id`` column carries
``info[SCOPED_INFO_KEY]``; the mixin and :func:`tenant_column` set it. The
session layer, the RLS DDL and ``doctor`` all recognise scoped tables by that
mark, so a plain Core ``Table`` can opt in too.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Column, ForeignKeyConstraint, MetaData, String, Table, UniqueConstraint
from sqlalchemy import event as sa_event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapped, Mapper, declared_attr, mapped_column
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.sql.expression import TableClause
from sqlalchemy.sql.selectable import FromClause, Select

from .errors import ConfigurationError, CrossTenantError

SCOPED_INFO_KEY = "tenantkit.scoped"
TENANT_COLUMN = "tenant_id"
TENANT_ID_LENGTH = 63


class TenantScoped:
    """Mixin: a non-null, indexed ``tenant_id`` column; rows belong to one tenant.

    ``tenant_id`` is stamped from the tenant context on insert and cannot be
    changed once the row exists.
    """

    @declared_attr
    def tenant_id(cls) -> Mapped[str]:
        return mapped_column(
            String(TENANT_ID_LENGTH), nullable=False, index=True, info={SCOPED_INFO_KEY: True}
        )


def tenant_column(**kw: Any) -> Column[str]:
    """Return a ``tenant_id`` column that marks a Core ``Table`` as tenant-scoped."""
    kw.setdefault("nullable", False)
    kw.setdefault("index", True)
    info = dict(kw.pop("info", None) or {})
    info[SCOPED_INFO_KEY] = True
    return Column(TENANT_COLUMN, String(TENANT_ID_LENGTH), info=info, **kw)


def is_scoped_table(table: Any) -> bool:
    """Return whether ``table`` (a ``Table``) is tenant-scoped."""
    if not isinstance(table, TableClause):
        return False
    col = table.c.get(TENANT_COLUMN)
    # A lightweight table("t", column("tenant_id")) has columns without .info.
    return isinstance(col, Column) and bool(col.info.get(SCOPED_INFO_KEY))


TableSource = MetaData | Iterable[FromClause]
"""A ``MetaData`` or tables (``Model.__table__`` is typed as a ``FromClause``)."""


def tables_of(source: TableSource) -> list[Table]:
    """Return the ``Table`` objects of a ``MetaData`` or an iterable of tables."""
    found = source.tables.values() if isinstance(source, MetaData) else source
    return [t for t in found if isinstance(t, Table)]


def scoped_tables(source: TableSource) -> list[Table]:
    """Return the scoped tables of a ``MetaData`` or an iterable of tables, sorted by name."""
    return sorted((t for t in tables_of(source) if is_scoped_table(t)), key=lambda t: t.fullname)


def mapped_scoped_tables() -> list[Table]:
    """Return the tables of every mapped ``TenantScoped`` class in the process."""
    found: dict[str, Table] = {}
    for cls in _subclasses(TenantScoped):
        mapper: Any = sa_inspect(cls, raiseerr=False)
        table = getattr(mapper, "local_table", None)
        if isinstance(table, Table) and is_scoped_table(table):
            found.setdefault(f"{id(table)}", table)
    return list(found.values())


def _subclasses(cls: type) -> Iterator[type]:
    child: type
    for child in cls.__subclasses__():
        yield child
        yield from _subclasses(child)


def tenant_key(column: str = "id", *, name: str | None = None) -> UniqueConstraint:
    """Return the composite ``(tenant_id, column)`` key other tables' ``tenant_fk`` point at."""
    return UniqueConstraint(TENANT_COLUMN, column, name=name)


def tenant_unique(*columns: str, name: str | None = None) -> UniqueConstraint:
    """Return a unique constraint on ``columns`` within one tenant (``(tenant_id, *columns)``)."""
    if not columns:
        raise ConfigurationError("tenant_unique() needs at least one column")
    if TENANT_COLUMN in columns:
        raise ConfigurationError("tenant_unique() adds tenant_id itself; do not name it")
    return UniqueConstraint(TENANT_COLUMN, *columns, name=name)


def tenant_fk(
    column: str,
    target: str,
    *,
    ondelete: str | None = None,
    onupdate: str | None = None,
    name: str | None = None,
) -> ForeignKeyConstraint:
    """Return a composite foreign key ``(tenant_id, column) -> (target tenant_id, id)``.

    ``target`` is ``"table"`` (the key column is ``id``), ``"table.column"`` or
    ``"schema.table.column"``. The target table needs ``tenant_key()`` (or a
    ``tenant_unique`` on the same column), so a row can only point at a row of
    its own tenant.
    """
    parts = target.split(".")
    if len(parts) == 1:
        table, key = parts[0], "id"
    else:
        table, key = ".".join(parts[:-1]), parts[-1]
    if not table or not key or column == TENANT_COLUMN:
        raise ConfigurationError(f"tenant_fk({column!r}, {target!r}): expected 'table.column'")
    return ForeignKeyConstraint(
        [TENANT_COLUMN, column],
        [f"{table}.{TENANT_COLUMN}", f"{table}.{key}"],
        ondelete=ondelete,
        onupdate=onupdate,
        name=name,
    )


tenant_foreign_key = tenant_fk


@sa_event.listens_for(TenantScoped, "mapper_configured", propagate=True)
def _guard_tenant_id(mapper: Mapper[Any], cls: type) -> None:
    attr = getattr(cls, TENANT_COLUMN, None)
    if attr is None or sa_event.contains(attr, "set", _refuse_tenant_change):
        return
    sa_event.listen(attr, "set", _refuse_tenant_change, active_history=True)


def _refuse_tenant_change(target: Any, value: Any, oldvalue: Any, _initiator: Any) -> None:
    state = sa_inspect(target)
    if state.key is None or oldvalue in (NO_VALUE, None) or value == oldvalue:
        return
    raise CrossTenantError(
        f"{type(target).__name__}.tenant_id is immutable: the row belongs to {oldvalue!r} "
        f"and cannot move to {value!r}"
    )


# mapper -> names of column_property attributes whose SQL reads a scoped Table
# inside a subquery: loader criteria never reach them, so scoped sessions refuse
# to load such mappers (see _scoping_session).
unsafe_properties: weakref.WeakKeyDictionary[Mapper[Any], list[str]] = weakref.WeakKeyDictionary()


@sa_event.listens_for(Mapper, "mapper_configured")
def _find_unsafe_properties(mapper: Mapper[Any], _cls: type) -> None:
    found = [
        prop.key
        for prop in mapper.column_attrs
        if any(_reads_raw_scoped_subquery(expr) for expr in prop.columns)
    ]
    if found:
        unsafe_properties[mapper] = found


def _reads_raw_scoped_subquery(expr: Any) -> bool:
    for elem in visitors.iterate(expr):
        if isinstance(elem, Select) and _raw_scoped_refs(elem):
            return True
    return False


def _raw_scoped_refs(select: Select[Any]) -> bool:
    # An ORM-enabled subquery gets loader criteria for its entities; raw columns
    # and raw FROM tables in it do not. A Core subquery gets nothing at all.
    orm = select._propagate_attrs.get("compile_state_plugin") == "orm"
    candidates: list[Any] = list(select._from_obj)
    for inner in visitors.iterate(select):
        if isinstance(inner, ColumnClause) or (not orm and isinstance(inner, TableClause)):
            candidates.append(inner)
    for elem in candidates:
        table = elem if isinstance(elem, TableClause) else getattr(elem, "table", None)
        if is_scoped_table(table) and "parententity" not in elem._annotations:
            return True
    return False
