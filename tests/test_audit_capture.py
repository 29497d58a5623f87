"""Automatic capture: one entry per ORM or bulk change, in the change's transaction."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from tenantkit import audit
from tenantkit.context import TenantContext, bind, bound_tenant, reset
from tenantkit.errors import ConfigurationError, NoTenantError, StorageError
from tenantkit.types import Identity
from test_audit_support import (  # noqa: F401  (fixtures)
    Contact,
    Model,
    Note,
    Project,
    Task,
    actions,
    engine_fixture,
    maker_fixture,
    rows,
)

Maker = sessionmaker[Any]


def test_orm_insert_update_delete_each_write_one_entry(engine: Engine, maker: Maker) -> None:
    """An ORM insert, update and delete each leave exactly one entry with before/after values."""
    with bound_tenant("acme"), maker() as session:
        project = Project(name="Apollo", description="moon")
        project.tenant_id = "acme"
        session.add(project)
        session.commit()
        project.name = "Artemis"
        session.commit()
        session.delete(project)
        session.commit()
    stored = rows(engine, "acme")
    assert [r["action"] for r in stored] == [
        "project.created",
        "project.updated",
        "project.deleted",
    ]
    created, updated, deleted = stored
    assert created["resource_type"] == "project"
    assert created["resource_id"] == str(project.id)
    assert created["changes"] == {
        "id": [None, project.id],
        "name": [None, "Apollo"],
        "description": [None, "moon"],
    }
    assert updated["changes"] == {"name": ["Apollo", "Artemis"]}
    assert deleted["changes"] == {
        "id": [project.id, None],
        "name": ["Artemis", None],
        "description": ["moon", None],
    }
    assert [r["seq"] for r in stored] == [1, 2, 3]


def test_rollback_leaves_no_entry(engine: Engine, maker: Maker) -> None:
    """A flushed change that is rolled back takes its entry with it."""
    with bound_tenant("acme"), maker() as session:
        session.add(Project(tenant_id="acme", name="Gone"))
        session.flush()
        session.rollback()
    assert actions(engine) == []


def test_expired_attribute_update_reads_the_old_value(engine: Engine, maker: Maker) -> None:
    """Setting an attribute the ORM never loaded still records the value it replaced."""
    with bound_tenant("acme"), maker() as session:
        session.add(Project(tenant_id="acme", name="Old"))
        session.commit()
        project = session.scalars(select(Project)).one()
        session.expire(project)
        project.name = "New"
        session.commit()
    assert rows(engine)[-1]["changes"] == {"name": ["Old", "New"]}


def test_unchanged_assignment_writes_nothing(engine: Engine, maker: Maker) -> None:
    """Assigning a field its current value is not a change."""
    with bound_tenant("acme"), maker() as session:
        project = Project(tenant_id="acme", name="Same")
        session.add(project)
        session.commit()
        project.name = "Same"
        session.commit()
    assert actions(engine) == ["project.created"]


def test_delete_orphan_is_captured(engine: Engine, maker: Maker) -> None:
    """A child deleted by delete-orphan cascade (never in session.deleted) is recorded."""
    with bound_tenant("acme"), maker() as session:
        project = Project(tenant_id="acme", name="P")
        project.tasks.append(Task(tenant_id="acme", title="t1"))
        session.add(project)
        session.commit()
        project.tasks.pop()
        session.commit()
    assert actions(engine) == ["project.created", "task.created", "task.deleted"]
    assert rows(engine)[-1]["changes"]["title"] == ["t1", None]


def test_bulk_update_writes_one_entry_per_row(engine: Engine, maker: Maker) -> None:
    """An ORM bulk UPDATE records every row it changed, with values before and after."""
    with bound_tenant("acme"), maker() as session:
        session.add_all([Project(tenant_id="acme", name=n) for n in ("a", "b", "c")])
        session.commit()
        result = session.execute(
            update(Project).where(Project.name.in_(["a", "b"])).values(description="bulk")
        )
        assert result.rowcount == 2
        session.commit()
    bulk = [r for r in rows(engine) if r["action"] == "project.updated"]
    assert len(bulk) == 2
    assert {r["changes"]["description"][1] for r in bulk} == {"bulk"}
    assert all(r["changes"] == {"description": [None, "bulk"]} for r in bulk)
    assert all(r["metadata"] == {"bulk": True} for r in bulk)


def test_bulk_update_with_bound_parameters(engine: Engine, maker: Maker) -> None:
    """Bound parameters in a bulk UPDATE's WHERE reach the pre-read too."""
    with bound_tenant("acme"), maker() as session:
        session.add_all([Project(tenant_id="acme", name=n) for n in ("a", "b")])
        session.commit()
        stmt = update(Project).where(Project.name == bindparam("old")).values(name="z")
        session.execute(stmt, {"old": "a"})
        session.commit()
    assert rows(engine)[-1]["changes"] == {"name": ["a", "z"]}


