"""The hash chain: verify() finds edits, deletions and reorders; writers never fork it."""

from __future__ import annotations

import itertools
import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from tenantkit import audit
from tenantkit._audit_chain import compute_hash
from tenantkit._audit_model import HEADS, LOG
from tenantkit.context import bound_tenant
from tenantkit.errors import NoTenantError, ValidationError
from test_audit_support import engine_fixture, pg_engine_fixture, rows  # noqa: F401


def _write(engine: Engine, tenant: str, count: int) -> None:
    log = audit.AuditLog(engine)
    for i in range(count):
        log.record("thing.happened", tenant_id=tenant, metadata={"i": i})


def _swap(engine: Engine, tenant: str, a: int, b: int) -> None:
    with engine.begin() as conn:
        mine = LOG.c.tenant_id == tenant
        conn.execute(update(LOG).where(mine, LOG.c.seq == a).values(seq=-1))
        conn.execute(update(LOG).where(mine, LOG.c.seq == b).values(seq=a))
        conn.execute(update(LOG).where(mine, LOG.c.seq == -1).values(seq=b))


def test_intact_chain_verifies(engine: Engine) -> None:
    """An untouched chain verifies and reports its head."""
    _write(engine, "acme", 5)
    result = audit.verify(engine, "acme")
    assert result.ok and bool(result)
    assert (result.checked, result.last_seq) == (5, 5)
    assert result.last_hash == rows(engine)[-1]["hash"]


def test_empty_tenant_verifies(engine: Engine) -> None:
    """A tenant without entries has nothing to contradict."""
    assert audit.verify(engine, "nobody").ok


def test_each_hash_covers_the_entry_and_its_predecessor(engine: Engine) -> None:
    """Every stored hash is the SHA-256 of the entry and the previous hash."""
    _write(engine, "acme", 3)
    stored = rows(engine)
    assert stored[0]["prev_hash"] == audit.GENESIS_HASH
    for prev, entry in itertools.pairwise(stored):
        assert entry["prev_hash"] == prev["hash"]
    for entry in stored:
        assert compute_hash(entry) == entry["hash"]


def test_edited_entry_is_found(engine: Engine) -> None:
    """Changing a field of an entry is reported as an edit at that entry."""
    _write(engine, "acme", 5)
    with engine.begin() as conn:
        conn.execute(
            update(LOG).where(LOG.c.tenant_id == "acme", LOG.c.seq == 3).values(actor="someone")
        )
    result = audit.verify(engine, "acme")
    assert (result.ok, result.problem, result.seq) == (False, "edited", 3)
    assert result.last_seq == 2


def test_edit_with_recomputed_hash_is_found(engine: Engine) -> None:
    """An edit whose hash was recomputed breaks the next entry's link and is reported."""
    _write(engine, "acme", 5)
    entry = rows(engine)[1]
    forged = {**entry, "action": "nothing.happened"}
    forged["hash"] = compute_hash(forged)
    with engine.begin() as conn:
        conn.execute(
            update(LOG)
            .where(LOG.c.tenant_id == "acme", LOG.c.seq == 2)
            .values(action=forged["action"], hash=forged["hash"])
        )
    result = audit.verify(engine, "acme")
    assert (result.problem, result.seq) == ("edited", 2)


def test_deleted_entry_is_found(engine: Engine) -> None:
    """A missing entry in the middle is reported as deleted at its seq."""
    _write(engine, "acme", 5)
    with engine.begin() as conn:
        conn.execute(delete(LOG).where(LOG.c.tenant_id == "acme", LOG.c.seq == 2))
    result = audit.verify(engine, "acme")
    assert (result.problem, result.seq) == ("deleted", 2)


def test_deleted_last_entry_is_found(engine: Engine) -> None:
    """Removing the newest entry is caught against the chain head."""
    _write(engine, "acme", 4)
    with engine.begin() as conn:
        conn.execute(delete(LOG).where(LOG.c.tenant_id == "acme", LOG.c.seq == 4))
    result = audit.verify(engine, "acme")
    assert (result.problem, result.seq) == ("deleted", 4)


def test_deleted_and_renumbered_entries_are_found(engine: Engine) -> None:
    """Closing the gap after a deletion still breaks the chain."""
    _write(engine, "acme", 4)
    with engine.begin() as conn:
        mine = LOG.c.tenant_id == "acme"
        conn.execute(delete(LOG).where(mine, LOG.c.seq == 2))
        conn.execute(update(LOG).where(mine, LOG.c.seq == 3).values(seq=2))
        conn.execute(update(LOG).where(mine, LOG.c.seq == 4).values(seq=3))
        conn.execute(update(HEADS).where(HEADS.c.tenant_id == "acme").values(seq=3))
    result = audit.verify(engine, "acme")
    assert not result.ok and result.seq == 2


def test_swapped_entries_are_reported_as_reordered(engine: Engine) -> None:
    """Two entries that changed places are reported as reordered at the first position."""
    _write(engine, "acme", 5)
    _swap(engine, "acme", 2, 3)
    result = audit.verify(engine, "acme")
    assert (result.problem, result.seq) == ("reordered", 2)
    assert result.detail == "entry 3 was found at position 2"


def test_tampering_in_one_tenant_leaves_others_intact(engine: Engine) -> None:
    """Chains are per tenant: one tenant's damage does not fail another's verify."""
    _write(engine, "acme", 3)
    _write(engine, "beta", 3)
    _swap(engine, "acme", 1, 2)
    assert not audit.verify(engine, "acme").ok
    assert audit.verify(engine, "beta").ok


def test_verify_accepts_a_session(engine: Engine) -> None:
    """verify() reads through a Session's connection too."""
    _write(engine, "acme", 2)
    with Session(engine) as session:
        assert audit.verify(session, "acme").ok


