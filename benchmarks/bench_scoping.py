"""Benchmark tenant scoping: a scoped vs a hand-filtered query, and row-level security's cost.

    python benchmarks/bench_scoping.py                      # SQLite part only
    python benchmarks/bench_scoping.py --postgres-url postgresql+psycopg://postgres@127.0.0.1/test

The PostgreSQL URL may also come from ``TENANTKIT_TEST_POSTGRES_URL``; it must
be able to create a table and a role (both uniquely named and dropped after).
Each case reports the median time per query over ``--repeat`` runs; the
ratio column compares it with the case's baseline (the first row of its group).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Index, MetaData, String, create_engine, func, insert, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tenantkit._db import make_engine
from tenantkit.context import bound_tenant
from tenantkit.rls import apply_rls
from tenantkit.scoping import TenantScoped, tenant_sessionmaker
from tenantkit.testing import temporary_app_role

TABLE = f"bench_items_{uuid.uuid4().hex[:8]}"


class Base(DeclarativeBase):
    metadata = MetaData()


class Item(TenantScoped, Base):
    __tablename__ = TABLE
    __table_args__ = (Index(f"ix_{TABLE}_tenant_id_id", "tenant_id", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    score: Mapped[int] = mapped_column()


Row = tuple[str, str, float]


def measure_group(cases: list[tuple[str, Callable[[], Any]]], repeat: int) -> list[float]:
    """Return each case's median seconds per call; cases alternate so drift hits all alike."""
    for _, fn in cases:
        for _ in range(min(20, repeat)):
            fn()
    samples: list[list[float]] = [[] for _ in cases]
    for _ in range(repeat):
        for i, (_, fn) in enumerate(cases):
            start = time.perf_counter()
            fn()
            samples[i].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def seed(engine: Engine, rows: int, tenants: int) -> None:
    Base.metadata.create_all(engine)
    batch = [
        {"id": i, "tenant_id": f"t-{i % tenants:04d}", "name": f"item {i}", "score": i % 97}
        for i in range(1, rows + 1)
    ]
    with engine.begin() as conn:
        for start in range(0, rows, 10_000):
            conn.execute(insert(Item.__table__), batch[start : start + 10_000])
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"ANALYZE {TABLE}"))


def orm_cases(engine: Engine, repeat: int) -> list[Row]:
    """Scoped session vs a plain session filtering by hand, same SQL, same rows.

    On PostgreSQL the scoped session also pays its per-transaction set_config.
    """
    tenant = "t-0003"
    scoped = tenant_sessionmaker(engine)
    table = Item.__table__
    out: list[Row] = []

    def plain_orm() -> None:
        with Session(engine) as s:
            s.scalars(select(Item).where(Item.tenant_id == tenant).limit(20)).all()

    def scoped_orm() -> None:
        with scoped() as s:
            s.scalars(select(Item).limit(20)).all()

    def plain_core() -> None:
        with Session(engine) as s:
            s.execute(select(table.c.id).where(table.c.tenant_id == tenant).limit(20)).all()

    def scoped_core() -> None:
        with scoped() as s:
            s.execute(select(table.c.id).limit(20)).all()

    def plain_get() -> None:
        with Session(engine) as s:
            s.scalars(select(Item).where(Item.id == 4, Item.tenant_id == tenant)).first()

    def scoped_get() -> None:
        with scoped() as s:
            s.get(Item, 4)

    name = engine.dialect.name
    for group, cases in (
        ("ORM select, 20 rows", [("plain session + WHERE", plain_orm), ("scoped", scoped_orm)]),
        ("Core table select", [("plain session + WHERE", plain_core), ("scoped", scoped_core)]),
        ("get by id", [("plain session + WHERE", plain_get), ("scoped get()", scoped_get)]),
    ):
        with bound_tenant(tenant):  # bound once per request, as the middleware does
            timings = measure_group(cases, repeat)
        out += [
            (f"{name}: {group}", label, t) for (label, _), t in zip(cases, timings, strict=True)
        ]
    return out


def rls_cases(owner: Engine, app: Engine, repeat: int) -> list[Row]:
    """The same queries on a large indexed table: no RLS, RLS only, RLS plus the ORM filter."""
    tenant = "t-0003"
    out: list[Row] = []
    queries = {
        "count(*) of one tenant": "SELECT count(*) FROM {t}{where}",
        "20 newest rows": "SELECT id, name FROM {t}{where} ORDER BY id DESC LIMIT 20",
        "point lookup by id": "SELECT id, name FROM {t} WHERE id = 4{and_where}",
    }

    def run(engine: Engine, sql: str) -> Callable[[], None]:
        def fn() -> None:
            with engine.begin() as conn:
                # every case pays the same set_config round trip; only RLS differs
                conn.execute(select(func.set_config("app.tenant_id", tenant, True)))
                conn.execute(text(sql), {"tenant": tenant}).all()

        return fn

    for label, template in queries.items():
        where = " WHERE tenant_id = :tenant"
        explicit = template.format(t=TABLE, where=where, and_where=" AND tenant_id = :tenant")
        bare = template.format(t=TABLE, where="", and_where="")
        cases = [
            ("owner, no RLS, WHERE tenant_id", run(owner, explicit)),
            ("app role, RLS policy only", run(app, bare)),
            ("app role, RLS + WHERE tenant_id", run(app, explicit)),
        ]
        timings = measure_group(cases, repeat)
        out += [
            (f"postgresql RLS: {label}", c, t) for (c, _), t in zip(cases, timings, strict=True)
        ]
    return out


@contextmanager
def postgres(url: str, rows: int, tenants: int) -> Iterator[tuple[Engine, Engine]]:
    owner = create_engine(make_url(url).set(drivername="postgresql+psycopg"))
    seed(owner, rows, tenants)
    apply_rls(owner, Base.metadata)
    try:
        with temporary_app_role(owner, Base.metadata) as role:
            app = create_engine(owner.url.set(username=role))
            try:
                yield owner, app
            finally:
                app.dispose()
    finally:
        Base.metadata.drop_all(owner)
        owner.dispose()


def print_table(rows: list[Row]) -> None:
    print(f"{'group':<46} {'case':<34} {'median':>10} {'ratio':>7}")
    print("-" * 100)
    baseline: dict[str, float] = {}
    for group, case, seconds in rows:
        base = baseline.setdefault(group, seconds)
        print(f"{group:<46} {case:<34} {seconds * 1e6:>8.0f}us {seconds / base:>6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url", default=os.environ.get("TENANTKIT_TEST_POSTGRES_URL"))
    parser.add_argument("--rows", type=int, default=200_000, help="rows in the RLS table")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()

    started = time.perf_counter()
    results: list[Row] = []
    sqlite = make_engine("sqlite:///:memory:")
    seed(sqlite, 20_000, args.tenants)
    results += orm_cases(sqlite, args.repeat)
    sqlite.dispose()
    if args.postgres_url:
        with postgres(args.postgres_url, args.rows, args.tenants) as (owner, app):
            results += orm_cases(app, args.repeat)
            results += rls_cases(owner, app, args.repeat)
    else:
        print("(no --postgres-url or TENANTKIT_TEST_POSTGRES_URL: PostgreSQL part skipped)")
    print_table(results)
    print(f"\n{args.rows} rows / {args.tenants} tenants; {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