def test_bulk_update_by_primary_key(engine: Engine, maker: Maker) -> None:
    """ORM bulk UPDATE by primary key (a list of parameter sets) records each row."""
    with bound_tenant("acme"), maker() as session:
        session.add_all([Project(id=i, tenant_id="acme", name=f"p{i}") for i in (1, 2, 3)])
        session.commit()
        session.execute(update(Project), [{"id": 1, "name": "one"}, {"id": 3, "name": "three"}])
        session.commit()
    changed = [r for r in rows(engine) if r["action"] == "project.updated"]
    assert [(r["resource_id"], r["changes"]) for r in changed] == [
        ("1", {"name": ["p1", "one"]}),
        ("3", {"name": ["p3", "three"]}),
    ]


def test_bulk_delete_and_rollback(engine: Engine, maker: Maker) -> None:
    """A bulk DELETE records each row; rolled back, it records nothing."""
    with bound_tenant("acme"), maker() as session:
        session.add_all([Project(tenant_id="acme", name=n) for n in ("a", "b")])
        session.commit()
        session.execute(delete(Project))
        session.rollback()
        assert actions(engine) == ["project.created", "project.created"]
        session.execute(delete(Project).where(Project.name == "a"))
        session.commit()
    assert actions(engine) == ["project.created", "project.created", "project.deleted"]
    assert rows(engine)[-1]["changes"]["name"] == ["a", None]


def test_bulk_statement_matching_nothing_writes_nothing(engine: Engine, maker: Maker) -> None:
    """A bulk UPDATE that matches no row leaves no entry."""
    with bound_tenant("acme"), maker() as session:
        session.execute(update(Project).where(Project.name == "none").values(name="x"))
        session.commit()
    assert actions(engine) == []


def test_secrets_and_configured_fields_are_redacted(engine: Engine, maker: Maker) -> None:
    """Secret-looking and configured fields show as redacted; excluded fields never appear."""
    with bound_tenant("acme"), maker() as session:
        session.add(Project(tenant_id="acme", name="P", api_token="tk_live_123"))
        session.add(Contact(email="a@example.com", ssn="123-45", last_seen="today"))
        session.commit()
    project, contact = rows(engine)
    assert project["changes"]["api_token"] == [None, audit.REDACTED]
    assert contact["action"] == "person.created"
    assert contact["changes"]["ssn"] == [None, audit.REDACTED]
    assert "last_seen" not in contact["changes"]
    assert "tk_live_123" not in str(project) and "123-45" not in str(contact)


def test_install_wide_redaction(engine: Engine) -> None:
    """Fields named at install() are redacted on every model."""
    factory = sessionmaker(engine)
    audit.install(factory, redact=("description",), record_unscoped=False)
    try:
        with bound_tenant("acme"), factory() as session:
            session.add(Project(tenant_id="acme", name="P", description="private"))
            session.commit()
    finally:
        audit.uninstall(factory)
    assert rows(engine)[0]["changes"]["description"] == [None, audit.REDACTED]


def test_opted_out_model_is_not_captured(engine: Engine, maker: Maker) -> None:
    """A tenant-scoped model with ``__audit__ = False`` leaves no entries."""
    with bound_tenant("acme"), maker() as session:
        session.add(Note(tenant_id="acme", body="x"))
        session.commit()
    assert actions(engine) == []


def test_capture_without_a_tenant_fails_closed(engine: Engine, maker: Maker) -> None:
    """A change whose tenant is unknown raises and writes neither the row nor an entry."""
    with maker() as session:
        session.add(Contact(email="x@example.com"))
        with pytest.raises(NoTenantError):
            session.commit()
        session.rollback()
        assert session.scalars(select(Contact)).all() == []
    assert actions(engine) == []


