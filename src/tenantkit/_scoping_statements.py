"""Read and rewrite a statement so every scoped table in it is limited to one tenant.

ORM entities get their criteria from ``with_loader_criteria``; this module
handles what that option never sees: scoped ``Table`` objects used directly
(Core ``select``/``update``/``delete`` of ``Model.__table__``, table aliases,
joins) and raw SQL. ``INSERT`` checks live in ``_scoping_insert``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.elements import (
    BinaryExpression,
    ClauseElement,
    ColumnClause,
    ColumnElement,
    TextClause,
    UnaryExpression,
    _truncated_label,
    quoted_name,
)
from sqlalchemy.sql.expression import Alias, Join, Select, TableClause, TextualSelect
from sqlalchemy.sql.operators import custom_op
from sqlalchemy.sql.selectable import FromClause, HasHints, HasPrefixes, HasSuffixes, SelectBase

from ._scoping_models import TENANT_COLUMN, is_scoped_table, mapped_scoped_tables
from .errors import CrossTenantError

# literal_column("*"), ("1"), ("t.x"), ("t.*"), ('"a name"'): names, not SQL. A
# space outside quotes is not allowed: literal_column("body FROM notes") is a query.
_NAME = r'(?:\w+|"[^"]*")'
_SAFE_LITERAL = re.compile(rf"\*|{_NAME}(?:\.{_NAME})*(?:\.\*)?")
# Custom operators (column.op(...)) render as written: symbols such as @> or ->>, or
# the few word operators SQL has; "FROM t UNION SELECT x ||" is a query, not an operator.
_SAFE_OPERATOR = re.compile(
    r"[-!#%&*+/<=>@^|~?:]{1,4}|(?:NOT +)?(?:I?LIKE|SIMILAR +TO|REGEXP|GLOB|MATCH)"
    r"|IS(?: +NOT)?(?: +DISTINCT +FROM)?",
    re.IGNORECASE,
)
_IDENTIFIER = re.compile(r"\w+")
# Keyword prefixes that change how a statement runs, never what it reads:
# SELECT DISTINCT, INSERT OR IGNORE (SQLite), INSERT IGNORE (MySQL) and the like.
_SAFE_PREFIX_WORDS = frozenset(
    {"ALL", "DISTINCT", "OR", "IGNORE", "REPLACE", "ABORT", "FAIL", "ROLLBACK"}
    | {"LOW_PRIORITY", "HIGH_PRIORITY", "DELAYED", "QUICK", "STRAIGHT_JOIN"}
)


@dataclass(slots=True)
class Findings:
    """What one walk over a statement found."""

    raw_sql: str | None = None
    core: bool = False
    # a name that is SQL only when unquoted: quoted_name(x, quote=True) and
    # (x, quote=False) share a cache key, so its verdict cannot be memoised
    quote_sensitive: bool = False
    inserts: list[Insert] = field(default_factory=list)
    options: set[Any] = field(default_factory=set)


def survey(stmt: ClauseElement, *, orm: bool) -> Findings:
    """Walk ``stmt`` once: raw SQL, scoped tables the ORM criteria will not cover, inserts.

    With ``orm`` false the statement compiles as Core, so ORM-annotated tables
    in it get no loader criteria either and count as Core references.
    """
    found = Findings()
    for elem in visitors.iterate(stmt):
        if isinstance(elem, TextClause | TextualSelect):
            found.raw_sql = "text()"
        elif isinstance(elem, ColumnClause):
            if elem.is_literal and not _SAFE_LITERAL.fullmatch(elem.name):
                found.raw_sql = f"literal_column({elem.name!r})"
            elif _is_core_ref(elem.table, elem, orm):
                found.core = True
        elif isinstance(elem, TableClause):
            if _is_core_ref(elem, elem, orm):
                found.core = True
            elif not is_scoped_table(elem) and _names_scoped_table(elem):
                raise CrossTenantError(
                    f"table({elem.name!r}) names a tenant-scoped table without its tenant_id "
                    "column; use the model or its Table so the query can be scoped"
                )
        raw = _raw_decoration(elem)
        if raw is not None:
            found.raw_sql = raw
        name = getattr(elem, "name", None)
        if (
            isinstance(name, quoted_name)
            and not isinstance(name, _truncated_label)  # generated labels
            and not _IDENTIFIER.fullmatch(name)
        ):
            found.quote_sensitive = True
        if isinstance(elem, Insert):
            found.inserts.append(elem)
        elif isinstance(elem, Update) and is_scoped_table(base_table(elem.table)):
            _refuse_tenant_change(_set_keys(elem))
        found.options.update(getattr(elem, "_with_options", ()))
    return found


_SURVEYS: dict[Any, tuple[str | None, bool]] = {}
_SURVEYS_MAX = 4096


def _raw_decoration(elem: object) -> str | None:
    """Name the raw SQL ``elem`` splices into its statement, or return ``None``.

    A prefix other than a few keywords, any suffix or hint (which the walk
    never visits), a custom operator that is not an operator and an unquoted
    ``quoted_name`` are text spliced in as written: ``suffix_with("UNION
    SELECT ...")`` or ``col.op("FROM t UNION SELECT x ||")`` read every
    tenant's rows.
    """
    operators: tuple[object, ...] = ()
    if isinstance(elem, BinaryExpression):
        operators = (elem.operator,)
    elif isinstance(elem, UnaryExpression):
        operators = (elem.operator, elem.modifier)
    for op in operators:
        if isinstance(op, custom_op) and not _SAFE_OPERATOR.fullmatch(op.opstring.strip()):
            return f"op({op.opstring!r})"
    # A column, table, label, alias or CTE named by quoted_name(..., quote=False)
    # renders that name as written, like a literal column.
    name = getattr(elem, "name", None)
    if isinstance(name, quoted_name) and name.quote is False and not _IDENTIFIER.fullmatch(name):
        return f"quoted_name({str(name)!r}, quote=False)"
    if isinstance(elem, HasPrefixes):
        for clause, _dialect in elem._prefixes:
            words = str(clause).upper().split()
            if not words or not _SAFE_PREFIX_WORDS.issuperset(words):
                return f"prefix_with({str(clause)!r})"
    if isinstance(elem, HasSuffixes) and elem._suffixes:
        return f"suffix_with({str(elem._suffixes[0][0])!r})"
    if isinstance(elem, HasHints) and (elem._hints or elem._statement_hints):
        return "with_hint()"
    return None


def survey_cached(stmt: ClauseElement, *, orm: bool) -> Findings:
    """``survey`` memoised on the statement's cache key for the common, no-rewrite case.

    Only statements needing no Core rewrite and holding no INSERT are
    memoised: the rest carry per-object state (options, values) and are
    walked every time.
    """
    cache_key = stmt._generate_cache_key()
    if cache_key is None:
        return survey(stmt, orm=orm)
    key = (cache_key.key, orm)
    hit = _SURVEYS.get(key)
    if hit is not None:
        return Findings(raw_sql=hit[0])
    found = survey(stmt, orm=orm)
    if not found.core and not found.inserts and not found.quote_sensitive:
        if len(_SURVEYS) >= _SURVEYS_MAX:
            with contextlib.suppress(RuntimeError, KeyError, StopIteration):  # another thread
                _SURVEYS.pop(next(iter(_SURVEYS)))
        _SURVEYS[key] = (found.raw_sql, False)
    return found


def is_identity_load(stmt: Any) -> bool:
    """Return whether ``stmt`` is the ORM's own primary-key load (``Session.get``).

    That statement is ``select(Model)`` plus the mapper's memoised
    ``_get_clause`` (raw primary-key columns); the loader criteria cover it.
    """
    if not isinstance(stmt, Select) or stmt._from_obj or stmt._setup_joins:
        return False
    subject = stmt._propagate_attrs.get("plugin_subject")
    mapper = getattr(subject, "mapper", None)
    if mapper is None or len(stmt._where_criteria) != 1:
        return False
    return stmt._where_criteria[0] is mapper._get_clause[0]


def _set_keys(update: Update) -> list[Any]:
    return list(update._values or {})


def _refuse_tenant_change(keys: Any) -> None:
    if any(getattr(k, "key", k) == TENANT_COLUMN for k in keys):
        raise CrossTenantError("tenant_id is immutable: an UPDATE cannot move rows to a tenant")


def guard_dml(stmt: Update | Delete, tenant_id: str, params: Any) -> Update | Delete:
    """Refuse parameters that set tenant_id; limit an ORM UPDATE/DELETE target to the tenant.

    Loader criteria do not reach ORM bulk UPDATE by primary key (a list of
    parameter dicts), so the target's criterion is added to WHERE explicitly.
    """
    found = _dml_scope(stmt.table)
    if found is None:
        return stmt
    scoped, links = found
    if isinstance(stmt, Update):
        _refuse_tenant_change(_set_keys(stmt))
        for row in [params] if isinstance(params, Mapping) else params or []:
            if isinstance(row, Mapping):
                _refuse_tenant_change(row)
    return stmt.where(*links, scoped.c[TENANT_COLUMN] == tenant_id)


def _dml_scope(table: Any) -> tuple[Any, list[Any]] | None:
    """Return the scoped table holding an ORM DML target's tenant_id, and the joins to it.

    A joined-inheritance subclass's own table has no tenant_id: its rows
    belong to the tenant of the parent rows they extend. The tenant criterion
    on the parent table then needs the inherit conditions, or UPDATE ... FROM
    the parent matches every tenant's subclass rows.
    """
    if is_scoped_table(base_table(table)):
        return table, []
    mapper = table._annotations.get("parentmapper")
    links: list[Any] = []
    while mapper is not None and not is_scoped_table(mapper.local_table):
        if mapper.inherit_condition is None:
            return None
        links.append(mapper.inherit_condition)
        mapper = mapper.inherits
    return None if mapper is None else (mapper.local_table, links)


def _is_core_ref(table: Any, holder: ClauseElement, orm: bool) -> bool:
    if table is None or not is_scoped_table(base_table(table)):
        return False
    return not orm or "parententity" not in holder._annotations


def base_table(from_: Any) -> Any:
    """Return the table beneath any aliases of ``from_``."""
    while isinstance(from_, Alias):
        from_ = from_.element
    return from_


def _names_scoped_table(table: TableClause) -> bool:
    return any(t.name == table.name and t.schema == table.schema for t in mapped_scoped_tables())


def scope_core(
    stmt: ClauseElement, tenant_id: str, *, orm: bool, keep: set[Any] | None = None
) -> ClauseElement:
    """Return a copy of ``stmt`` with ``tenant_id = :tenant`` on every Core scoped reference.

    ``keep`` holds elements to reuse uncopied (loader options cannot be cloned).
    """

    def targets(from_: FromClause) -> Iterator[FromClause]:
        if _is_core_ref(base_table(from_), from_, orm) and isinstance(
            base_table(from_), TableClause
        ):
            yield from_
        elif isinstance(from_, Join):
            if from_.full:
                raise CrossTenantError("FULL OUTER JOIN of a tenant-scoped table is refused")
            yield from targets(from_.left)
            if not from_.isouter:
                yield from targets(from_.right)

    def crit(from_: FromClause) -> ColumnElement[bool]:
        return from_.c[TENANT_COLUMN] == tenant_id

    def visit_join(join: Join) -> None:
        if join.isouter and not join.full:
            extra = [crit(t) for t in _all_targets(join.right, orm)]
            if extra and join.onclause is not None:
                join.onclause = and_(join.onclause, *extra)

    def visit_select(select: Select[Any]) -> None:
        if orm and select._propagate_attrs.get("compile_state_plugin") == "orm":
            # the ORM builds this FROM list at compile time; look at what was written
            found = list(_orm_select_targets(select, targets))
        else:
            found = [t for f in select.get_final_froms() for t in targets(f)]
        unique: list[FromClause] = []
        for from_ in found:
            if not any(from_ is u for u in unique):
                unique.append(from_)
        if unique:
            select._where_criteria += tuple(crit(t) for t in unique)

    def visit_dml(dml: Update | Delete) -> None:
        seen: list[FromClause] = []
        for from_ in [dml.table, *_shallow_tables(dml)]:
            if any(from_ is s for s in seen):
                continue
            seen.append(from_)
            found = [crit(t) for t in targets(from_)]
            if found:
                dml._where_criteria += tuple(found)

    return visitors.cloned_traverse(
        stmt,
        {"stop_on": keep or set()},
        {"select": visit_select, "join": visit_join, "update": visit_dml, "delete": visit_dml},
    )


def _all_targets(from_: FromClause, orm: bool) -> Iterator[FromClause]:
    base = base_table(from_)
    if isinstance(base, TableClause) and _is_core_ref(base, from_, orm):
        yield from_
    elif isinstance(from_, Join):
        yield from _all_targets(from_.left, orm)
        yield from _all_targets(from_.right, orm)


def _orm_select_targets(
    select: Select[Any], targets: Callable[[FromClause], Iterator[FromClause]]
) -> Iterator[FromClause]:
    """Yield the raw scoped tables an ORM select names outside any subquery.

    Entities are left to the loader criteria; a raw table reached by an outer
    join cannot get its criterion into the ORM-built ``ON`` and is refused.
    """
    for from_ in select._from_obj:
        yield from targets(from_)
    for joined, _onclause, _left, flags in select._setup_joins:
        target: Any = joined
        base = base_table(target)
        if isinstance(base, TableClause) and _is_core_ref(base, target, True):
            if flags.get("isouter") or flags.get("full"):
                raise CrossTenantError(
                    "an outer join from an ORM query to a tenant-scoped Table cannot be "
                    "scoped; join the model (or aliased(Model)) instead"
                )
            yield target
    stack: list[Any] = [
        *select._raw_columns,
        *select._where_criteria,
        *select._having_criteria,
        *select._order_by_clauses,
        *select._group_by_clauses,
    ]
    while stack:
        elem = stack.pop()
        if isinstance(elem, SelectBase):
            continue
        if isinstance(elem, TableClause | Alias):
            if isinstance(base_table(elem), TableClause) and _is_core_ref(
                base_table(elem), elem, True
            ):
                yield elem
            continue
        table = elem.table if isinstance(elem, ColumnClause) else None
        if table is not None and _is_core_ref(table, elem, True):
            yield table
        stack.extend(elem.get_children())


def _shallow_tables(dml: Update | Delete) -> Iterator[FromClause]:
    """Yield tables referenced by ``dml``'s WHERE / SET outside any subquery (UPDATE ... FROM)."""
    roots: list[Any] = list(dml._where_criteria)
    if isinstance(dml, Update) and dml._values:
        roots.extend(v for v in dml._values.values() if isinstance(v, ClauseElement))
    stack = roots
    while stack:
        elem = stack.pop()
        if isinstance(elem, SelectBase):
            continue
        if isinstance(elem, ColumnClause) and isinstance(elem.table, FromClause):
            yield elem.table
        stack.extend(elem.get_children())
