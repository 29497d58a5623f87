"""Writes in the caller's transaction: ``session=`` on the stores, and work after its commit.

A store method given ``session=`` (a ``Session`` on the store's database)
writes through it and does not commit: the caller commits or rolls back, so
the change and, say, its audit entry land together or not at all. What the
store does after a write of its own (dropping cache entries, caching the new
value) then waits for the caller's commit: ``when_committed`` runs it after
the outermost transaction commits, drops it when the transaction (or the
savepoint it was registered in) rolls back, and drops it when the session is
closed without a commit. So a rolled-back change never touches a cache, and
a committed one is seen at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, SessionTransaction

from .errors import ConfigurationError

__all__ = ["defer", "when_committed", "write_session"]

log = logging.getLogger("tenantkit")

PENDING_KEY = "tenantkit.after_commit"
LISTENING_KEY = "tenantkit.after_commit.listening"

Callback = Callable[[], None]


@contextmanager
def write_session(engine: Engine, session: Session | None, *, mapper: Any) -> Iterator[Session]:
    """Yield ``session`` (checked to reach ``engine``'s database) or a new one that commits."""
    if session is None:
        with Session(engine) as own, own.begin():
            yield own
        return
    if not isinstance(session, Session):
        raise ConfigurationError(
            f"session= takes a sqlalchemy.orm.Session, not {type(session).__name__} "
            "(for an AsyncSession, pass its sync_session inside run_sync)"
        )
    bind = session.get_bind(mapper=mapper)
    bound = bind.engine if isinstance(bind, Connection) else bind
    if not _same_database(bound, engine):
        raise ConfigurationError(
            "session= must be a session on the store's own database "
            f"({engine.url.render_as_string()}), not {bound.url.render_as_string()}"
        )
    yield session


def when_committed(session: Session | None, callback: Callback) -> None:
    """Run ``callback`` now without a caller's session, else once its transaction commits."""
    if session is None:
        callback()
        return
    defer(session, _run_callbacks, callback)


def defer(session: Session, flush: Callable[[list[Any]], None], item: Any) -> None:
    """Hold ``item`` until ``session``'s outermost transaction commits, then ``flush`` it.

    At the commit each ``flush`` is called once with its items in the order
    they were deferred (so the audit bus hands one commit's entries over in
    one list). Items deferred in a savepoint that rolls back are dropped, and
    so is everything when the session ends without a commit.
    """
    if not session.info.get(LISTENING_KEY):
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_soft_rollback", _after_soft_rollback)
        event.listen(session, "after_transaction_end", _after_transaction_end)
        session.info[LISTENING_KEY] = True
    transaction = session.get_nested_transaction() or session.get_transaction()
    pending: list[tuple[SessionTransaction | None, Callable[[list[Any]], None], Any]]
    pending = session.info.setdefault(PENDING_KEY, [])
    pending.append((transaction, flush, item))


def _run_callbacks(callbacks: list[Callback]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:  # the commit has happened; the cache converges within its TTL
            log.exception("post-commit cache update %r failed", callback)


def _same_database(bind: Engine, engine: Engine) -> bool:
    if bind is engine:
        return True
    # Two engines on one database (say, the owner's and the app role's) are fine.
    a, b = bind.url, engine.url
    return (a.get_backend_name(), a.host, a.port, a.database) == (
        b.get_backend_name(),
        b.host,
        b.port,
        b.database,
    ) and a.database not in (None, "", ":memory:")


def _after_commit(session: Session) -> None:
    # A released savepoint fires after_commit too; only the outermost commit counts.
    if session.in_nested_transaction():
        return
    batches: dict[Callable[[list[Any]], None], list[Any]] = {}
    for _, flush, item in session.info.pop(PENDING_KEY, []):
        batches.setdefault(flush, []).append(item)
    for flush, items in batches.items():
        flush(items)


def _after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    pending = session.info.get(PENDING_KEY)
    if pending:
        session.info[PENDING_KEY] = [
            entry for entry in pending if not _within(entry[0], previous_transaction)
        ]


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # Whatever is left when the outermost transaction ends without a commit never happened.
    if transaction.parent is None:
        session.info.pop(PENDING_KEY, None)


def _within(tx: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while tx is not None:
        if tx is ancestor:
            return True
        tx = tx.parent
    return False
