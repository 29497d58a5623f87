"""A detached object attached to a scoped session cannot carry a flush into another tenant's row.

The flush's own UPDATE and DELETE are keyed by primary key only; an object
built with another tenant's key and this tenant's tenant_id
(``make_transient_to_detached``, ``merge(load=False)``) must be checked
against the database before its changes are written.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, make_transient_to_detached, sessionmaker

import test_scoping
from tenantkit.context import bound_tenant
from tenantkit.errors import CrossTenantError
from test_scoping import A, B, Team

# The SQLite database of test_scoping: teams 1 "red" (tenant A) and 2 "blue" (tenant B).
engine = test_scoping.engine
maker = test_scoping.maker

T = Team.__table__


def teams(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(T.c.id, T.c.tenant_id, T.c.name))]


def forged(team_id: int, name: str) -> Team:
    """Team ``team_id`` as app code builds it to update without a SELECT, stamped with A."""
    team = Team(id=team_id, tenant_id=A, name=name)
    make_transient_to_detached(team)
    return team


def test_update_of_a_forged_detached_object_is_refused(
    engine: Engine, maker: sessionmaker[Session]
) -> None:
    """add() of B's key with tenant_id A, then a change: the flush raises, B's row stays."""
    with bound_tenant(A), maker() as s:
        team = forged(2, "blue")
        s.add(team)
        team.name = "pwned"
        with pytest.raises(CrossTenantError):
            s.commit()
    assert teams(engine) == [(1, A, "red"), (2, B, "blue")]


def test_delete_of_a_forged_detached_object_is_refused(
    engine: Engine, maker: sessionmaker[Session]
) -> None:
    """add() then delete() of B's key under A raises instead of deleting B's row."""
    with bound_tenant(A), maker() as s:
        team = forged(2, "blue")
        s.add(team)
        s.delete(team)
        with pytest.raises(CrossTenantError):
            s.commit()
    assert teams(engine) == [(1, A, "red"), (2, B, "blue")]


def test_merge_without_load_of_another_tenants_key_is_refused(
    engine: Engine, maker: sessionmaker[Session]
) -> None:
    """merge(load=False) of B's key, then a change: the flush raises, B's row stays."""
    with bound_tenant(A), maker() as s:
        team = s.merge(forged(2, "blue"), load=False)
        team.name = "pwned"
        with pytest.raises(CrossTenantError):
            s.commit()
    assert teams(engine) == [(1, A, "red"), (2, B, "blue")]


def test_a_detached_object_of_the_tenant_is_still_written(
    engine: Engine, maker: sessionmaker[Session]
) -> None:
    """The idiom on the tenant's own row, and an object re-added from an earlier session, work."""
    with bound_tenant(A), maker() as s:
        team = forged(1, "red")
        s.add(team)
        team.name = "crimson"
        s.commit()
    with bound_tenant(A), maker(expire_on_commit=False) as s:
        loaded = s.get(Team, 1)
        assert loaded is not None
    with bound_tenant(A), maker() as s:
        s.add(loaded)
        loaded.name = "scarlet"
        s.commit()
    with bound_tenant(A), maker() as s:
        merged = s.merge(forged(1, "scarlet"), load=False)
        merged.name = "ruby"
        s.commit()
    assert teams(engine) == [(1, A, "ruby"), (2, B, "blue")]