def test_entry_carries_actor_and_request_details(engine: Engine, maker: Maker) -> None:
    """The actor, request id, client address and user agent come from the tenant context."""
    identity = Identity(tenant_id="acme", source="jwt", authenticated=True, subject="u1")
    token = bind(
        TenantContext(identity=identity, request_id="req-1", client="10.0.0.1", user_agent="curl")
    )
    try:
        with maker() as session:
            session.add(Project(tenant_id="acme", name="P"))
            session.commit()
    finally:
        reset(token)
    entry = rows(engine)[0]
    assert (entry["actor"], entry["request_id"], entry["client_ip"], entry["user_agent"]) == (
        "user:u1",
        "req-1",
        "10.0.0.1",
        "curl",
    )


def test_acting_as_overrides_the_actor(engine: Engine, maker: Maker) -> None:
    """Inside ``acting_as`` entries name the given actor."""
    with bound_tenant("acme"), audit.acting_as("admin:ops"), maker() as session:
        session.add(Project(tenant_id="acme", name="P"))
        session.commit()
    assert rows(engine)[0]["actor"] == "admin:ops"


def test_rows_of_two_tenants_go_to_their_own_chains(engine: Engine, maker: Maker) -> None:
    """Each row's entry lands in its own tenant's chain, numbered from 1."""
    with bound_tenant("acme"), maker() as session:
        session.add_all([Project(tenant_id="acme", name="a"), Project(tenant_id="beta", name="b")])
        session.commit()
    assert [(r["tenant_id"], r["seq"]) for r in rows(engine)] == [("acme", 1), ("beta", 1)]


def test_savepoint_rollback_removes_only_its_entries(engine: Engine, maker: Maker) -> None:
    """Rolling back a savepoint removes the entries written inside it, not the others."""
    with bound_tenant("acme"), maker() as session:
        session.add(Project(tenant_id="acme", name="kept"))
        session.flush()
        nested = session.begin_nested()
        session.add(Project(tenant_id="acme", name="dropped"))
        session.flush()
        nested.rollback()
        session.commit()
    stored = rows(engine)
    assert [r["changes"]["name"][1] for r in stored] == ["kept"]
    assert audit.verify(engine, "acme").ok


def test_install_twice_is_refused(engine: Engine, maker: Maker) -> None:
    """A second install on the same factory would double every entry, so it is refused."""
    with pytest.raises(ConfigurationError):
        audit.install(maker)


def test_install_rejects_unknown_targets() -> None:
    """install() names what it accepts when given something else."""
    with pytest.raises(ConfigurationError, match="sessionmaker"):
        audit.install(object())


