"""verify() catches a truncated tail even when the head was rolled back or removed with it."""

from __future__ import annotations

from sqlalchemy import delete, update
from sqlalchemy.engine import Engine

from tenantkit import audit
from tenantkit._audit_model import HEADS, LOG
from test_audit_support import engine_fixture, rows  # noqa: F401  (fixtures)


def _write(engine: Engine, tenant: str, count: int) -> None:
    log = audit.AuditLog(engine)
    for i in range(count):
        log.record("thing.happened", tenant_id=tenant, metadata={"i": i})


def _truncate(engine: Engine, tenant: str, keep: int, *, head: str) -> None:
    """Delete entries after ``keep``; roll the head back to ``keep`` or delete it."""
    kept = rows(engine)[keep - 1]
    with engine.begin() as conn:
        conn.execute(delete(LOG).where(LOG.c.tenant_id == tenant, LOG.c.seq > keep))
        mine = HEADS.c.tenant_id == tenant
        if head == "rolled back":
            conn.execute(update(HEADS).where(mine).values(seq=keep, hash=kept["hash"]))
        else:
            conn.execute(delete(HEADS).where(mine))


def test_an_anchor_past_a_truncated_tail_is_reported(engine: Engine) -> None:
    """A published anchor at seq 5 fails once entries 4-5 and the head were cut back to 3."""
    _write(engine, "acme", 5)
    published = audit.verify(engine, "acme")
    _truncate(engine, "acme", 3, head="rolled back")
    result = audit.verify(engine, "acme", anchors={published.last_seq: published.last_hash})
    assert (result.ok, result.problem, result.seq) == (False, "deleted", 4)


def test_entries_without_a_chain_head_are_reported(engine: Engine) -> None:
    """Entries whose head row is gone cannot prove their tail: verify says so."""
    _write(engine, "acme", 5)
    _truncate(engine, "acme", 3, head="deleted")
    result = audit.verify(engine, "acme")
    assert (result.ok, result.problem) == (False, "deleted")
    assert result.detail is not None and "head" in result.detail
