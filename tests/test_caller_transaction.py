"""``session=`` on the stores: writes join the caller's transaction, caches follow its commit.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from tests.stripe_local.dbs import our_tables, tenant_id

from tenantkit._db import make_engine
from tenantkit.apikeys import APIKeyRow, APIKeyStore
from tenantkit.context import bound_tenant
from tenantkit.errors import ConfigurationError, Conflict, TenantNotFound, Unauthorized
from tenantkit.tenants import MISS, TenantRow, TenantStore
from tenantkit.usage import UsageEvent, UsageRecorder
from test_review_support import BACKENDS, FakeClock, backend_engine

SECRET = "s" * 32


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    """An engine with the tenant, API key and usage tables, on SQLite or PostgreSQL."""
    tables = [TenantRow.__table__, APIKeyRow.__table__, *our_tables()]
    for engine in backend_engine(request, tmp_path, tables):
        for table in tables:
            table.create(engine)  # type: ignore[attr-defined]
        yield engine


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tenants(engine: Engine, clock: FakeClock) -> TenantStore:
    return TenantStore(engine, clock=clock)


@pytest.fixture
def keys(engine: Engine, clock: FakeClock) -> APIKeyStore:
    # No last-use writes: a verification must not wait on the open transaction's row lock.
    return APIKeyStore(engine, secret=SECRET, clock=clock, touch_interval_seconds=0)


def _stored_tenant(engine: Engine, tid: str) -> TenantRow | None:
    with Session(engine) as session:
        return session.get(TenantRow, tid)


def _key_rows(engine: Engine, tid: str) -> int:
    with Session(engine) as session:
        count = session.scalar(select(func.count()).where(APIKeyRow.tenant_id == tid))
        return int(count or 0)


def test_create_rolled_back_keeps_nothing_and_evicts_nothing(
    engine: Engine, tenants: TenantStore
) -> None:
    """A create in a rolled-back transaction leaves no row and the cached "unknown" in place."""
    tid = tenant_id()
    with pytest.raises(TenantNotFound):
        tenants.get(tid)  # cached as unknown
    with Session(engine) as session:
        created = tenants.create(id=tid, session=session)
        assert created.id == tid
        assert tenants.peek(tid) is None  # nothing published before the commit
        session.rollback()
    assert _stored_tenant(engine, tid) is None
    assert tenants.peek(tid) is None


def test_create_committed_is_seen_at_once_by_every_store(
    engine: Engine, tenants: TenantStore, clock: FakeClock
) -> None:
    """After the caller's commit every store in the process sees the new tenant."""
    tid = tenant_id()
    other = TenantStore(engine, clock=clock)
    with pytest.raises(TenantNotFound):
        other.get(tid)
    with Session(engine) as session, session.begin():
        tenants.create(id=tid, plan="pro", session=session)
    assert tenants.peek(tid).plan == "pro"  # type: ignore[union-attr]
    assert other.get(tid).plan == "pro"


def test_create_conflict_in_the_callers_transaction(engine: Engine, tenants: TenantStore) -> None:
    """A taken id is still a Conflict when the write is the caller's."""
    tid = tenant_id()
    tenants.create(id=tid)
    with Session(engine) as session, pytest.raises(Conflict):
        tenants.create(id=tid, session=session)


def test_update_rolled_back_leaves_the_cached_config(engine: Engine, tenants: TenantStore) -> None:
    """An update that rolls back changes neither the row nor any cache entry."""
    tid = tenant_id()
    before = tenants.create(id=tid, plan="free")
    with Session(engine) as session:
        after = tenants.update(tid, plan="pro", session=session)
        assert after.version == before.version + 1
        session.rollback()
    assert tenants.peek(tid) is before
    stored = _stored_tenant(engine, tid)
    assert stored is not None and (stored.plan, stored.version) == ("free", before.version)


def test_update_committed_replaces_what_others_read_meanwhile(
    engine: Engine, tenants: TenantStore, clock: FakeClock
) -> None:
    """Before the commit others read the old config; from the commit on, the new one."""
    tid = tenant_id()
    tenants.create(id=tid, plan="free")
    other = TenantStore(engine, clock=clock)
    with Session(engine) as session, session.begin():
        tenants.update(tid, plan="pro", session=session)
        other.invalidate(tid)
        assert other.get(tid).plan == "free"  # the committed state, now cached
    assert other.peek(tid) is MISS  # the commit dropped the stale copy
    assert other.get(tid).plan == "pro"
    assert tenants.peek(tid).plan == "pro"  # type: ignore[union-attr]


def test_update_conflict_in_the_callers_transaction_touches_no_cache(
    engine: Engine, tenants: TenantStore
) -> None:
    """A failed compare-and-set in the caller's transaction raises and leaves caches alone."""
    tid = tenant_id()
    before = tenants.create(id=tid)
    with Session(engine) as session, session.begin(), pytest.raises(Conflict):
        tenants.update(tid, expected_version=99, plan="pro", session=session)
    assert tenants.peek(tid) is before


def test_savepoint_rollback_drops_its_cache_updates(engine: Engine, tenants: TenantStore) -> None:
    """A change undone by a savepoint rollback is not published by the outer commit."""
    tid = tenant_id()
    before = tenants.create(id=tid, plan="free")
    with Session(engine) as session, session.begin():
        session.get(TenantRow, tid)  # start the outer transaction first
        savepoint = session.begin_nested()
        tenants.update(tid, plan="pro", session=session)
        savepoint.rollback()
    assert tenants.peek(tid) is before
    assert tenants.get(tid).plan == "free"