def test_bulk_update_refuses_rows_it_did_not_read(
    engine: Engine, maker: Maker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the statement changed more rows than were read, it raises instead of under-recording."""
    from tenantkit import _audit_bulk

    with bound_tenant("acme"), maker() as session:
        session.add_all([Project(tenant_id="acme", name=n) for n in ("a", "b")])
        session.commit()
        real = _audit_bulk._check_rowcount
        monkeypatch.setattr(
            _audit_bulk,
            "_check_rowcount",
            lambda s, mapper, result, expected: real(s, mapper, result, expected - 1),
        )
        with pytest.raises(StorageError, match="changed 2 rows but 1"):
            session.execute(update(Project).values(description="x"))
        session.rollback()
    assert actions(engine) == ["project.created", "project.created"]


def test_bulk_insert_records_each_row_with_its_key(engine: Engine, maker: Maker) -> None:
    """An ORM bulk INSERT records every row with the key the database assigned."""
    with bound_tenant("acme"), maker() as session:
        session.execute(
            insert(Project), [{"tenant_id": "acme", "name": n} for n in ("a", "b", "c")]
        )
        session.commit()
        ids = session.scalars(select(Project.id).order_by(Project.id)).all()
    stored = rows(engine)
    assert [r["action"] for r in stored] == ["project.created"] * 3
    assert [r["resource_id"] for r in stored] == [str(i) for i in ids]
    assert [r["changes"]["name"] for r in stored] == [[None, "a"], [None, "b"], [None, "c"]]


def test_bulk_insert_rollback_and_single_row(engine: Engine, maker: Maker) -> None:
    """A rolled-back bulk INSERT leaves nothing; a one-row insert().values() is recorded."""
    with bound_tenant("acme"), maker() as session:
        session.execute(insert(Project), [{"tenant_id": "acme", "name": "gone"}])
        session.rollback()
        session.execute(insert(Project).values(tenant_id="acme", name="kept"))
        session.commit()
    assert [r["changes"]["name"] for r in rows(engine)] == [[None, "kept"]]


def test_bulk_insert_keeps_the_callers_returning(engine: Engine, maker: Maker) -> None:
    """A caller's RETURNING still yields exactly what the caller asked for."""
    with bound_tenant("acme"), maker() as session:
        result = session.execute(
            insert(Project).returning(Project.name, sort_by_parameter_order=True),
            [{"tenant_id": "acme", "name": "x"}, {"tenant_id": "acme", "name": "y"}],
        )
        assert result.all() == [("x",), ("y",)]
        created = session.scalars(
            insert(Project).returning(Project), [{"tenant_id": "acme", "name": "z"}]
        ).all()
        assert [p.name for p in created] == ["z"]
        session.commit()
    assert actions(engine) == ["project.created"] * 3


def test_upsert_is_recorded_as_upserted(engine: Engine, maker: Maker) -> None:
    """An ORM INSERT ... ON CONFLICT DO UPDATE records each row it wrote as upserted."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    dialect_insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    with bound_tenant("acme"), maker() as session:
        session.add(Project(id=1, tenant_id="acme", name="old"))
        session.commit()
        stmt = dialect_insert(Project).values(id=1, tenant_id="acme", name="new")
        session.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={"name": "new"}))
        session.commit()
    upserted = rows(engine)[-1]
    assert (upserted["action"], upserted["resource_id"]) == ("project.upserted", "1")
    assert upserted["changes"]["name"] == [None, "new"]


def test_oversized_request_details_are_clipped_not_fatal(engine: Engine, maker: Maker) -> None:
    """A client's huge request id or user agent is clipped; the change still commits."""
    identity = Identity(tenant_id="acme", source="jwt", subject="u" * 400)
    token = bind(TenantContext(identity=identity, request_id="r" * 1000, user_agent="a" * 5000))
    try:
        with maker() as session:
            session.add(Project(tenant_id="acme", name="P"))
            session.commit()
    finally:
        reset(token)
    entry = rows(engine)[0]
    assert (len(entry["request_id"]), len(entry["user_agent"]), len(entry["actor"])) == (
        128,
        512,
        255,
    )
    assert audit.verify(engine, "acme").ok


def test_foreign_key_set_through_a_relationship_keeps_its_old_value(
    engine: Engine, maker: Maker
) -> None:
    """Moving a child to another parent records the old and new parent id."""
    with bound_tenant("acme"), maker() as session:
        first, second = Project(tenant_id="acme", name="p1"), Project(tenant_id="acme", name="p2")
        task = Task(tenant_id="acme", title="t")
        first.tasks.append(task)
        session.add_all([first, second])
        session.commit()
        second.tasks.append(task)
        session.commit()
        ids = (first.id, second.id)
    moved = rows(engine)[-1]
    assert (moved["action"], moved["changes"]) == ("task.updated", {"project_id": list(ids)})


def test_deleting_an_expired_object_records_its_stored_values(engine: Engine, maker: Maker) -> None:
    """A deleted instance whose attributes were never loaded still records its values."""
    with bound_tenant("acme"), maker() as session:
        session.add(Project(tenant_id="acme", name="stored", description="d"))
        session.commit()
        project = session.scalars(select(Project)).one()
        session.expire(project)
        session.delete(project)
        session.commit()
    gone = rows(engine)[-1]
    assert gone["changes"]["name"] == ["stored", None]
    assert gone["changes"]["description"] == ["d", None]


def test_session_binding_only_the_app_models(engine: Engine) -> None:
    """Entries follow the changed model's bind, so binds={AppBase: engine} sessions work."""
    factory = sessionmaker(binds={Model: engine})
    audit.install(factory, record_unscoped=False)
    try:
        with bound_tenant("acme"), factory() as session:
            session.add(Project(tenant_id="acme", name="a"))
            session.flush()
            session.execute(update(Project).values(name="b"))
            audit.record(session, "user.login")
            session.commit()
    finally:
        audit.uninstall(factory)
    assert actions(engine) == ["project.created", "project.updated", "user.login"]


def test_install_on_a_parent_of_an_installed_class_is_refused(engine: Engine, maker: Maker) -> None:
    """Installing on a base class of an installed factory would double its entries."""
    with pytest.raises(ConfigurationError, match="already installed"):
        audit.install(maker.class_.__mro__[1])
