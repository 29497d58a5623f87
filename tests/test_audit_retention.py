"""Retention: purge removes old entries and leaves a checkpoint; PostgreSQL guards the log."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, ProgrammingError

from tenantkit import audit
from tenantkit._audit_model import CHECKPOINTS, LOG
from tenantkit._db import make_engine
from tenantkit.errors import ConfigurationError, ValidationError
from test_audit_support import (  # noqa: F401  (fixtures)
    FakeClock,
    clock_fixture,
    engine_fixture,
    pg_engine_fixture,
    rows,
)


def _history(engine: Engine, clock: FakeClock, tenant: str, days_ago: list[int]) -> None:
    """Write one entry per age (days before the clock's final time), oldest first."""
    final = clock.now
    log = audit.AuditLog(engine)
    for age in days_ago:
        clock.now = final - timedelta(days=age)
        log.record("thing.happened", tenant_id=tenant, metadata={"age": age})
    clock.now = final


def test_purge_removes_old_entries_and_verify_still_passes(
    engine: Engine, clock: FakeClock
) -> None:
    """Entries past 90 days go, a checkpoint stays, and the rest of the chain verifies."""
    _history(engine, clock, "acme", [120, 100, 95, 30, 1])
    result = audit.purge(engine, now=clock.now)
    assert (result.deleted, dict(result.per_tenant), dict(result.checkpoints)) == (
        3,
        {"acme": 3},
        {"acme": 3},
    )
    assert [r["seq"] for r in rows(engine)] == [4, 5]
    outcome = audit.verify(engine, "acme")
    assert outcome.ok and (outcome.start_seq, outcome.checked) == (3, 2)


def test_chain_continues_after_a_purge(engine: Engine, clock: FakeClock) -> None:
    """New entries after a purge extend the chain and still verify."""
    _history(engine, clock, "acme", [200, 150])
    audit.purge(engine, now=clock.now)
    assert rows(engine) == []
    assert audit.verify(engine, "acme").ok
    audit.AuditLog(engine).record("thing.happened", tenant_id="acme")
    assert [r["seq"] for r in rows(engine)] == [3]
    assert audit.verify(engine, "acme").ok


def test_purge_in_batches_reports_progress(engine: Engine, clock: FakeClock) -> None:
    """Progress is reported before the first batch and after each, up to the total."""
    _history(engine, clock, "acme", [100] * 5)
    calls: list[tuple[int, int]] = []
    audit.purge(engine, now=clock.now, progress=lambda d, t: calls.append((d, t)), batch_size=2)
    assert calls == [(0, 5), (2, 5), (4, 5), (5, 5)]
    with engine.connect() as conn:
        checkpoint = conn.execute(select(CHECKPOINTS)).one()
    assert (checkpoint.seq, checkpoint.purged_count) == (5, 5)


def test_per_tenant_retention_overrides_the_default(engine: Engine, clock: FakeClock) -> None:
    """A tenant's own period replaces the default for that tenant only."""
    _history(engine, clock, "acme", [40, 10])
    _history(engine, clock, "beta", [40, 10])
    result = audit.purge(engine, now=clock.now, default_days=90, per_tenant={"beta": 30})
    assert dict(result.per_tenant) == {"beta": 1}
    assert [(r["tenant_id"], r["seq"]) for r in rows(engine)] == [
        ("acme", 1),
        ("acme", 2),
        ("beta", 2),
    ]
    assert audit.verify(engine, "acme").ok and audit.verify(engine, "beta").ok


def test_purge_only_removes_a_prefix_of_the_chain(engine: Engine, clock: FakeClock) -> None:
    """An old-stamped entry after a kept one stays, so the chain has no hole."""
    _history(engine, clock, "acme", [100, 10, 100, 5])
    audit.purge(engine, now=clock.now)
    assert [r["seq"] for r in rows(engine)] == [2, 3, 4]
    assert audit.verify(engine, "acme").ok


def test_second_purge_accumulates_on_the_checkpoint(engine: Engine, clock: FakeClock) -> None:
    """A later purge moves the checkpoint on and the chain still verifies."""
    _history(engine, clock, "acme", [100, 50, 10])
    audit.purge(engine, now=clock.now)
    clock.advance(days=45)
    audit.purge(engine, now=clock.now)
    with engine.connect() as conn:
        checkpoint = conn.execute(select(CHECKPOINTS)).one()
    assert (checkpoint.seq, checkpoint.purged_count) == (2, 2)
    assert audit.verify(engine, "acme").ok


def test_tampering_after_a_purge_is_still_found(engine: Engine, clock: FakeClock) -> None:
    """Verification from the checkpoint still catches an edited survivor."""
    _history(engine, clock, "acme", [100, 10, 5])
    audit.purge(engine, now=clock.now)
    with engine.begin() as conn:
        conn.execute(update(LOG).where(LOG.c.seq == 2).values(action="x.y"))
    assert (audit.verify(engine, "acme").problem, audit.verify(engine, "acme").seq) == (
        "edited",
        2,
    )


def test_deleting_the_first_survivor_is_found(engine: Engine, clock: FakeClock) -> None:
    """Deleting the entry right after the checkpoint is a deletion, not a purge."""
    _history(engine, clock, "acme", [100, 10, 5])
    audit.purge(engine, now=clock.now)
    with engine.begin() as conn:
        conn.execute(delete(LOG).where(LOG.c.seq == 2))
    result = audit.verify(engine, "acme")
    assert (result.problem, result.seq) == ("deleted", 2)


def test_purge_rejects_bad_periods(engine: Engine) -> None:
    """Zero, negative or non-integer periods and malformed tenant ids are refused."""
    with pytest.raises(ConfigurationError):
        audit.purge(engine, default_days=0)
    with pytest.raises(ConfigurationError):
        audit.purge(engine, per_tenant={"acme": -1})
    with pytest.raises(ValidationError):
        audit.purge(engine, per_tenant={"Bad Id": 10})


def test_protect_needs_postgres(tmp_path: Path) -> None:
    """protect() explains that it needs PostgreSQL instead of doing nothing."""
    sqlite = make_engine(f"sqlite:///{tmp_path}/p.db")
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        audit.protect(sqlite, "app")
    sqlite.dispose()


@pytest.fixture
def app_role(pg_engine: Engine) -> Iterator[str]:
    """A fresh non-owner role (unique name), dropped with its privileges afterwards."""
    name = f"tk_audit_app_{uuid.uuid4().hex[:10]}"
    with pg_engine.begin() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar()
        conn.execute(text(f'CREATE ROLE "{name}" NOLOGIN'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{name}"'))
    yield name
    with pg_engine.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{name}"'))
        conn.execute(text(f'DROP ROLE "{name}"'))


def _as_role(pg_engine: Engine, role: str) -> Engine:
    """An engine on the same schema whose sessions run as ``role``."""
    with pg_engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar()
    return make_engine(
        pg_engine.url.render_as_string(hide_password=False),
        connect_args={"options": f"-csearch_path={schema} -crole={role}"},
    )


@pytest.mark.postgres
def test_app_role_cannot_update_or_delete_entries(pg_engine: Engine, app_role: str) -> None:
    """Under protect(), the application role may append and read but not UPDATE or DELETE."""
    audit.protect(pg_engine, app_role)
    audit.protect(pg_engine, app_role)  # idempotent
    app = _as_role(pg_engine, app_role)
    try:
        assert audit.AuditLog(app).record("user.login", tenant_id="acme").seq == 1
        assert audit.AuditLog(app).record("user.logout", tenant_id="acme").seq == 2
        for statement in (
            "UPDATE tenantkit_audit_log SET actor = 'x'",
            "DELETE FROM tenantkit_audit_log",
            "TRUNCATE tenantkit_audit_log",
            "UPDATE tenantkit_audit_checkpoints SET seq = 0",
            "INSERT INTO tenantkit_audit_checkpoints (tenant_id, seq, hash, purged_count,"
            " purged_at) VALUES ('acme', 9, 'x', 0, now())",
        ):
            with pytest.raises(ProgrammingError, match="permission denied"), app.begin() as conn:
                # The purge switch does not help a role without the privilege.
                conn.execute(text("SELECT set_config('tenantkit.audit_purge', 'on', true)"))
                conn.execute(text(statement))
        assert audit.verify(app, "acme").ok
    finally:
        app.dispose()


@pytest.mark.postgres
def test_owner_is_held_to_the_trigger_too(pg_engine: Engine, app_role: str) -> None:
    """Even the owner cannot UPDATE entries, nor DELETE them outside the retention job."""
    audit.protect(pg_engine, app_role)
    audit.AuditLog(pg_engine).record("user.login", tenant_id="acme")
    for statement in (
        "UPDATE tenantkit_audit_log SET actor = 'x'",
        "DELETE FROM tenantkit_audit_log",
        "UPDATE tenantkit_audit_heads SET seq = 0",
    ):
        with pytest.raises(DBAPIError, match="append-only"), pg_engine.begin() as conn:
            conn.execute(text(statement))
    assert audit.verify(pg_engine, "acme").ok


@pytest.mark.postgres
def test_retention_job_purges_a_protected_log(
    pg_engine: Engine, app_role: str, clock: FakeClock
) -> None:
    """purge() is the one path that may delete under protect(), and verify still passes."""
    audit.protect(pg_engine, app_role)
    _history(pg_engine, clock, "acme", [100, 1])
    assert audit.purge(pg_engine, now=clock.now).deleted == 1
    assert audit.verify(pg_engine, "acme").ok
