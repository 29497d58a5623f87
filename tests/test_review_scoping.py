"""Raw SQL hidden where the statement walk does not look is refused, not run across tenants."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Select, column, func, insert, literal, literal_column, select, table
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, configure_mappers, sessionmaker
from sqlalchemy.sql import quoted_name

import test_scoping
from tenantkit._db import make_engine
from tenantkit.context import bound_tenant
from tenantkit.errors import CrossTenantError
from tenantkit.scoping import is_scoped_table, tenant_sessionmaker
from test_scoping import A, Summary, Team

# The SQLite database of test_scoping: teams "red" (tenant A) and "blue" (tenant B).
engine = test_scoping.engine
maker = test_scoping.maker

T = Team.__table__

LEAKS: list[tuple[str, Callable[[], Any]]] = [
    # Each of these read both tenants' teams through a scoped session on SQLite.
    ("literal_column", lambda: select(literal_column("name FROM sc_teams"))),
    ("literal_column", lambda: select(literal_column('"name" FROM sc_teams'))),
    ("suffix_with", lambda: select(Team.name).suffix_with("UNION SELECT name FROM sc_teams")),
    ("with_hint", lambda: select(Team.name).with_statement_hint("UNION SELECT name FROM sc_teams")),
    ("prefix_with", lambda: select(Team.name).prefix_with("name FROM sc_teams UNION SELECT")),
    ("op", lambda: select(Team.name.op("FROM sc_teams UNION SELECT name ||")(literal("")))),
    ("quoted_name", lambda: select(column(quoted_name("name FROM sc_teams", quote=False)))),
    (
        "quoted_name",
        lambda: select(
            Team.name.label(quoted_name("x UNION SELECT name FROM sc_teams", quote=False))
        ),
    ),
]


@pytest.mark.parametrize(
    ("where", "build"), LEAKS, ids=[f"{w}-{i}" for i, (w, _) in enumerate(LEAKS)]
)
def test_raw_sql_outside_the_clauses_is_refused(
    maker: sessionmaker[Session], where: str, build: Callable[[], Select[Any]]
) -> None:
    """SQL in a literal column name, a prefix, a suffix or a hint is refused like text()."""
    with bound_tenant(A), maker() as s, pytest.raises(CrossTenantError, match=where):
        s.execute(build()).all()


@pytest.mark.parametrize("name", ["*", "1", "sc_teams.name", '"name"', "name"])
def test_literal_column_names_still_pass(maker: sessionmaker[Session], name: str) -> None:
    """literal_column of a name, a quoted name, a number or '*' runs, scoped to the tenant."""
    with bound_tenant(A), maker() as s:
        rows = s.execute(select(literal_column(name)).select_from(Team)).all()
    assert len(rows) == 1


def test_keyword_prefixes_still_pass(maker: sessionmaker[Session]) -> None:
    """SELECT DISTINCT and INSERT OR IGNORE prefixes change how, not what: they run."""
    with bound_tenant(A), maker() as s:
        assert s.scalars(select(Team.name).prefix_with("DISTINCT")).all() == ["red"]
        s.execute(insert(Team).prefix_with("OR IGNORE").values(id=1, name="dup"))
        assert s.scalar(select(func.count()).select_from(Team)) == 1


def test_lightweight_table_naming_a_scoped_table_is_refused(
    maker: sessionmaker[Session],
) -> None:
    """table('sc_teams', column('tenant_id')) is a CrossTenantError, not an AttributeError."""
    light = table(T.name, column("tenant_id"), column("name"))
    assert is_scoped_table(light) is False
    with bound_tenant(A), maker() as s, pytest.raises(CrossTenantError, match="tenant_id"):
        s.execute(select(func.count()).select_from(light)).all()


def test_operators_and_plain_unquoted_names_still_pass(maker: sessionmaker[Session]) -> None:
    """Symbol and word operators (||, LIKE) and an unquoted plain name run, scoped."""
    with bound_tenant(A), maker() as s:
        assert s.scalars(select(Team.name.op("||")(literal("!")))).all() == ["red!"]
        assert s.scalars(select(Team.name).where(Team.name.op("LIKE")("r%"))).all() == ["red"]
        plain = column(quoted_name("name", quote=False))
        assert s.scalars(select(plain).select_from(Team)).all() == ["red"]


def test_star_select_with_an_unsafe_column_property_mapped(maker: sessionmaker[Session]) -> None:
    """select(literal_column('*')) runs, and still meets the refusal of Summary, once it is mapped.

    With any raw-Table column_property configured, every ORM statement asks
    SQLAlchemy for its mappers, which raised AttributeError for a '*' column.
    """
    configure_mappers()  # Summary (a raw-Table column_property) is now known
    with bound_tenant(A), maker() as s:
        assert len(s.execute(select(literal_column("*")).select_from(Team)).all()) == 1
        with pytest.raises(CrossTenantError, match=r"Summary\.teams is a column_property"):
            s.execute(select(literal_column("*"), Summary)).all()


def test_quote_false_is_refused_after_the_quoted_twin_ran(engine: Engine) -> None:
    """quoted_name(x, quote=True) then (x, quote=False), which share a cache key: still refused.

    The statement-survey memo is process-wide while each engine compiles
    afresh, so a memoised verdict for the quoted twin let the unquoted SQL run.
    """
    sql = "name FROM sc_teams WHERE 'twin' = 'twin'"  # used by no other test
    quoted = select(column(quoted_name(sql, quote=True)))
    unquoted = select(column(quoted_name(sql, quote=False)))
    second = make_engine(str(engine.url))  # its own compiled cache
    try:
        with bound_tenant(A), tenant_sessionmaker(engine)() as s:
            s.execute(quoted).all()  # SQLite reads the unknown "identifier" as a string
        with (
            bound_tenant(A),
            tenant_sessionmaker(second)() as s,
            pytest.raises(CrossTenantError, match="quoted_name"),
        ):
            s.execute(unquoted).all()
    finally:
        second.dispose()
