"""The session side of scoping: ``TenantSession`` and the events that filter, stamp and refuse.

Every listener is registered on the ``TenantSession`` class, so it runs for
the sessions tenantkit makes and for nothing else: no engine-wide or
connection-level listener is ever installed.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

from sqlalchemy import event, func, inspect, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, with_loader_criteria
from sqlalchemy.sql.dml import Delete, Insert, Update

from . import context
from ._scoping_insert import check_insert, check_params
from ._scoping_models import (
    TENANT_COLUMN,
    TenantScoped,
    mapped_scoped_tables,
    unsafe_properties,
)
from ._scoping_statements import (
    guard_dml,
    is_identity_load,
    scope_core,
    survey_cached,
)
from .errors import CrossTenantError, NoTenantError

OWNER_KEY = "tenantkit.tenant_id"
UNSCOPED_KEY = "tenantkit.unscoped"
UNVERIFIED_KEY = "tenantkit.unverified"
SETTING = "app.tenant_id"

_rls_verified: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()


class TenantSession(Session):
    """A ``Session`` that belongs to one tenant and scopes every statement to it.

    ``get()`` checks the session's tenant before it looks in the identity
    map, so a cached object never reaches another tenant. ``close()`` (which
    empties the identity map) releases the session for another tenant.
    """

    def get(self, *args: Any, **kw: Any) -> Any:
        session_tenant(self)
        return super().get(*args, **kw)

    def get_one(self, *args: Any, **kw: Any) -> Any:
        session_tenant(self)
        return super().get_one(*args, **kw)

    def merge(self, *args: Any, **kw: Any) -> Any:
        session_tenant(self)
        return super().merge(*args, **kw)

    # close(), reset() and invalidate() empty the identity map, so the session
    # may serve another tenant afterwards.
    def close(self) -> None:
        super().close()
        self.info.pop(OWNER_KEY, None)
        self.info.pop(UNVERIFIED_KEY, None)

    def reset(self) -> None:
        super().reset()
        self.info.pop(OWNER_KEY, None)
        self.info.pop(UNVERIFIED_KEY, None)

    def invalidate(self) -> None:
        super().invalidate()
        self.info.pop(OWNER_KEY, None)
        self.info.pop(UNVERIFIED_KEY, None)

    # The legacy bulk API writes without flush events or do_orm_execute.
    def bulk_save_objects(self, *args: Any, **kw: Any) -> None:
        _refuse_legacy_bulk("bulk_save_objects")

    def bulk_insert_mappings(self, *args: Any, **kw: Any) -> None:
        _refuse_legacy_bulk("bulk_insert_mappings")

    def bulk_update_mappings(self, *args: Any, **kw: Any) -> None:
        _refuse_legacy_bulk("bulk_update_mappings")


def _refuse_legacy_bulk(name: str) -> None:
    raise CrossTenantError(
        f"Session.{name}() bypasses tenant scoping; use session.execute(insert(Model), rows) "
        "or session.execute(update(Model), rows), which are scoped"
    )


def session_tenant(session: Session) -> str | None:
    """Return the tenant ``session`` is scoped to (``None`` inside ``unscoped``); claim it.

    The first use binds the session to the tenant in context; a use under any
    other tenant raises ``CrossTenantError``, no tenant raises ``NoTenantError``.
    """
    if session.info.get(UNSCOPED_KEY):
        return None
    ctx = context.get_context()
    if ctx is None:
        raise NoTenantError(
            "no tenant in context: a tenant-scoped session runs nothing without one; "
            "bind a tenant (tenantkit.bound_tenant) or use unscoped() for admin work"
        )
    tenant_id = ctx.tenant_id
    owner = session.info.setdefault(OWNER_KEY, tenant_id)
    if owner != tenant_id:
        raise CrossTenantError(
            f"this session belongs to tenant {owner!r} and was used under {tenant_id!r}; "
            "open one session per tenant (its identity map holds the first tenant's rows)"
        )
    return str(owner)


def _do_orm_execute(state: ORMExecuteState) -> None:
    tenant_id = session_tenant(state.session)
    if tenant_id is None:
        return
    stmt: Any = state.statement
    if unsafe_properties and state.is_orm_statement:
        _refuse_unsafe_properties(state)
    if state.is_relationship_load or state.is_column_load or is_identity_load(stmt):
        # built by the ORM from an entity already scoped; loader criteria below still apply
        state.statement = _with_criteria(stmt, tenant_id)
        return
    orm = state.is_orm_statement and not state.is_insert
    found = survey_cached(stmt, orm=orm)
    if found.raw_sql is not None and not _rls_active_for(state):
        raise CrossTenantError(
            f"{found.raw_sql} in a tenant-scoped session is refused: raw SQL cannot be "
            "filtered, and PostgreSQL row-level security is not verified active for this "
            "engine (see tenantkit.rls and `tenantkit db doctor`)"
        )
    if found.core:
        stmt = scope_core(stmt, tenant_id, orm=orm, keep=found.options)
    if state.is_orm_statement and isinstance(stmt, Update | Delete):
        stmt = guard_dml(stmt, tenant_id, state.parameters)
        if isinstance(state.parameters, list) and state.parameters:
            # bulk UPDATE by primary key takes extra WHERE only without session sync
            state.update_execution_options(synchronize_session=None)
    elif isinstance(stmt, Update) and state.parameters:
        guard_dml(stmt, tenant_id, state.parameters)  # refuses a tenant_id parameter
    if isinstance(stmt, Insert):
        stmt, params = check_insert(stmt, tenant_id, state.parameters)
        state.parameters = params
    for nested in found.inserts:
        if nested is not state.statement:
            check_insert(nested, tenant_id, state.parameters)
    if state.parameters:
        check_params(state.parameters, tenant_id)
    if state.is_orm_statement and (state.is_select or state.is_update or state.is_delete):
        stmt = _with_criteria(stmt, tenant_id)
    state.statement = stmt


def _refuse_unsafe_properties(state: ORMExecuteState) -> None:
    try:
        mappers = list(state.all_mappers)
    except AttributeError:  # SQLAlchemy cannot describe some columns, e.g. literal_column("*")
        columns = getattr(state.statement, "_raw_columns", ())
        mappers = [m for c in columns if (m := c._annotations.get("parentmapper")) is not None]
    for mapper in mappers:
        names = unsafe_properties.get(mapper)
        if names:
            raise CrossTenantError(
                f"{mapper.class_.__name__}.{names[0]} is a column_property whose subquery "
                "reads a tenant-scoped Table; no filter reaches it. Build it from model "
                "attributes (select(func.count(Task.id))...), not Model.__table__"
            )


def _with_criteria(stmt: Any, tenant_id: str) -> Any:
    return stmt.options(_criteria(tenant_id))


@functools.lru_cache(maxsize=4096)
def _criteria(tenant_id: str) -> Any:
    # tenant_id is computed outside and captured as a closure variable: SQLAlchemy
    # caches the lambda's SQL once and binds the id; the option itself is reused
    return with_loader_criteria(
        TenantScoped,
        lambda cls: cls.tenant_id == tenant_id,
        include_aliases=True,
    )


def _before_flush(session: Session, _ctx: Any, _instances: Any) -> None:
    scoped = [o for o in (*session.new, *session.dirty, *session.deleted) if _scoped(o)]
    if not scoped:
        return
    tenant_id = session_tenant(session)
    for obj in session.new:
        if not _scoped(obj):
            continue
        value = getattr(obj, TENANT_COLUMN)
        if value is None:
            if tenant_id is None:
                raise NoTenantError(
                    f"new {type(obj).__name__} inside unscoped() needs an explicit tenant_id"
                )
            setattr(obj, TENANT_COLUMN, tenant_id)
        elif tenant_id is not None and value != tenant_id:
            raise CrossTenantError(
                f"new {type(obj).__name__} names tenant {value!r}; "
                f"the session belongs to {tenant_id!r}"
            )
    if tenant_id is None:
        return
    unverified = session.info.get(UNVERIFIED_KEY)
    for obj in (*session.dirty, *session.deleted):
        if not _scoped(obj):
            continue
        hist = inspect(obj).attrs[TENANT_COLUMN].history
        owner = hist.deleted[0] if hist.deleted else getattr(obj, TENANT_COLUMN)
        if owner != tenant_id or (hist.added and hist.added[0] != tenant_id):
            raise CrossTenantError(
                f"{type(obj).__name__} of tenant {owner!r} cannot be changed by {tenant_id!r}"
            )
        if unverified is not None and (state := inspect(obj)) in unverified:
            _verify_attached(session, obj, tenant_id)
            unverified.discard(state)


def _detached_to_persistent(session: Session, instance: Any) -> None:
    # An object attached with an identity (add() of a detached object,
    # merge(load=False)) was not loaded under this session: its tenant_id is
    # whatever the caller set, while the flush's UPDATE/DELETE is keyed by
    # primary key alone. It is checked against the database before its first write.
    # States, not objects: a mapped dataclass with eq=True is unhashable.
    if _scoped(instance):
        session.info.setdefault(UNVERIFIED_KEY, weakref.WeakSet()).add(inspect(instance))


def _verify_attached(session: Session, obj: Any, tenant_id: str) -> None:
    state = inspect(obj)
    mapper = state.mapper
    keys = [mapper.get_property_by_column(c).class_attribute for c in mapper.primary_key]
    stmt = select(func.count()).select_from(mapper.class_)
    stmt = stmt.where(*(k == v for k, v in zip(keys, state.identity or (), strict=True)))
    with session.no_autoflush:
        found = session.scalar(stmt)
    if not found:
        raise CrossTenantError(
            f"{type(obj).__name__} {state.identity!r} was attached to this session but is "
            f"not a row of tenant {tenant_id!r}; load it through the session to change it"
        )


def _before_attach(session: Session, instance: Any) -> None:
    if not _scoped(instance) or session.info.get(UNSCOPED_KEY):
        return
    value = getattr(instance, TENANT_COLUMN, None)
    if value is None:
        return
    tenant_id = session_tenant(session)
    if value != tenant_id:
        raise CrossTenantError(
            f"{type(instance).__name__} of tenant {value!r} cannot join a session of {tenant_id!r}"
        )


def _scoped(obj: Any) -> bool:
    return isinstance(obj, TenantScoped)


def _after_begin(session: Session, _tx: SessionTransaction, connection: Connection) -> None:
    if connection.dialect.name != "postgresql":
        return
    tenant_id = ""  # unscoped or no tenant: RLS shows nothing and accepts no write
    if not session.info.get(UNSCOPED_KEY) and context.get_context() is not None:
        tenant_id = session_tenant(session) or ""  # claims the session, or refuses
    # is_local=true: the value ends with this transaction, so it never reaches the pool
    connection.execute(select(func.set_config(SETTING, tenant_id, True)))


def _rls_active_for(state: ORMExecuteState) -> bool:
    bind = state.session.get_bind(**state.bind_arguments)
    engine = bind.engine if isinstance(bind, Connection) else bind
    if engine.dialect.name != "postgresql":
        return False
    cached = _rls_verified.get(engine)
    if cached is None:
        from .rls import rls_active

        conn = state.session.connection(bind_arguments=dict(state.bind_arguments))
        cached = rls_active(conn, tables=mapped_scoped_tables())
        _rls_verified[engine] = cached
    return cached


def forget_rls_verification(engine: Engine | None = None) -> None:
    """Drop the cached "RLS is active" verdict for ``engine`` (or all engines)."""
    if engine is None:
        _rls_verified.clear()
    else:
        _rls_verified.pop(engine, None)


event.listen(TenantSession, "do_orm_execute", _do_orm_execute)
event.listen(TenantSession, "before_flush", _before_flush)
event.listen(TenantSession, "after_begin", _after_begin)
event.listen(TenantSession, "before_attach", _before_attach)
event.listen(TenantSession, "detached_to_persistent", _detached_to_persistent)
