"""doctor names each misconfiguration of row-level security; a correct setup is clean."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, text
from sqlalchemy.engine import URL, Engine

from tenantkit import _cli_db
from tenantkit._db import make_engine
from tenantkit.doctor import (
    MATERIALIZED_VIEW,
    MISSING_TENANT_INDEX,
    NO_SCOPED_TABLES,
    NOT_POSTGRESQL,
    POLICY_MISSING,
    POLICY_UNSAFE,
    RLS_DISABLED,
    RLS_NOT_FORCED,
    ROLE_BYPASSRLS,
    ROLE_OWNS_TABLE,
    ROLE_SUPERUSER,
    SECURITY_DEFINER_FUNCTION,
    SECURITY_DEFINER_VIEW,
    TABLE_MISSING,
    Problem,
    doctor,
)
from tenantkit.rls import apply_rls
from tenantkit.scoping import tenant_column
from tenantkit.testing import temporary_app_role


@dataclass
class Setup:
    owner: Engine
    app: Engine
    metadata: MetaData
    table: str
    role: str

    def owner_sql(self, *statements: str) -> None:
        with self.owner.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))

    def codes(self) -> set[tuple[str, str]]:
        return {(p.code, p.object) for p in doctor(self.app, self.metadata)}


def _metadata(name: str, *, index: bool = True) -> MetaData:
    metadata = MetaData()
    Table(
        name,
        metadata,
        Column("id", Integer, primary_key=True),
        Column("body", String(20)),
        tenant_column(index=index),
    )
    return metadata


@pytest.fixture(scope="module")
def owner(postgres_url: URL) -> Iterator[Engine]:
    engine = create_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def make_setup(owner: Engine, postgres_url: URL) -> Iterator[Callable[..., Setup]]:
    made: list[tuple[MetaData, Engine, object]] = []

    def make(*, index: bool = True, rls: bool = True) -> Setup:
        name = f"dr_{uuid.uuid4().hex[:10]}"
        metadata = _metadata(name, index=index)
        metadata.create_all(owner)
        if rls:
            apply_rls(owner, metadata)
        role_cm = temporary_app_role(owner, metadata)
        role = role_cm.__enter__()
        app = create_engine(postgres_url.set(username=role))
        made.append((metadata, app, role_cm))
        return Setup(owner, app, metadata, name, role)

    yield make
    for metadata, app, role_cm in made:
        app.dispose()
        with owner.begin() as conn:
            for table in metadata.sorted_tables:
                conn.execute(text(f"DROP TABLE IF EXISTS {table.name} CASCADE"))
        role_cm.__exit__(None, None, None)  # type: ignore[attr-defined]


def test_correct_setup_is_clean(make_setup: Callable[..., Setup]) -> None:
    """Forced RLS, the policy, a tenant_id index and a non-owner role: no problem."""
    assert make_setup().codes() == set()


def test_rls_disabled(make_setup: Callable[..., Setup]) -> None:
    """A scoped table with RLS off is named rls-disabled."""
    s = make_setup()
    s.owner_sql(f"ALTER TABLE {s.table} DISABLE ROW LEVEL SECURITY")
    assert s.codes() == {(RLS_DISABLED, s.table)}


def test_rls_not_forced(make_setup: Callable[..., Setup]) -> None:
    """A scoped table without FORCE is named rls-not-forced."""
    s = make_setup()
    s.owner_sql(f"ALTER TABLE {s.table} NO FORCE ROW LEVEL SECURITY")
    assert s.codes() == {(RLS_NOT_FORCED, s.table)}


def test_policy_missing(make_setup: Callable[..., Setup]) -> None:
    """A scoped table whose tenant policy was dropped is named policy-missing."""
    s = make_setup()
    s.owner_sql(f"DROP POLICY tenantkit_tenant_isolation ON {s.table}")
    assert s.codes() == {(POLICY_MISSING, s.table)}


def test_policy_with_or_is_not_the_tenant_policy(make_setup: Callable[..., Setup]) -> None:
    """A policy that ORs anything into the predicate does not count as the tenant policy."""
    s = make_setup()
    s.owner_sql(
        f"DROP POLICY tenantkit_tenant_isolation ON {s.table}",
        f"CREATE POLICY loose ON {s.table} USING (tenant_id = "
        "nullif((SELECT current_setting('app.tenant_id', true)), '') OR id > 0)",
    )
    assert s.codes() == {(POLICY_MISSING, s.table), (POLICY_UNSAFE, f"{s.table}.loose")}


def test_extra_permissive_policy(make_setup: Callable[..., Setup]) -> None:
    """An extra permissive policy widens access and is named policy-unsafe."""
    s = make_setup()
    s.owner_sql(f"CREATE POLICY everyone ON {s.table} FOR SELECT USING (true)")
    assert s.codes() == {(POLICY_UNSAFE, f"{s.table}.everyone")}


def test_superuser_role(make_setup: Callable[..., Setup]) -> None:
    """Connecting as a superuser (here the owner) is named role-superuser."""
    s = make_setup()
    codes = {p.code for p in doctor(s.owner, s.metadata)}
    assert {ROLE_SUPERUSER, ROLE_OWNS_TABLE} <= codes


def test_bypassrls_role(make_setup: Callable[..., Setup]) -> None:
    """A role with BYPASSRLS is named role-bypassrls."""
    s = make_setup()
    s.owner_sql(f"ALTER ROLE {s.role} BYPASSRLS")
    assert s.codes() == {(ROLE_BYPASSRLS, s.role)}


def test_role_owns_table(make_setup: Callable[..., Setup]) -> None:
    """A connecting role that owns a scoped table is named role-owns-table."""
    s = make_setup()
    s.owner_sql(f"ALTER TABLE {s.table} OWNER TO {s.role}")
    assert s.codes() == {(ROLE_OWNS_TABLE, s.table)}


def test_security_definer_view(make_setup: Callable[..., Setup]) -> None:
    """A plain view (owner's rights) over a scoped table is named; security_invoker fixes it."""
    s = make_setup()
    s.owner_sql(
        f"CREATE VIEW {s.table}_v AS SELECT * FROM {s.table}",
        f"CREATE VIEW {s.table}_vv AS SELECT id FROM {s.table}_v",
    )
    assert s.codes() == {
        (SECURITY_DEFINER_VIEW, f"{s.table}_v"),
        (SECURITY_DEFINER_VIEW, f"{s.table}_vv"),
    }
    s.owner_sql(
        f"ALTER VIEW {s.table}_v SET (security_invoker = true)",
        f"ALTER VIEW {s.table}_vv SET (security_invoker = on)",
    )
    assert s.codes() == set()


def test_materialized_view(make_setup: Callable[..., Setup]) -> None:
    """A materialized view copies every tenant's rows and is named."""
    s = make_setup()
    s.owner_sql(f"CREATE MATERIALIZED VIEW {s.table}_mv AS SELECT * FROM {s.table}")
    assert s.codes() == {(MATERIALIZED_VIEW, f"{s.table}_mv")}


def test_security_definer_function(make_setup: Callable[..., Setup]) -> None:
    """A SECURITY DEFINER function reading a scoped table is named."""
    s = make_setup()
    s.owner_sql(
        f"CREATE FUNCTION {s.table}_count() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
        f"AS 'SELECT count(*) FROM {s.table}'"
    )
    assert s.codes() == {(SECURITY_DEFINER_FUNCTION, f"{s.table}_count()")}


def test_missing_tenant_index(make_setup: Callable[..., Setup]) -> None:
    """A scoped table without an index led by tenant_id is named."""
    s = make_setup(index=False)
    assert s.codes() == {(MISSING_TENANT_INDEX, s.table)}


def test_table_missing(make_setup: Callable[..., Setup]) -> None:
    """A scoped table of the metadata that is not in the database is named."""
    s = make_setup()
    metadata = _metadata("dr_absent")
    assert [p.code for p in doctor(s.app, metadata)] == [TABLE_MISSING]


def test_not_postgresql_and_empty_metadata(make_setup: Callable[..., Setup]) -> None:
    """SQLite gets not-postgresql; metadata with no scoped table gets no-scoped-tables."""
    engine = make_engine("sqlite://")
    assert [p.code for p in doctor(engine, MetaData())] == [NOT_POSTGRESQL]
    engine.dispose()
    assert [p.code for p in doctor(make_setup().app, MetaData())] == [NO_SCOPED_TABLES]


def test_problem_renders() -> None:
    """A Problem prints as code: object: message and exposes .table."""
    problem = Problem("rls-disabled", "docs", "turn it on")
    assert (str(problem), problem.table) == ("rls-disabled: docs: turn it on", "docs")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tenantkit")
    _cli_db.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def metadata_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], str]]:
    def write(table: str) -> str:
        module = f"tkmeta_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{module}.py").write_text(
            "from sqlalchemy import Column, Integer, MetaData, Table\n"
            "from tenantkit.scoping import tenant_column\n"
            "metadata = MetaData()\n"
            f"Table({table!r}, metadata, Column('id', Integer, primary_key=True), "
            "tenant_column())\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        return f"{module}:metadata"

    yield write
    for name in [m for m in sys.modules if m.startswith("tkmeta_")]:
        del sys.modules[name]


def test_cli_doctor_and_apply_rls(
    owner: Engine,
    make_setup: Callable[..., Setup],
    metadata_module: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`db doctor` exits 1 naming problems, `db apply-rls` fixes them, then doctor exits 0."""
    s = make_setup(rls=False)
    spec = metadata_module(s.table)
    app_url = s.app.url.render_as_string(hide_password=False)
    owner_url = owner.url.render_as_string(hide_password=False)
    assert _cli(["db", "doctor", "--metadata", spec, "--database-url", app_url]) == 1
    out = capsys.readouterr().out
    assert f"{RLS_DISABLED}\t{s.table}" in out and f"{POLICY_MISSING}\t{s.table}" in out
    assert _cli(["db", "apply-rls", "--metadata", spec, "--database-url", owner_url]) == 0
    assert _cli(["db", "doctor", "--metadata", spec, "--database-url", app_url]) == 0
    assert "clean" in capsys.readouterr().out


def test_cli_dry_run_and_errors(
    metadata_module: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--dry-run prints the DDL; a bad --metadata or a missing URL exits 2 with a message."""
    spec = metadata_module("dr_dry")
    assert _cli(["db", "apply-rls", "--metadata", spec, "--dry-run", "--app-role", "app"]) == 0
    out = capsys.readouterr().out
    assert "ALTER TABLE dr_dry FORCE ROW LEVEL SECURITY;" in out and "TO app;" in out
    assert _cli(["db", "doctor", "--metadata", "no_such_module_x:md"]) == 2
    assert "cannot import" in capsys.readouterr().err
    monkeypatch.delenv(_cli_db.DATABASE_URL_ENV, raising=False)
    assert _cli(["db", "doctor", "--metadata", spec]) == 2
    assert "--database-url" in capsys.readouterr().err
    assert _cli(["db", "doctor", "--metadata", "nocolon"]) == 2