def test_verify_rejects_a_malformed_tenant(engine: Engine) -> None:
    """A malformed tenant id is refused, never looked up."""
    with pytest.raises(ValidationError):
        audit.verify(engine, "Not A Tenant")


def test_record_without_tenant_fails_closed(engine: Engine) -> None:
    """An explicit event with no tenant bound or named raises."""
    with pytest.raises(NoTenantError), Session(engine) as session:
        audit.record(session, "user.login")
    with pytest.raises(NoTenantError):
        audit.AuditLog(engine).record("quota.exceeded")


def test_record_writes_in_the_session_transaction(engine: Engine) -> None:
    """record() commits and rolls back with the session it was given."""
    with bound_tenant("acme"), Session(engine) as session:
        audit.record(session, "user.login", actor="user:u1")
        session.rollback()
        entry = audit.record(session, "token.issued", metadata={"expires_in": 3600})
        session.commit()
    assert [r["action"] for r in rows(engine)] == ["token.issued"]
    assert (entry.seq, entry.metadata) == (1, {"expires_in": 3600})


def test_record_validates_its_input(engine: Engine) -> None:
    """A blank action or a malformed changes pair is a validation error."""
    with bound_tenant("acme"), Session(engine) as session:
        with pytest.raises(ValidationError):
            audit.record(session, "")
        with pytest.raises(ValidationError):
            audit.record(session, "x.y", changes={"a": [1, 2, 3]})


def _concurrent_writers(engine: Engine, tenant: str, threads: int, each: int) -> None:
    factory = sessionmaker(engine)
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(n: int) -> None:
        try:
            barrier.wait()
            with bound_tenant(tenant):
                for i in range(each):
                    with factory() as session:
                        audit.record(session, "job.step", metadata={"writer": n, "i": i})
                        session.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []


@pytest.mark.postgres
def test_concurrent_writers_on_postgres_leave_one_linear_chain(pg_engine: Engine) -> None:
    """Threads appending to one tenant at once produce seqs 1..n, each linked to the last."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    _concurrent_writers(pg_engine, tenant, threads=8, each=25)
    stored = rows(pg_engine, tenant)
    assert [r["seq"] for r in stored] == list(range(1, 201))
    assert len({r["prev_hash"] for r in stored}) == 200
    assert audit.verify(pg_engine, tenant).ok


def test_concurrent_writers_on_sqlite_leave_one_linear_chain(tmp_path: Any) -> None:
    """SQLite's single writer lock serialises appends the same way."""
    from tenantkit._db import make_engine

    eng = make_engine(f"sqlite:///{tmp_path}/chain.db")
    audit.create_tables(eng)
    try:
        _concurrent_writers(eng, "acme", threads=4, each=10)
        assert [r["seq"] for r in rows(eng)] == list(range(1, 41))
        assert audit.verify(eng, "acme").ok
    finally:
        eng.dispose()


def test_raw_sql_edit_is_found(engine: Engine) -> None:
    """Editing the stored JSON through raw SQL is caught like any other edit."""
    _write(engine, "acme", 2)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE tenantkit_audit_log SET metadata = :m WHERE tenant_id = 'acme' AND seq = 1"
            ),
            {"m": '{"i": 99}'},
        )
    assert audit.verify(engine, "acme").problem == "edited"


def test_anchors_catch_a_recomputed_chain(engine: Engine) -> None:
    """A rewrite that recomputes every later hash and the head still fails a published anchor."""
    _write(engine, "acme", 5)
    published = audit.verify(engine, "acme")
    stored = rows(engine)
    prev = stored[1]["hash"]
    with engine.begin() as conn:
        for entry in stored[2:]:
            forged = {**entry, "prev_hash": prev}
            if entry["seq"] == 3:
                forged["actor"] = "someone-else"
            forged["hash"] = prev = compute_hash(forged)
            conn.execute(
                update(LOG)
                .where(LOG.c.tenant_id == "acme", LOG.c.seq == entry["seq"])
                .values(actor=forged["actor"], prev_hash=forged["prev_hash"], hash=forged["hash"])
            )
        conn.execute(update(HEADS).where(HEADS.c.tenant_id == "acme").values(hash=prev))
    assert audit.verify(engine, "acme").ok  # without an anchor the rewrite is consistent
    anchored = audit.verify(engine, "acme", anchors={published.last_seq: published.last_hash})
    assert (anchored.ok, anchored.problem, anchored.seq) == (False, "edited", 5)


@pytest.mark.postgres
def test_concurrent_orm_changes_on_postgres_leave_one_linear_chain(pg_engine: Engine) -> None:
    """Threads inserting and bulk-updating audited rows of one tenant never fork its chain."""
    from test_audit_support import Project

    tenant = f"t-{uuid.uuid4().hex[:8]}"
    factory = sessionmaker(pg_engine)
    audit.install(factory, record_unscoped=False)
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def work(n: int) -> None:
        try:
            barrier.wait()
            with bound_tenant(tenant):
                for i in range(10):
                    with factory() as session:
                        session.add(Project(tenant_id=tenant, name=f"w{n}-{i}"))
                        session.commit()
                with factory() as session:
                    stmt = update(Project).where(Project.name.like(f"w{n}-%"))
                    session.execute(stmt.values(description=f"by {n}"))
                    session.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    finally:
        audit.uninstall(factory)
    assert errors == []
    stored = rows(pg_engine, tenant)
    assert [r["seq"] for r in stored] == list(range(1, 121))
    assert sum(r["action"] == "project.updated" for r in stored) == 60
    assert audit.verify(pg_engine, tenant).ok
