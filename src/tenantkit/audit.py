"""The tamper-evident audit trail: captured row changes, explicit events, verify, retention.

``install(sessionmaker)`` records every insert, update and delete of audited
models (by default every ``TenantScoped`` model) in the same transaction;
``record(session, "user.login")`` writes events that are not rows. Entries
are chained per tenant by SHA-256 so ``verify`` finds an edited, deleted or
reordered entry; ``purge`` enforces retention and leaves a checkpoint;
``query`` / ``export_jsonl`` read one tenant's entries; ``subscribe`` hears of
committed entries. See docs/audit.md.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from . import _audit_bus, _audit_chain, scoping
from ._audit_bulk import BulkCapture
from ._audit_capture import Capture
from ._audit_denials import DenialRecorder
from ._audit_model import (
    AUDIT_TABLES,
    GENESIS_HASH,
    AuditCheckpoint,
    AuditEntry,
    AuditHead,
    AuditRow,
)
from ._audit_policy import REDACTED, CapturePolicy, audited, is_audited, is_secret_name
from ._audit_query import export_jsonl, query
from ._audit_record import acting_as, current_actor, make_draft, record
from ._audit_retention import PurgeResult, protect, purge
from ._audit_verify import VerifyResult, verify
from ._db import Base
from .errors import ConfigurationError, StorageError
from .types import Page

__all__ = [
    "GENESIS_HASH",
    "REDACTED",
    "AuditEntry",
    "AuditLog",
    "DenialRecorder",
    "Page",
    "PurgeResult",
    "VerifyResult",
    "acting_as",
    "arecord",
    "audited",
    "create_tables",
    "current_actor",
    "export_jsonl",
    "install",
    "is_audited",
    "is_secret_name",
    "log_unscoped",
    "protect",
    "purge",
    "query",
    "record",
    "subscribe",
    "uninstall",
    "verify",
]

subscribe = _audit_bus.subscribe
AUDIT_MODELS = (AuditRow, AuditHead, AuditCheckpoint)

_Installed = tuple[Capture, BulkCapture, Callable[[], None] | None]
_installed: weakref.WeakKeyDictionary[type[Session], _Installed] = weakref.WeakKeyDictionary()
# engine -> [hook, number of installs and log_unscoped() callers using it]
_unscoped_hooks: weakref.WeakKeyDictionary[Engine, list[Any]] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()


def install(
    target: Any,
    *,
    redact: Iterable[str] = (),
    exclude: Iterable[str] = (),
    record_unscoped: bool = True,
) -> None:
    """Capture changes of audited models made through ``target``'s sessions.

    ``target`` is a ``sessionmaker``, ``async_sessionmaker``, ``scoped_session``
    or ``Session`` subclass. ``redact`` / ``exclude`` name fields redacted or
    left out on every model. With ``record_unscoped`` and a sync ``Engine``
    bind, every ``scoping.unscoped()`` use is recorded (see ``log_unscoped``).
    """
    session_class = _session_class(target)
    policy = CapturePolicy(redact=frozenset(redact), exclude=frozenset(exclude))
    with _install_lock:
        overlapping = [
            klass
            for klass in list(_installed)
            if issubclass(session_class, klass) or issubclass(klass, session_class)
        ]
        if overlapping:
            raise ConfigurationError(
                f"audit capture is already installed on {overlapping[0].__name__}; install it "
                "once per session factory (a second install would write every entry twice)"
            )
        capture = Capture(policy)
        bulk = BulkCapture(capture)
        event.listen(session_class, "before_flush", capture.before_flush)
        event.listen(session_class, "after_flush", capture.after_flush)
        event.listen(session_class, "do_orm_execute", bulk.on_execute)
        factory = target.session_factory if isinstance(target, scoped_session) else target
        _bind_audit_tables(factory)
        bind = getattr(factory, "kw", {}).get("bind")
        remover = None
        if record_unscoped and isinstance(bind, Engine):
            remover = _log_unscoped(bind)
        _installed[session_class] = (capture, bulk, remover)


def _bind_audit_tables(factory: Any) -> None:
    """Give a factory that binds only the app's models a bind for the audit tables too.

    When every bind is one engine, record() and query() through its sessions
    then reach the audit tables on that engine.
    """
    kw = getattr(factory, "kw", None)
    if not isinstance(kw, dict) or kw.get("bind") is not None or not kw.get("binds"):
        return
    binds = dict(kw["binds"])
    if any(key in binds for key in (Base, *AUDIT_MODELS, *AUDIT_TABLES)):
        return
    engines = {getattr(value, "engine", value) for value in binds.values()}
    if len(engines) == 1:
        engine = engines.pop()
        binds.update({model: engine for model in AUDIT_MODELS})
        kw["binds"] = binds


def uninstall(target: Any) -> None:
    """Stop capturing for ``target`` (tests, reconfiguration)."""
    session_class = _session_class(target)
    with _install_lock:
        installed = _installed.pop(session_class, None)
    if installed is not None:
        capture, bulk, remover = installed
        event.remove(session_class, "before_flush", capture.before_flush)
        event.remove(session_class, "after_flush", capture.after_flush)
        event.remove(session_class, "do_orm_execute", bulk.on_execute)
        if remover is not None:
            remover()


def _session_class(target: Any) -> type[Session]:
    if isinstance(target, scoped_session):
        target = target.session_factory
    if isinstance(target, sessionmaker):
        return target.class_
    if isinstance(target, async_sessionmaker):
        sync_class = target.kw.get("sync_session_class") or Session
        if sync_class is Session:
            # Listening on Session itself would audit every session in the process.
            sync_class = type("AuditedSession", (Session,), {})
            target.kw["sync_session_class"] = sync_class
        return sync_class
    if isinstance(target, type) and issubclass(target, AsyncSession):
        return target.sync_session_class
    if isinstance(target, type) and issubclass(target, Session):
        return target
    raise ConfigurationError(
        "install() takes a sessionmaker, async_sessionmaker, scoped_session or Session "
        f"class, not {type(target).__name__}"
    )


def log_unscoped(bind: Engine) -> Callable[[], None]:
    """Record every ``scoping.unscoped()`` use through ``bind``; return a remover.

    The entry (action ``unscoped.used``, the reason in metadata) goes to the
    tenant the session belonged to, else the acting identity's tenant, and
    commits on its own: it stays even when the unscoped work rolls back.
    A failure to write it aborts the ``unscoped()`` block.
    """
    with _install_lock:
        return _log_unscoped(bind)


def _log_unscoped(bind: Engine) -> Callable[[], None]:
    registered = _unscoped_hooks.get(bind)
    if registered is None:
        audit_log = AuditLog(bind)

        def hook(unscoped_event: scoping.UnscopedEvent) -> None:
            engine = unscoped_event.engine
            if engine is not None and engine is not bind and engine.url != bind.url:
                return  # unscoped() on another database: its own install records it
            audit_log.record(
                "unscoped.used",
                tenant_id=unscoped_event.tenant_id or unscoped_event.identity.tenant_id,
                actor=unscoped_event.actor,
                request_id=unscoped_event.request_id,
                metadata={"reason": unscoped_event.reason, "scoped": unscoped_event.tenant_id},
            )

        scoping.on_unscoped(hook)
        registered = [hook, 0]
        _unscoped_hooks[bind] = registered
    registered[1] += 1
    removed = False

    def remover() -> None:
        # One hook per engine, shared by every install on it: the last remover removes it.
        nonlocal removed
        with _install_lock:
            if removed:
                return
            removed = True
            registered[1] -= 1
            if registered[1] == 0 and _unscoped_hooks.get(bind) is registered:
                del _unscoped_hooks[bind]
                scoping.remove_unscoped_hook(registered[0])

    return remover


async def arecord(session: AsyncSession, action: str, **kw: Any) -> AuditEntry:
    """Write an explicit event in an ``AsyncSession``'s transaction (see ``record``)."""
    return await session.run_sync(lambda sync: record(sync, action, **kw))


