"""The statement-shape probes behind ``tenantkit.testing.assert_isolated``.

A probe is a function of a ``Session`` and the value it must return (or the
exception it must raise); the sync and async drivers run the same probes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import (
    Table,
    exists,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    true,
    union,
    update,
)
from sqlalchemy.orm import Session, aliased, selectinload

from ._scoping_models import TENANT_COLUMN, TenantScoped
from .errors import ConfigurationError, CrossTenantError, NoTenantError

_PROBE_SAMPLE = 5


@dataclass(frozen=True, slots=True)
class Probe:
    """Run ``fn`` in a fresh session bound to ``tenant`` (``None``: none); expect ``expect``."""

    label: str
    tenant: str | None
    fn: Callable[[Session], Any]
    expect: Any
    reuse_with: str | None = None  # run first under ``tenant``, then again under this one


def describe(model: type) -> tuple[Table, list[str]]:
    """Return the model's table and primary-key attribute names; refuse unscoped models."""
    if not (isinstance(model, type) and issubclass(model, TenantScoped)):
        raise ConfigurationError(f"{model!r} is not a TenantScoped model")
    mapper = inspect(model)
    table = mapper.local_table
    if not isinstance(table, Table):
        raise ConfigurationError(f"{model.__name__} is not mapped to a single table")
    keys = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
    return table, keys


def truth_query(model: type, tenant: str) -> Callable[[Session], set[tuple[Any, ...]]]:
    """Return a plain-session query of ``tenant``'s keys (the baseline, filtered by hand)."""
    _, keys = describe(model)
    cols = [getattr(model, k) for k in keys]

    def run(session: Session) -> set[tuple[Any, ...]]:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(select(func.set_config("app.tenant_id", tenant, True)))
        stmt = select(*cols).where(getattr(model, TENANT_COLUMN) == tenant)
        return {tuple(r) for r in session.execute(stmt)}

    return run


def tenants_query(model: type) -> Callable[[Session], list[str]]:
    """Return a plain-session query of the tenants that own rows (empty under RLS)."""
    column = getattr(model, TENANT_COLUMN)
    return lambda s: sorted(s.scalars(select(column).distinct()))


def probes(model: type, truth: dict[str, set[tuple[Any, ...]]]) -> list[Probe]:
    """Return every probe of ``model`` given each tenant's true key set."""
    table, keys = describe(model)
    name = model.__name__
    tenants = sorted(truth)
    shapes = _shapes(model, table, keys)
    found: list[Probe] = []
    for tenant in tenants:
        other = next(t for t in tenants if t != tenant)
        expected = truth[tenant]
        foreign = sorted(k for t in tenants if t != tenant for k in truth[t])[:_PROBE_SAMPLE]
        found += [Probe(f"{name}: {label}", tenant, fn, expected) for label, fn in shapes]
        found += [
            Probe(f"{name}: count", tenant, partial(_count, model), len(expected)),
            Probe(f"{name}: Core UPDATE", tenant, partial(_update_rowcount, table), len(expected)),
            Probe(
                f"{name}: get() of other tenants' rows",
                tenant,
                partial(_get_all, model, foreign),
                [None] * len(foreign),
            ),
            Probe(f"{name}: text() SQL", tenant, partial(_text_rows, table), expected),
            Probe(
                f"{name}: INSERT naming another tenant",
                tenant,
                partial(_insert_for, model, other),
                CrossTenantError,
            ),
            Probe(
                f"{name}: session reused by another tenant",
                tenant,
                partial(_count, model),
                CrossTenantError,
                reuse_with=other,
            ),
        ]
        rel: Any
        for rel in inspect(model).relationships:
            if issubclass(rel.mapper.class_, TenantScoped):
                found.append(
                    Probe(
                        f"{name}.{rel.key}: related rows' tenants",
                        tenant,
                        partial(_related_tenants, model, rel.key),
                        Within({tenant}),
                    )
                )
    found += [Probe(f"{name}: {label}", None, fn, NoTenantError) for label, fn in shapes[:2]]
    return found


def _count(model: type, session: Session) -> Any:
    return session.scalar(select(func.count()).select_from(model))


def _get_all(model: type, keys: list[tuple[Any, ...]], session: Session) -> list[Any]:
    return [session.get(model, k) for k in keys]


def _insert_for(model: type, tenant: str, session: Session) -> None:
    session.execute(insert(model).values(tenant_id=tenant))


def _shapes(model: type, table: Table, keys: Sequence[str]) -> list[tuple[str, Any]]:
    cols = [getattr(model, k) for k in keys]
    names = [str(c.name) for c in table.primary_key.columns]
    other: Any = aliased(model)
    other_cols = [getattr(other, k) for k in keys]
    sq = select(model).subquery()
    cte = select(*cols).cte()
    core_alias = table.alias()

    def keyset(stmt: Any) -> Callable[[Session], set[tuple[Any, ...]]]:
        return lambda s: {tuple(r) for r in s.execute(stmt)}

    def entities(s: Session) -> set[tuple[Any, ...]]:
        found: list[Any] = list(s.scalars(select(model)))
        return {tuple(getattr(o, k) for k in keys) for o in found}

    def windowed(s: Session) -> set[tuple[Any, ...]]:
        return {tuple(r[:-1]) for r in s.execute(select(*cols, func.count().over()))}

    tenant_col = getattr(model, TENANT_COLUMN)
    return [
        ("select entities", entities),
        ("select columns", keyset(select(*cols))),
        ("WHERE ... OR true", keyset(select(*cols).where(or_(true(), tenant_col == "")))),
        ("aliased entity", keyset(select(*other_cols))),
        ("subquery", keyset(select(*[sq.c[n] for n in names]))),
        ("CTE", keyset(select(*[cte.c[n] for n in names]))),
        ("UNION", keyset(union(select(*cols), select(*other_cols)))),
        ("EXISTS", keyset(select(*cols).where(exists(select(*other_cols))))),
        ("window function", windowed),
        ("Core select of the table", keyset(select(*[table.c[n] for n in names]))),
        ("Core table alias", keyset(select(*[core_alias.c[n] for n in names]))),
    ]


def _update_rowcount(table: Table, session: Session) -> int:
    col = next(iter(table.primary_key.columns))
    result: Any = session.execute(update(table).values({col.name: col}))
    return int(result.rowcount)


def _text_rows(table: Table, session: Session) -> Any:
    names = ", ".join(c.name for c in table.primary_key.columns)
    try:
        rows = session.execute(text(f"SELECT {names} FROM {table.fullname}"))
    except CrossTenantError:
        return _Refused()
    return {tuple(r) for r in rows}


class _Refused:
    """``text()`` was refused: as good as the exact rows."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "<text() refused>"


class Within:
    """Expect a set that is a subset of ``allowed``."""

    def __init__(self, allowed: set[str]) -> None:
        self.allowed = allowed

    def __eq__(self, other: object) -> bool:
        return isinstance(other, set) and other <= self.allowed

    def __hash__(self) -> int:
        return hash(frozenset(self.allowed))

    def __repr__(self) -> str:
        return f"a subset of {sorted(self.allowed)}"


def _related_tenants(model: type, rel: str, session: Session) -> set[str]:
    parents: Sequence[Any] = session.scalars(
        select(model).options(selectinload(getattr(model, rel)))
    ).all()
    found: set[str] = set()
    for parent in parents:
        value = getattr(parent, rel)
        items: Iterable[Any] = value if isinstance(value, Iterable) else [value]
        found.update(getattr(i, TENANT_COLUMN) for i in items if i is not None)
    return found
