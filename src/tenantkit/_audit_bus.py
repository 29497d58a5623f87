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

from sqlalchemy.orm import Session

from ._audit_model import AuditEntry
from ._caller_tx import defer

log = logging.getLogger("tenantkit.audit")

Subscriber = Callable[[list[AuditEntry]], Any]

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
    """Hold ``entries`` until the session's outermost transaction commits, then notify.

    Per session, so ``record()`` works on any session, installed or not; a
    savepoint rollback drops its own entries, a close without commit all.
    """
    for entry in entries:
        defer(session, notify, entry)
