"""Appending to a tenant's hash chain: canonical JSON, SHA-256 and the locked head row.

Every entry's hash covers its canonical JSON (sorted keys, no spaces, UTF-8,
time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``) including ``seq`` and ``prev_hash``,
the hash of the tenant's previous entry (``GENESIS_HASH`` for the first).
Writers lock the tenant's row in ``tenantkit_audit_heads`` (``SELECT ... FOR
UPDATE`` on PostgreSQL; SQLite's single writer lock does the same), so two
transactions never append after the same entry: the chain cannot fork.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, inspect, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import UnboundExecutionError
from sqlalchemy.orm import Session

from . import _db
from ._audit_model import (
    ENTRY_FIELDS,
    GENESIS_HASH,
    HEADS,
    LOG,
    AuditEntry,
    AuditRow,
    format_time,
)
from .errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Draft:
    """An entry before it has a place in the chain (no seq, time or hashes yet)."""

    tenant_id: str
    actor: str
    action: str
    resource_type: str | None = None
    resource_id: str | None = None
    changes: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] | None = None
    request_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None


def canonical_json(fields: Mapping[str, Any]) -> bytes:
    """Return the bytes an entry's hash covers: every field but ``hash``, canonically."""
    payload = {name: fields[name] for name in ENTRY_FIELDS if name != "hash"}
    time = payload["time"]
    payload["time"] = format_time(time) if isinstance(time, datetime) else time
    text = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    # A JSON value may hold a lone surrogate (stored escaped as "\ud800");
    # surrogatepass hashes it and leaves every other string's bytes as UTF-8.
    return text.encode("utf-8", "surrogatepass")


def compute_hash(fields: Mapping[str, Any]) -> str:
    """Return the SHA-256 hex digest of an entry's canonical JSON."""
    return hashlib.sha256(canonical_json(fields)).hexdigest()


def entry_fields(entry: AuditEntry) -> dict[str, Any]:
    """Return an entry's fields by name, as ``compute_hash`` reads them."""
    return {name: getattr(entry, name) for name in ENTRY_FIELDS}


def append(conn: Connection, drafts: Sequence[Draft]) -> list[AuditEntry]:
    """Chain ``drafts`` onto their tenants' logs inside ``conn``'s transaction."""
    by_tenant: dict[str, list[Draft]] = {}
    for draft in drafts:
        by_tenant.setdefault(draft.tenant_id, []).append(draft)
    written: list[AuditEntry] = []
    # Lock heads in a fixed order so two multi-tenant writers cannot deadlock.
    for tenant_id in sorted(by_tenant):
        seq, prev_hash = _lock_head(conn, tenant_id)
        time = _db.utcnow()
        entries: list[AuditEntry] = []
        for draft in by_tenant[tenant_id]:
            seq += 1
            fields: dict[str, Any] = {
                "tenant_id": tenant_id,
                "seq": seq,
                "time": time,
                "actor": draft.actor,
                "action": draft.action,
                "resource_type": draft.resource_type,
                "resource_id": draft.resource_id,
                "changes": dict(draft.changes) if draft.changes is not None else None,
                "metadata": dict(draft.metadata) if draft.metadata is not None else None,
                "request_id": draft.request_id,
                "client_ip": draft.client_ip,
                "user_agent": draft.user_agent,
                "prev_hash": prev_hash,
            }
            fields["hash"] = prev_hash = compute_hash(fields)
            entries.append(AuditEntry(**fields))
        conn.execute(insert(LOG), [entry_fields(entry) for entry in entries])
        conn.execute(
            update(HEADS).where(HEADS.c.tenant_id == tenant_id).values(seq=seq, hash=prev_hash)
        )
        written.extend(entries)
    return written


def _lock_head(conn: Connection, tenant_id: str) -> tuple[int, str]:
    """Create the tenant's head if missing, lock it, and return its seq and hash."""
    values = {"tenant_id": tenant_id, "seq": 0, "hash": GENESIS_HASH}
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(pg_insert(HEADS).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        # A write first: SQLite takes its writer lock here, before the read.
        conn.execute(sqlite_insert(HEADS).values(values).on_conflict_do_nothing())
    query = select(HEADS.c.seq, HEADS.c.hash).where(HEADS.c.tenant_id == tenant_id)
    row = conn.execute(query.with_for_update()).first()
    if row is None:
        conn.execute(insert(HEADS).values(values))
        return 0, GENESIS_HASH
    return int(row.seq), str(row.hash)


def read_head(conn: Connection, tenant_id: str) -> tuple[int, str] | None:
    """Return the tenant's head (last seq and hash) without locking it."""
    row = conn.execute(
        select(HEADS.c.seq, HEADS.c.hash).where(HEADS.c.tenant_id == tenant_id)
    ).first()
    return None if row is None else (int(row.seq), str(row.hash))


Bind = Session | Connection | Engine


@contextmanager
def connection_for(bind: Bind, *, snapshot: bool = False) -> Iterator[Connection]:
    """Yield a connection for ``bind``: the session's own, the connection, or a new one.

    With ``snapshot``, a new PostgreSQL connection reads in one REPEATABLE READ
    snapshot, so a purge or writer running meanwhile cannot tear the reads.
    """
    if isinstance(bind, Session):
        try:
            conn = bind.connection(bind_arguments={"mapper": inspect(AuditRow)})
        except UnboundExecutionError as exc:
            raise ConfigurationError(
                "this session has no bind for tenantkit's audit tables: bind "
                "tenantkit._db.Base (or the audit tables) in its binds"
            ) from exc
        yield conn
    elif isinstance(bind, Connection):
        yield bind
    elif isinstance(bind, Engine):
        with bind.connect() as conn:
            if snapshot and conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            yield conn
    else:
        raise ConfigurationError(
            f"expected a Session, Connection or Engine, got {type(bind).__name__}"
        )