def create_tables(bind: Engine | Connection) -> None:
    """Create the audit tables if they do not exist."""
    Base.metadata.create_all(bind, tables=list(AUDIT_TABLES))


class AuditLog:
    """The audit trail reached through an engine, for code without an ORM session.

    Middleware records quota and policy denials with it; each ``record``
    commits on its own and then notifies subscribers.
    """

    def __init__(self, bind: Engine) -> None:
        if not isinstance(bind, Engine):
            raise ConfigurationError(f"AuditLog needs an Engine, got {type(bind).__name__}")
        self.bind = bind

    def record(
        self,
        action: str,
        *,
        tenant_id: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        changes: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        actor: str | None = None,
        request_id: str | None = None,
        client_ip: str | None = None,
        user_agent: str | None = None,
    ) -> AuditEntry:
        """Write and commit one explicit event; the tenant is the bound one unless given.

        Raises ``StorageError`` when the database refuses the write.
        """
        draft = make_draft(
            action,
            tenant_id=tenant_id,
            resource_type=resource_type,
            resource_id=resource_id,
            changes=changes,
            metadata=metadata,
            actor=actor,
            request_id=request_id,
            client_ip=client_ip,
            user_agent=user_agent,
        )
        try:
            with self.bind.begin() as conn:
                entries = _audit_chain.append(conn, [draft])
        except SQLAlchemyError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StorageError(f"could not write to the audit log: {first}") from exc
        _audit_bus.notify(entries)
        return entries[0]

    def verify(self, tenant_id: str, *, anchors: Mapping[int, str] | None = None) -> VerifyResult:
        """Verify ``tenant_id``'s chain (see ``verify``)."""
        return verify(self.bind, tenant_id, anchors=anchors)

    def query(self, tenant_id: str | None = None, **filters: Any) -> Page[AuditEntry]:
        """Return one page of entries (see ``query``)."""
        with self.bind.connect() as conn:
            return query(conn, tenant_id, **filters)

    def export_jsonl(self, tenant_id: str | None = None, **filters: Any) -> Iterator[str]:
        """Yield entries as JSON lines, oldest first (see ``export_jsonl``)."""
        with self.bind.connect() as conn:
            yield from export_jsonl(conn, tenant_id, **filters)

    def purge(
        self,
        *,
        now: datetime | None = None,
        default_days: int = 90,
        per_tenant: Mapping[str, int] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> PurgeResult:
        """Delete entries past retention (see ``purge``)."""
        return purge(
            self.bind, now=now, default_days=default_days, per_tenant=per_tenant, progress=progress
        )
