"""Execution parameters cannot override the tenant a scoped statement is bound to.

SQLAlchemy lets ``session.execute(stmt, {name: value})`` replace any bound
value by its compiled name, including the anonymous ``tenant_id_1`` of the
tenant criterion and the ``tenant_id`` an INSERT was checked with. An app
that forwards request fields as parameters must not hand over the tenant.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, insert, literal, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

import test_scoping
from tenantkit.context import bound_tenant
from tenantkit.errors import CrossTenantError
from test_scoping import A, B, Team

# The SQLite database of test_scoping: teams 1 "red" (tenant A) and 2 "blue" (tenant B).
engine = test_scoping.engine
maker = test_scoping.maker

T = Team.__table__
OVERRIDE = {"tenant_id_1": B, "tenant_id_2": B, "tenant_id_3": B}

STATEMENTS: list[tuple[str, Any, dict[str, Any]]] = [
    ("orm select", select(Team.name), OVERRIDE),
    ("orm entity", select(Team), OVERRIDE),
    ("core select", select(T.c.name), OVERRIDE),
    ("orm update", update(Team).values(name="pwned"), OVERRIDE),
    ("core update", update(T).values(name="pwned"), OVERRIDE),
    ("orm delete", delete(Team), OVERRIDE),
    ("insert values", insert(T).values(id=10, name="x", tenant_id=A), {"tenant_id": B}),
    ("orm insert values", insert(Team).values(id=11, name="x", tenant_id=A), {"tenant_id": B}),
    (
        "multi-row values",
        insert(T).values([{"id": 12, "name": "x", "tenant_id": A}]),
        {"tenant_id_m0": B},
    ),
    (
        "from select literal",
        insert(T).from_select(["tenant_id", "name"], select(literal(A), T.c.name)),
        {"param_1": B},
    ),
]


def teams(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(T.c.id, T.c.tenant_id, T.c.name))]


@pytest.mark.parametrize(
    ("label", "stmt", "params"), STATEMENTS, ids=[label for label, _, _ in STATEMENTS]
)
def test_parameters_naming_the_tenant_bind_are_refused(
    engine: Engine, maker: sessionmaker[Session], label: str, stmt: Any, params: dict[str, Any]
) -> None:
    """A parameter that would replace the tenant with B's raises; B's rows stay untouched."""
    with bound_tenant(A), maker() as s:
        with pytest.raises(CrossTenantError):
            s.execute(stmt, params).all() if stmt.is_select else s.execute(stmt, params)
        s.commit()
    assert teams(engine) == [(1, A, "red"), (2, B, "blue")]


def test_parameters_of_the_tenant_itself_still_run(maker: sessionmaker[Session]) -> None:
    """Parameters that name the current tenant, and ordinary ones, are accepted."""
    with bound_tenant(A), maker() as s:
        assert s.execute(select(Team.name), {"tenant_id_1": A}).all() == [("red",)]
        s.execute(insert(T).values(id=10, name="x", tenant_id=A), {"tenant_id": A})
        s.execute(insert(Team), [{"id": 11, "name": "y"}, {"id": 12, "name": "z"}])
        stmt = select(Team.name).where(Team.id == 10)
        assert s.execute(stmt).all() == [("x",)]
        assert s.execute(select(Team.id).where(Team.name.in_(["y", "z"]))).all() == [
            (11,),
            (12,),
        ]
