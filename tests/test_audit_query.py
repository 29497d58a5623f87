"""Query and export: filters, cursor pages, and one tenant never reading another's log."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tenantkit import audit
from tenantkit._audit_chain import compute_hash
from tenantkit.context import bound_tenant
from tenantkit.errors import NoTenantError, TenantMismatch, UnprocessableEntity
from tenantkit.types import Identity
from test_audit_support import (  # noqa: F401  (fixtures)
    FakeClock,
    clock_fixture,
    engine_fixture,
)


def _seed(engine: Engine, clock: FakeClock) -> None:
    log = audit.AuditLog(engine)
    for tenant in ("acme", "beta"):
        log.record("user.login", tenant_id=tenant, actor="user:ann")
        clock.advance(minutes=1)
        log.record(
            "project.created",
            tenant_id=tenant,
            actor="user:bob",
            resource_type="project",
            resource_id="p1",
        )
        clock.advance(minutes=1)
        log.record(
            "project.updated",
            tenant_id=tenant,
            actor="user:ann",
            resource_type="project",
            resource_id="p1",
        )
        clock.advance(minutes=1)
        log.record(
            "api_key.revoked",
            tenant_id=tenant,
            actor="api_key:k1",
            resource_type="api_key",
            resource_id="k1",
        )
        clock.advance(minutes=1)


def test_bound_tenant_reads_only_its_own_entries(engine: Engine, clock: FakeClock) -> None:
    """With a tenant bound, query and export return that tenant's entries and nothing else."""
    _seed(engine, clock)
    with bound_tenant("acme"), Session(engine) as session:
        page = audit.query(session)
        lines = list(audit.export_jsonl(session))
    assert {entry.tenant_id for entry in page.items} == {"acme"}
    assert len(page.items) == 4
    assert {json.loads(line)["tenant_id"] for line in lines} == {"acme"}


def test_naming_another_tenant_is_refused(engine: Engine, clock: FakeClock) -> None:
    """A tenant asking for another tenant's log gets a 403, for query and export alike."""
    _seed(engine, clock)
    with bound_tenant("acme"), Session(engine) as session:
        with pytest.raises(TenantMismatch) as caught:
            audit.query(session, "beta")
        with pytest.raises(TenantMismatch):
            list(audit.export_jsonl(session, "beta"))
    assert caught.value.status == 403


def test_platform_admin_may_name_a_tenant(engine: Engine, clock: FakeClock) -> None:
    """A superadmin identity reads the tenant it names."""
    _seed(engine, clock)
    admin = Identity(
        tenant_id="ops", source="jwt", authenticated=True, roles=frozenset({"superadmin"})
    )
    with bound_tenant(admin), Session(engine) as session:
        assert {e.tenant_id for e in audit.query(session, "beta").items} == {"beta"}


def test_reading_needs_a_tenant(engine: Engine) -> None:
    """With no tenant bound and none named, reading fails closed."""
    with Session(engine) as session, pytest.raises(NoTenantError):
        audit.query(session)


def test_filters(engine: Engine, clock: FakeClock) -> None:
    """Actor, action (exact or prefix), resource and time filters narrow the page."""
    start = clock.now
    _seed(engine, clock)
    log = audit.AuditLog(engine)

    def actions(**filters: object) -> list[str]:
        return [e.action for e in log.query("acme", **filters).items]

    assert actions(actor="user:ann") == ["project.updated", "user.login"]
    assert actions(action="project.created") == ["project.created"]
    assert actions(action="project.*") == ["project.updated", "project.created"]
    assert actions(resource_type="api_key", resource_id="k1") == ["api_key.revoked"]
    assert actions(start=start + timedelta(minutes=1), end=start + timedelta(minutes=3)) == [
        "project.updated",
        "project.created",
    ]


def test_action_prefix_treats_wildcards_literally(engine: Engine) -> None:
    """Only a trailing * is a wildcard; % and _ in the prefix match themselves."""
    log = audit.AuditLog(engine)
    log.record("a_b.x", tenant_id="acme")
    log.record("axb.x", tenant_id="acme")
    assert [e.action for e in log.query("acme", action="a_b*").items] == ["a_b.x"]


def test_cursor_pages_cover_everything_once(engine: Engine) -> None:
    """Following next_cursor walks every entry once, newest first, and ends with None."""
    log = audit.AuditLog(engine)
    for i in range(7):
        log.record("step", tenant_id="acme", metadata={"i": i})
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = log.query("acme", limit=3, cursor=cursor)
        seen.extend(entry.seq for entry in page.items)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert (seen, pages) == ([7, 6, 5, 4, 3, 2, 1], 3)


def test_bad_paging_input_is_a_422(engine: Engine) -> None:
    """Out-of-range limits, garbage cursors and another tenant's cursor are refused."""
    log = audit.AuditLog(engine)
    log.record("step", tenant_id="beta")
    log.record("step", tenant_id="beta")
    beta_cursor = log.query("beta", limit=1).next_cursor
    assert beta_cursor is not None
    for bad in ({"limit": 0}, {"limit": 201}, {"cursor": "%%%"}, {"cursor": beta_cursor}):
        with pytest.raises(UnprocessableEntity) as caught:
            log.query("acme", **bad)
        assert caught.value.status == 422
    with pytest.raises(UnprocessableEntity):
        log.query("acme", start=datetime(2026, 1, 1))


def test_export_lines_are_verifiable(engine: Engine) -> None:
    """Each exported line holds the entry and its hashes, which recompute and chain."""
    log = audit.AuditLog(engine)
    for i in range(3):
        log.record("step", tenant_id="acme", metadata={"i": i}, changes={"n": [i, i + 1]})
    lines = list(log.export_jsonl("acme"))
    assert all(line.endswith("\n") for line in lines)
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == [1, 2, 3]
    prev = audit.GENESIS_HASH
    for entry in entries:
        assert entry["prev_hash"] == prev
        assert compute_hash(entry) == entry["hash"]
        prev = entry["hash"]


def test_times_past_the_utc_calendar_are_a_422(engine: Engine) -> None:
    """An aware time that leaves years 1..9999 once in UTC is refused naming the field,
    not passed to the database to fail there as a driver error."""
    log = audit.AuditLog(engine)
    log.record("step", tenant_id="acme")
    late = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))
    early = datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    for name, value in (("start", late), ("end", early)):
        with pytest.raises(UnprocessableEntity) as caught:
            log.query("acme", **{name: value})
        assert caught.value.extra["field"] == name
        with pytest.raises(UnprocessableEntity) as caught:
            list(log.export_jsonl("acme", **{name: value}))
        assert caught.value.extra["field"] == name
