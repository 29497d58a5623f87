"""Helpers shared by the store and cache tests (no tests here): a fake clock, backend engines."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from tenantkit._db import make_engine

#: Parameters of an ``engine`` fixture that runs each test on SQLite and on PostgreSQL.
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class FakeClock:
    """A monotonic clock the test moves by hand (``clock.now += 30``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backend_engine(
    request: pytest.FixtureRequest, tmp_path: Path, tables: Sequence[Any]
) -> Iterator[Engine]:
    """Yield an engine on a fresh SQLite file or the session's PostgreSQL, ``tables`` dropped.

    ``tables`` are dropped before and after, so tests sharing the PostgreSQL
    database each start from empty tables.
    """
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url").render_as_string(hide_password=False)
    engine = make_engine(url)
    for table in tables:
        table.drop(engine, checkfirst=True)
    yield engine
    for table in tables:
        table.drop(engine, checkfirst=True)
    engine.dispose()
