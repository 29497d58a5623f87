"""Subscribers: told about entries once their transaction has committed, never before.

Entries written through a session wait in ``session.info`` beside the
(sub)transaction that wrote them; a savepoint rollback drops its own, a commit
of the outermost transaction hands the rest to every subscriber. A subscriber
that raises is logged and skipped: the commit has already happened.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from ._audit_model import AuditEntry

log = logging.getLogger("tenantkit.audit")

Subscriber = Callable[[list[AuditEntry]], Any]
PENDING_KEY = "tenantkit.audit.pending"
LISTENING_KEY = "tenantkit.audit.listening"

_subscribers: list[Subscriber] = []
_lock = threading.Lock()


def subscribe(callback: Subscriber) -> Callable[[], None]:
    """Call ``callback(entries)`` after each commit that wrote entries; return an unsubscribe."""
    with _lock:
        _subscribers.append(callback)

    def unsubscribe() -> None:
        with _lock:
            if callback in _subscribers:
                _subscribers.remove(callback)

    return unsubscribe


def notify(entries: Sequence[AuditEntry]) -> None:
    """Hand committed ``entries`` to every subscriber; log, never raise, their errors."""
    if not entries:
        return
    with _lock:
        subscribers = list(_subscribers)
    for callback in subscribers:
        try:
            callback(list(entries))
        except Exception:
            log.exception("audit subscriber %r failed; the entries are committed", callback)


def add_pending(session: Session, entries: Sequence[AuditEntry]) -> None:
    """Remember ``entries`` until the session's transaction ends."""
    if not entries:
        return
    if not session.info.get(LISTENING_KEY):
        # Per session, so record() works on any session, installed or not;
        # a second listener on the class is harmless (the first pops the list).
        event.listen(session, "after_commit", after_commit)
        event.listen(session, "after_soft_rollback", after_soft_rollback)
        event.listen(session, "after_transaction_end", after_transaction_end)
        session.info[LISTENING_KEY] = True
    transaction = session.get_nested_transaction() or session.get_transaction()
    pending: list[tuple[SessionTransaction | None, AuditEntry]]
    pending = session.info.setdefault(PENDING_KEY, [])
    pending.extend((transaction, entry) for entry in entries)


def after_commit(session: Session) -> None:
    # A released savepoint also fires after_commit; only the outermost commit counts.
    if session.in_nested_transaction():
        return
    pending = session.info.pop(PENDING_KEY, [])
    notify([entry for _, entry in pending])


def after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    pending = session.info.get(PENDING_KEY)
    if not pending:
        return
    session.info[PENDING_KEY] = [
        (tx, entry) for tx, entry in pending if not _within(tx, previous_transaction)
    ]


def after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # Whatever is left when the outermost transaction ends (close without
    # commit) was never committed.
    if transaction.parent is None:
        session.info.pop(PENDING_KEY, None)


def _within(tx: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while tx is not None:
        if tx is ancestor:
            return True
        tx = tx.parent
    return False