def test_released_savepoint_waits_for_the_outer_commit(
    engine: Engine, tenants: TenantStore
) -> None:
    """Releasing a savepoint is not a commit: an outer rollback still publishes nothing."""
    tid = tenant_id()
    before = tenants.create(id=tid, plan="free")
    with Session(engine) as session:
        session.get(TenantRow, tid)
        with session.begin_nested():
            tenants.update(tid, plan="pro", session=session)
        assert tenants.peek(tid) is before
        session.rollback()
    assert tenants.peek(tid) is before
    with Session(engine) as session, session.begin():
        session.get(TenantRow, tid)
        with session.begin_nested():
            tenants.update(tid, plan="pro", session=session)
    assert tenants.peek(tid).plan == "pro"  # type: ignore[union-attr]


def test_close_without_commit_publishes_nothing(engine: Engine, tenants: TenantStore) -> None:
    """A session closed without committing is a rollback: no cache changes."""
    tid = tenant_id()
    before = tenants.create(id=tid)
    session = Session(engine)
    tenants.update(tid, plan="pro", session=session)
    session.close()
    assert tenants.peek(tid) is before
    assert tenants.get(tid).plan == "free"


def test_delete_keys_stop_verifying_only_once_committed(
    engine: Engine, tenants: TenantStore, keys: APIKeyStore
) -> None:
    """A tenant deleted in the caller's transaction keeps its keys until the commit."""
    tid = tenant_id()
    config = tenants.create(id=tid)
    issued = keys.issue(tid, name="k")
    assert keys.verify(issued.key).tenant_id == tid
    with Session(engine) as session:
        assert tenants.delete(tid, session=session) == 1
        assert keys.verify(issued.key).tenant_id == tid
        assert tenants.peek(tid) is config
        session.rollback()
    assert keys.peek(issued.key) is not None and keys.peek(issued.key) is not MISS
    assert tenants.peek(tid) is config
    assert _key_rows(engine, tid) == 1
    with Session(engine) as session, session.begin():
        tenants.delete(tid, session=session)
        assert keys.verify(issued.key).tenant_id == tid
    with pytest.raises(Unauthorized):
        keys.verify(issued.key)
    with pytest.raises(TenantNotFound):
        tenants.get(tid)
    assert _key_rows(engine, tid) == 0


def test_delete_unknown_tenant_in_the_callers_transaction(
    engine: Engine, tenants: TenantStore
) -> None:
    """Deleting an unknown id with ``session`` raises ``TenantNotFound`` as without it."""
    with Session(engine) as session, pytest.raises(TenantNotFound):
        tenants.delete(tenant_id(), session=session)


def test_issue_rolled_back_never_verifies(engine: Engine, keys: APIKeyStore) -> None:
    """A key issued in a rolled-back transaction is not stored and does not verify."""
    tid = tenant_id()
    with Session(engine) as session:
        issued = keys.issue(tid, name="k", session=session)
        assert keys.peek(issued.key) is MISS
        session.rollback()
    with pytest.raises(Unauthorized):
        keys.verify(issued.key)
    assert _key_rows(engine, tid) == 0


def test_issue_committed_verifies_from_the_cache(engine: Engine, keys: APIKeyStore) -> None:
    """A key issued in the caller's committed transaction verifies at once, from the cache."""
    tid = tenant_id()
    with Session(engine) as session, session.begin():
        issued = keys.issue(tid, name="k", session=session)
    peeked = keys.peek(issued.key)
    assert peeked is not MISS and peeked is not None and peeked.id == issued.record.id


def test_revoke_takes_effect_only_once_committed(
    engine: Engine, keys: APIKeyStore, clock: FakeClock
) -> None:
    """A revoke rolled back leaves the key working; committed, it fails in every store."""
    tid = tenant_id()
    issued = keys.issue(tid, name="k")
    other = APIKeyStore(engine, secret=SECRET, clock=clock, touch_interval_seconds=0)
    other.verify(issued.key)
    with Session(engine) as session:
        record = keys.revoke(tid, issued.record.id, session=session)
        assert record.revoked
        assert keys.verify(issued.key).id == issued.record.id
        session.rollback()
    assert keys.verify(issued.key).id == issued.record.id
    assert other.peek(issued.key) is not MISS
    with Session(engine) as session, session.begin():
        keys.revoke(tid, issued.record.id, session=session)
    for store in (keys, other):
        with pytest.raises(Unauthorized):
            store.verify(issued.key)


def test_usage_record_joins_the_callers_transaction(engine: Engine) -> None:
    """A usage event recorded with ``session`` is kept only if the caller commits."""
    tid = tenant_id()
    recorder = UsageRecorder(lambda: Session(engine))

    def stored() -> int:
        with Session(engine) as session:
            query = select(func.count()).where(UsageEvent.tenant_id == tid)
            return int(session.scalar(query) or 0)

    with bound_tenant(tid):
        with Session(engine) as session:
            recorder.record("tokens", 5, idempotency_key="a", session=session)
            session.rollback()
        assert stored() == 0
        with Session(engine) as session, session.begin():
            first = recorder.record("tokens", 5, idempotency_key="a", session=session)
            again = recorder.record("tokens", 5, idempotency_key="a", session=session)
        assert (first.duplicate, again.duplicate, again.id) == (False, True, first.id)
    assert stored() == 1


def test_session_on_another_database_is_refused(
    tenants: TenantStore, keys: APIKeyStore, tmp_path: Any
) -> None:
    """A session bound to another database is a configuration error, not a silent misroute."""
    elsewhere = make_engine(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    try:
        with Session(elsewhere) as session:
            with pytest.raises(ConfigurationError):
                tenants.create(id=tenant_id(), session=session)
            with pytest.raises(ConfigurationError):
                keys.issue(tenant_id(), name="k", session=session)
    finally:
        elsewhere.dispose()
