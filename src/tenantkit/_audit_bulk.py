"""Capture of ORM bulk statements (``do_orm_execute``) on audited models.

- ``update(Model)`` / ``delete(Model)``: the matching rows are read first
  (locked with ``FOR UPDATE`` on PostgreSQL), the statement runs, updated
  rows are read again; a statement that changed more or fewer rows than were
  read raises, so no bulk change goes unrecorded. By-primary-key bulk
  updates (a list of parameter sets) read exactly those rows.
- ``insert(Model)``: the statement gets ``RETURNING`` of the audited columns
  (appended to any the caller asked for, which are all the caller sees), so
  every inserted row is recorded with its database-assigned key. An upsert
  (``ON CONFLICT``) records ``<type>.upserted`` with the values written.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Result
from sqlalchemy.orm import Mapper, ORMExecuteState, Session
from sqlalchemy.sql.dml import Insert

from ._audit_capture import SKIP_OPTION, Capture, Change, Values, select_by_pk, unique, write
from ._audit_policy import is_audited
from .errors import ConfigurationError, StorageError


class BulkCapture:
    """The ``do_orm_execute`` listener of one ``install``."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture

    def on_execute(self, orm_state: ORMExecuteState) -> Result[Any] | None:
        if not (orm_state.is_update or orm_state.is_delete or orm_state.is_insert):
            return None
        mapper = orm_state.bind_mapper
        if mapper is None or orm_state.execution_options.get(SKIP_OPTION):
            return None
        if not is_audited(mapper.class_):
            return None
        if orm_state.is_insert:
            return self._insert(orm_state, mapper)
        return self._update_or_delete(orm_state, mapper)

    def _keys(self, mapper: Mapper[Any]) -> tuple[list[str], list[str]]:
        pk_keys = [mapper.get_property_by_column(col).key for col in mapper.primary_key]
        tenant_key = ["tenant_id"] if "tenant_id" in mapper.attrs else []
        fields = (key for key, _ in self.capture.policy.fields(mapper))
        return pk_keys, unique([*pk_keys, *tenant_key, *fields])

    def _update_or_delete(self, orm_state: ORMExecuteState, mapper: Mapper[Any]) -> Result[Any]:
        session = orm_state.session
        pk_keys, keys = self._keys(mapper)
        params = orm_state.parameters
        if isinstance(params, list):
            wanted = [tuple(p.get(key) for key in pk_keys) for p in params]
            rows = select_by_pk(session, mapper, keys, pk_keys, wanted)
        else:
            query = select(*(getattr(mapper.class_, key) for key in keys))
            where = orm_state.statement.whereclause  # type: ignore[attr-defined]
            if where is not None:
                query = query.where(where)
            query = query.with_for_update(of=mapper.class_)
            found = session.execute(query, params or {}, execution_options={SKIP_OPTION: True})
            rows = [dict(row) for row in found.mappings()]
        before = {tuple(row[key] for key in pk_keys): row for row in rows}
        result = orm_state.invoke_statement()
        if not isinstance(params, list):
            _check_rowcount(session, mapper, result, len(before))
        after: dict[tuple[Any, ...], Values] = {}
        if orm_state.is_update:
            fresh = select_by_pk(session, mapper, keys, pk_keys, list(before))
            after = {tuple(row[key] for key in pk_keys): row for row in fresh}
        verb = "updated" if orm_state.is_update else "deleted"
        changes: list[Change] = [
            (row.get("tenant_id"), pk, row, after.get(pk) if orm_state.is_update else None)
            for pk, row in before.items()
        ]
        write(session, mapper, self.capture.drafts(mapper, verb, changes, bulk=True))
        return result

    def _insert(self, orm_state: ORMExecuteState, mapper: Mapper[Any]) -> Result[Any]:
        session = orm_state.session
        stmt = orm_state.statement
        assert isinstance(stmt, Insert)
        many = isinstance(orm_state.parameters, list) and len(orm_state.parameters) > 1
        dialect = session.get_bind(mapper=mapper).dialect
        supported = (
            dialect.insert_executemany_returning_sort_by_parameter_order
            if many
            else dialect.insert_returning
        )
        if not supported:
            raise ConfigurationError(
                f"{dialect.name} cannot return inserted rows, so an ORM INSERT of the audited "
                f"{mapper.class_.__name__} cannot be recorded; use session.add_all()"
            )
        pk_keys, keys = self._keys(mapper)
        ours = [getattr(mapper.class_, key) for key in keys]
        statement = stmt.returning(*ours, sort_by_parameter_order=many)
        frozen = orm_state.invoke_statement(statement=statement).freeze()
        # Our columns come after any the caller asked for (an entity counts as one).
        theirs = len(frozen().keys()) - len(ours)
        rows = [dict(zip(keys, row[theirs:], strict=True)) for row in frozen()]
        upsert = getattr(stmt, "_post_values_clause", None) is not None
        changes: list[Change] = [
            (row.get("tenant_id"), tuple(row[key] for key in pk_keys), None, row) for row in rows
        ]
        verb = "upserted" if upsert else "created"
        write(session, mapper, self.capture.drafts(mapper, verb, changes, bulk=True))
        result = frozen()
        return result.columns(*range(theirs)) if theirs else result


def _check_rowcount(
    session: Session, mapper: Mapper[Any], result: Result[Any], expected: int
) -> None:
    bind = session.get_bind(mapper=mapper)
    if bind.dialect.name not in ("postgresql", "sqlite"):
        return
    count = getattr(result, "rowcount", -1)
    if isinstance(count, int) and count >= 0 and count != expected:
        raise StorageError(
            f"the statement changed {count} rows but {expected} were audited "
            "(rows changed concurrently); roll back and retry"
        )
