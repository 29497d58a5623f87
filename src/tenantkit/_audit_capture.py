"""Automatic capture of audited rows changed by ORM flushes (bulk statements: _audit_bulk).

Entries are appended on the session's own connection, inside its transaction:
a rollback takes them away with the change, a commit keeps both.

- ``before_update`` / ``before_delete`` (mapper events, acting only inside a
  flush of an installed session) read what the flush will need and cannot
  see afterwards: the values of rows about to be deleted, and old values the
  attribute history lacks (attributes set while expired, foreign keys the
  flush synchronises from relationships).
- ``after_flush`` turns new, dirty and deleted (including delete-orphan)
  instances into entries; primary keys are known by then.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import event, inspect, select, tuple_
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstanceState, Mapper, Session, UOWTransaction

from . import _audit_bus, _audit_chain
from ._audit_chain import Draft
from ._audit_policy import CapturePolicy, diff, is_audited, resource_id_of, resource_type_of
from ._audit_record import make_draft

SNAPSHOT_KEY = "tenantkit.audit.snapshots"
CAPTURE_KEY = "tenantkit.audit.capture"
SKIP_OPTION = "tenantkit_audit_skip"
PK_CHUNK = 500

Values = dict[str, Any]
# (tenant id or None for the bound one, primary key, values before, values after)
Change = tuple[str | None, tuple[Any, ...], Values | None, Values | None]


class Capture:
    """The flush listeners of one ``install``; holds the install-wide policy."""

    def __init__(self, policy: CapturePolicy) -> None:
        self.policy = policy
        listen_to_mappers()

    # -- ORM flush -----------------------------------------------------------

    def before_flush(self, session: Session, flush_context: UOWTransaction, instances: Any) -> None:
        session.info[CAPTURE_KEY] = self
        session.info[SNAPSHOT_KEY] = {}

    def before_update(self, session: Session, conn: Connection, state: InstanceState[Any]) -> None:
        """Read the stored values the attribute history lacks, before the row changes."""
        # Attributes set while expired, and foreign keys the flush itself
        # synchronised from a relationship, have no old value in their history.
        unknown = [
            key
            for key, _ in self.policy.fields(state.mapper)
            if (hist := state.attrs[key].history).added and not hist.deleted
        ]
        if unknown:
            snapshots = session.info.setdefault(SNAPSHOT_KEY, {})
            snapshots[state] = fetch_row(conn, state, unknown)

    def before_delete(self, session: Session, conn: Connection, state: InstanceState[Any]) -> None:
        """Keep the values of a row about to be deleted (orphans included)."""
        keys = [key for key, _ in self.policy.fields(state.mapper)]
        if "tenant_id" in state.mapper.attrs:
            keys.append("tenant_id")
        known: Values = {}
        unknown = []
        for key in keys:
            hist = state.attrs[key].history
            if hist.deleted:
                known[key] = hist.deleted[0]
            elif hist.unchanged:
                known[key] = hist.unchanged[0]
            elif key in state.dict and not hist.added:
                known[key] = state.dict[key]
            else:
                unknown.append(key)
        if unknown:
            known.update(fetch_row(conn, state, unknown))
        session.info.setdefault(SNAPSHOT_KEY, {})[state] = known

    def after_flush(self, session: Session, flush_context: UOWTransaction) -> None:
        session.info.pop(CAPTURE_KEY, None)
        snapshots: dict[InstanceState[Any], Values] = session.info.pop(SNAPSHOT_KEY, {})
        drafts: list[tuple[Mapper[Any], Draft]] = []

        def add(mapper: Mapper[Any], verb: str, change: Change) -> None:
            drafts.extend((mapper, draft) for draft in self.drafts(mapper, verb, [change]))

        for obj in session.new:
            state = inspect(obj)
            if is_audited(state.class_):
                after = dict(state.dict)
                add(
                    state.mapper,
                    "created",
                    (after.get("tenant_id"), pk_of(state.mapper, after), None, after),
                )
        for obj in session.dirty:
            state = inspect(obj)
            if is_audited(state.class_) and state.identity is not None:
                before, after = self._dirty_values(state, snapshots.get(state, {}))
                if after:
                    tenant = state.dict.get("tenant_id")
                    add(state.mapper, "updated", (tenant, tuple(state.identity), before, after))
        # flush_context.states also holds delete-orphans, which session.deleted
        # never lists; listonly states were only touched for relationships.
        for state, (is_delete, list_only) in flush_context.states.items():
            if is_delete and not list_only and is_audited(state.class_):
                before = snapshots.get(state) or dict(state.dict)
                pk = tuple(state.identity or pk_of(state.mapper, before))
                add(state.mapper, "deleted", (before.get("tenant_id"), pk, before, None))
        by_bind: dict[int, tuple[Mapper[Any], list[Draft]]] = {}
        for mapper, draft in drafts:
            bind = session.get_bind(mapper=mapper)
            by_bind.setdefault(id(bind), (mapper, []))[1].append(draft)
        for mapper, group in by_bind.values():
            write(session, mapper, group)

    def _dirty_values(self, state: InstanceState[Any], fetched: Values) -> tuple[Values, Values]:
        before: Values = {}
        after: Values = {}
        for key, _ in self.policy.fields(state.mapper):
            hist = state.attrs[key].history
            if not hist.added and not hist.deleted:
                continue
            after[key] = hist.added[0] if hist.added else None
            before[key] = hist.deleted[0] if hist.deleted else fetched.get(key)
        return before, after

    def drafts(
        self, mapper: Mapper[Any], verb: str, changes: Iterable[Change], *, bulk: bool = False
    ) -> list[Draft]:
        """Turn row changes of ``mapper`` into drafts; unchanged updates are dropped."""
        fields = self.policy.fields(mapper)
        if verb != "updated":
            # The entry carries the tenant; repeating it in changes adds nothing.
            fields = [(key, redacted) for key, redacted in fields if key != "tenant_id"]
        resource_type = resource_type_of(mapper.class_)
        drafts = []
        for tenant, pk, before, after in changes:
            changed = diff(fields, before, after)
            if verb == "updated" and not changed:
                continue
            drafts.append(
                make_draft(
                    f"{resource_type}.{verb}",
                    tenant_id=tenant,
                    resource_type=resource_type,
                    resource_id=resource_id_of(mapper, pk),
                    changes=changed,
                    metadata={"bulk": True} if bulk else None,
                )
            )
        return drafts


def write(session: Session, mapper: Mapper[Any], drafts: Sequence[Draft]) -> None:
    """Append ``drafts`` on the connection ``mapper``'s rows use; hold them for subscribers.

    The entries must share the changed rows' transaction, so they go where
    the model is bound, whatever the session binds tenantkit's own tables to.
    """
    if not drafts:
        return
    conn = session.connection(bind_arguments={"mapper": mapper})
    _audit_bus.add_pending(session, _audit_chain.append(conn, drafts))


def fetch_row(conn: Connection, state: InstanceState[Any], keys: list[str]) -> Values:
    """Read the stored values of ``keys`` for a persistent instance, with Core on ``conn``."""
    mapper = state.mapper
    assert state.identity is not None
    columns = [mapper.get_property(key).columns[0].label(key) for key in keys]
    where = [col == value for col, value in zip(mapper.primary_key, state.identity, strict=True)]
    query = select(*columns).select_from(mapper.persist_selectable).where(*where)
    row = conn.execute(query).mappings().first()
    return dict(row) if row is not None else {}


def _on_mapper_event(method: str) -> Any:
    def listener(mapper: Mapper[Any], conn: Connection, target: Any) -> None:
        state = inspect(target)
        session = state.session
        capture = session.info.get(CAPTURE_KEY) if session is not None else None
        if capture is not None and is_audited(state.class_):
            getattr(capture, method)(session, conn, state)

    return listener


_before_update = _on_mapper_event("before_update")
_before_delete = _on_mapper_event("before_delete")


def listen_to_mappers() -> None:
    """Register the row-level listeners once; they act only inside an installed flush."""
    if not event.contains(Mapper, "before_update", _before_update):
        event.listen(Mapper, "before_update", _before_update)
        event.listen(Mapper, "before_delete", _before_delete)


def select_by_pk(
    session: Session,
    mapper: Mapper[Any],
    keys: list[str],
    pk_keys: list[str],
    pks: Sequence[tuple[Any, ...]],
) -> list[Values]:
    """Read ``keys`` of the rows with primary keys ``pks`` (locked on PostgreSQL)."""
    cls = mapper.class_
    columns = [getattr(cls, key) for key in keys]
    pk_columns = [getattr(cls, key) for key in pk_keys]
    out: list[Values] = []
    for start in range(0, len(pks), PK_CHUNK):
        chunk = list(pks[start : start + PK_CHUNK])
        if len(pk_columns) == 1:
            where = pk_columns[0].in_([pk[0] for pk in chunk])
        else:
            where = tuple_(*pk_columns).in_(chunk)
        query = select(*columns).where(where).with_for_update(of=cls)
        found = session.execute(query, execution_options={SKIP_OPTION: True}).mappings()
        out.extend(dict(row) for row in found)
    return out


def pk_of(mapper: Mapper[Any], values: Values) -> tuple[Any, ...]:
    """Return the primary key found in ``values`` (attribute keys)."""
    return tuple(values.get(mapper.get_property_by_column(col).key) for col in mapper.primary_key)


def unique(keys: Iterable[str]) -> list[str]:
    """Return ``keys`` without repeats, in order."""
    return list(dict.fromkeys(keys))
