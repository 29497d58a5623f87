"""The tenant store: CRUD, validation, pagination, compare-and-set and the read cache.

Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event, insert, update
from sqlalchemy.engine import Engine

from tenantkit._cli_tenants import register
from tenantkit._db import make_engine
from tenantkit.apikeys import APIKeyRow
from tenantkit.errors import (
    Conflict,
    StorageError,
    TenantNotFound,
    ValidationError,
)
from tenantkit.settings import CacheSettings
from tenantkit.tenants import MISS, TenantRow, TenantStore, tenant_to_dict
from tenantkit.types import TenantConfig
from test_review_support import BACKENDS, FakeClock, backend_engine


class StatementLog:
    """Record the SQL statements an engine runs."""

    def __init__(self, engine: Engine) -> None:
        self.statements: list[str] = []
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    def tenant_reads(self) -> int:
        return sum(
            1
            for s in self.statements
            if s.lstrip().upper().startswith("SELECT") and "tenantkit_tenants" in s
        )


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    """An engine on a fresh SQLite file or on the session's PostgreSQL database."""
    yield from backend_engine(request, tmp_path, [TenantRow.__table__])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_store(engine: Engine, clock: FakeClock) -> Callable[..., TenantStore]:
    """Build stores on the shared engine (stores of one process share cache invalidation)."""

    def make(**cache: Any) -> TenantStore:
        store = TenantStore(engine, cache=CacheSettings(**cache), clock=clock)
        store.create_all()
        return store

    return make


@pytest.fixture
def store(make_store: Callable[..., TenantStore]) -> TenantStore:
    return make_store()


@pytest.fixture
def log(engine: Engine) -> StatementLog:
    return StatementLog(engine)


# -- CRUD ---------------------------------------------------------------------


def test_create_returns_config_with_defaults(store: TenantStore) -> None:
    """A new tenant is active, on the free plan, unrestricted, version 1, named after its id."""
    config = store.create(id="acme")
    assert config.id == "acme"
    assert config.name == "acme"
    assert config.status == "active"
    assert config.plan == "free"
    assert config.allowed_models is None
    assert config.allowed_tools is None
    assert config.metadata == {}
    assert config.version == 1
    assert config.created_at is not None and config.created_at.tzinfo is not None
    assert config.updated_at == config.created_at


def test_create_stores_every_field(store: TenantStore) -> None:
    """Every field given at creation is read back, lists as tuples."""
    store.create(
        id="acme",
        name="Acme Corp",
        status="suspended",
        plan="pro",
        quota_requests_per_minute=60,
        quota_tokens_per_minute=10_000,
        allowed_models=["gpt-4o", "claude"],
        allowed_tools=[],
        metadata={"region": "eu", "nested": {"a": [1, 2]}},
    )
    store.clear_cache()
    config = store.get("acme")
    assert config.name == "Acme Corp"
    assert config.status == "suspended" and not config.active
    assert config.plan == "pro"
    assert config.quota_requests_per_minute == 60
    assert config.quota_tokens_per_minute == 10_000
    assert config.allowed_models == ("gpt-4o", "claude")
    assert config.allowed_tools == ()
    assert config.metadata == {"region": "eu", "nested": {"a": [1, 2]}}


def test_create_twice_is_conflict(store: TenantStore) -> None:
    """Creating an id that exists is a 409 Conflict naming the tenant."""
    store.create(id="acme")
    with pytest.raises(Conflict) as info:
        store.create(id="acme", name="Other")
    assert info.value.status == 409
    assert info.value.extra["tenant_id"] == "acme"
    assert store.get("acme").name == "acme"


def test_get_unknown_is_tenant_not_found(store: TenantStore) -> None:
    """An unknown id is a 404 TenantNotFound problem."""
    with pytest.raises(TenantNotFound) as info:
        store.get("nobody")
    assert info.value.to_problem()["status"] == 404


def test_update_changes_fields_and_bumps_version(store: TenantStore) -> None:
    """An update writes the given fields only, bumps the version and the update time."""
    created = store.create(id="acme", plan="free", allowed_models=["a"])
    updated = store.update("acme", plan="pro", quota_requests_per_minute=10, metadata={"k": 1})
    assert updated.version == 2
    assert updated.plan == "pro"
    assert updated.quota_requests_per_minute == 10
    assert updated.metadata == {"k": 1}
    assert updated.allowed_models == ("a",)
    assert updated.updated_at is not None and created.updated_at is not None
    assert updated.updated_at >= created.updated_at
    assert updated.created_at == created.created_at
    store.clear_cache()
    assert store.get("acme") == updated


def test_update_can_clear_and_empty_allow_lists(store: TenantStore) -> None:
    """``None`` makes an allow-list unrestricted; ``[]`` allows nothing."""
    store.create(id="acme", allowed_models=["a"], allowed_tools=["t"])
    config = store.update("acme", allowed_models=None, allowed_tools=[])
    assert config.allowed_models is None
    assert config.allowed_tools == ()


def test_update_with_expected_version(store: TenantStore) -> None:
    """A matching expected_version writes; a stale one is a Conflict reporting the current one."""
    store.create(id="acme")
    assert store.update("acme", expected_version=1, plan="pro").version == 2
    with pytest.raises(Conflict) as info:
        store.update("acme", expected_version=1, plan="enterprise")
    assert info.value.extra["current_version"] == 2
    assert store.get("acme").plan == "pro"


def test_update_unknown_tenant_is_not_found(store: TenantStore) -> None:
    """Updating an id that does not exist is TenantNotFound, with or without a version."""
    with pytest.raises(TenantNotFound):
        store.update("nobody", plan="pro")
    with pytest.raises(TenantNotFound):
        store.update("nobody", expected_version=1, plan="pro")


def test_update_rejects_unknown_and_missing_fields(store: TenantStore) -> None:
    """An unknown field, or no field at all, is a ValidationError."""
    store.create(id="acme")
    with pytest.raises(ValidationError) as info:
        store.update("acme", colour="red")
    assert info.value.field == "colour"
    with pytest.raises(ValidationError):
        store.update("acme", version=7)
    with pytest.raises(ValidationError):
        store.update("acme")
    with pytest.raises(ValidationError) as info:
        store.update("acme", expected_version="1", plan="pro")  # type: ignore[arg-type]
    assert info.value.field == "expected_version"


def race(stores: list[TenantStore], action: Callable[[TenantStore, int], object]) -> list[str]:
    """Run ``action(store, n)`` in one thread per store at once; return the sorted outcomes."""
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(store: TenantStore, n: int) -> None:
        barrier.wait()
        try:
            action(store, n)
            outcome = "won"
        except Conflict:
            outcome = "conflict"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=attempt, args=(s, n)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return sorted(outcomes)


def test_concurrent_compare_and_set_has_one_winner(make_store: Callable[..., TenantStore]) -> None:
    """Ten stores updating from the same version at once: exactly one wins, nine conflict."""
    stores = [make_store() for _ in range(10)]
    stores[0].create(id="acme")
    outcomes = race(stores, lambda s, n: s.update("acme", expected_version=1, plan=f"plan-{n}"))
    assert outcomes == ["conflict"] * 9 + ["won"]
    stores[0].clear_cache()
    assert stores[0].get("acme").version == 2


def test_concurrent_creates_have_one_winner(make_store: Callable[..., TenantStore]) -> None:
    """Eight stores creating the same id at once: one succeeds, the others get Conflict."""
    stores = [make_store() for _ in range(8)]
    outcomes = race(stores, lambda s, n: s.create(id="acme", name=f"creator-{n}"))
    assert outcomes == ["conflict"] * 7 + ["won"]


def test_concurrent_blind_updates_all_count(make_store: Callable[..., TenantStore]) -> None:
    """Updates without expected_version never conflict and never lose a version bump."""
    stores = [make_store() for _ in range(8)]
    stores[0].create(id="acme")
    assert race(stores, lambda s, n: s.update("acme", plan="pro")) == ["won"] * 8
    stores[0].clear_cache()
    assert stores[0].get("acme").version == 9


def test_delete_removes_tenant(store: TenantStore) -> None:
    """A deleted tenant is gone on the next get; deleting it again is TenantNotFound."""
    store.create(id="acme")
    store.get("acme")
    store.delete("acme")
    with pytest.raises(TenantNotFound):
        store.get("acme")
    with pytest.raises(TenantNotFound):
        store.delete("acme")


def test_delete_without_api_keys_table(engine: Engine, store: TenantStore) -> None:
    """On a database that never had API keys, delete works and reports no keys deleted."""
    APIKeyRow.__table__.drop(engine, checkfirst=True)
    store.create(id="acme")
    assert store.delete("acme") == 0
    with pytest.raises(TenantNotFound):
        store.get("acme")


def test_delete_then_recreate(store: TenantStore) -> None:
    """An id can be created again after a delete and is then visible at once."""
    store.create(id="acme", plan="pro")
    store.delete("acme")
    with pytest.raises(TenantNotFound):
        store.get("acme")
    config = store.create(id="acme")
    assert store.get("acme") == config
    assert config.plan == "free"


def test_tenant_to_dict_is_json_ready(store: TenantStore) -> None:
    """``tenant_to_dict`` gives lists and RFC 3339 UTC times that json.dumps accepts."""
    config = store.create(id="acme", allowed_models=["m"], metadata={"a": 1})
    data = json.loads(json.dumps(tenant_to_dict(config)))
    assert data["allowed_models"] == ["m"]
    assert data["allowed_tools"] is None
    assert data["created_at"].endswith("Z")
    assert data["version"] == 1


# -- validation ---------------------------------------------------------------

BAD_IDS = [
    "acme'; DROP TABLE tenantkit_tenants; --",
    "../x",
    "a" * 200,
    "",
    "a",
    "ACME",
    "-acme",
    "acme/../../etc",
    "acme\x00",
    "acme ",
]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_malformed_ids_are_never_looked_up(
    store: TenantStore, log: StatementLog, bad_id: str
) -> None:
    """Every operation rejects a malformed id with a ValidationError before any SQL runs."""
    operations: list[Callable[[], object]] = [
        lambda: store.get(bad_id),
        lambda: store.peek(bad_id),
        lambda: store.create(id=bad_id),
        lambda: store.update(bad_id, plan="pro"),
        lambda: store.delete(bad_id),
        lambda: store.invalidate(bad_id),
    ]
    for operation in operations:
        with pytest.raises(ValidationError):
            operation()
    assert log.statements == []


def test_non_string_id_is_validation_error(store: TenantStore) -> None:
    """An id that is not a string is a ValidationError, not a TypeError."""
    with pytest.raises(ValidationError):
        store.get(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quota_requests_per_minute", -1),
        ("quota_requests_per_minute", "60"),
        ("quota_tokens_per_minute", True),
        ("quota_tokens_per_minute", 1.5),
        ("allowed_models", "gpt-4o"),
        ("allowed_models", [1, 2]),
        ("allowed_tools", [""]),
        ("allowed_tools", {"a": 1}),
        ("status", "deleted"),
        ("name", ""),
        ("name", "x" * 201),
        ("plan", None),
        ("metadata", ["not", "an", "object"]),
        ("metadata", {"a": object()}),
        ("metadata", {1: "non-string key"}),
        ("metadata", {"a": float("nan")}),
    ],
)
def test_bad_field_values_name_the_field(
    store: TenantStore, log: StatementLog, field: str, value: Any
) -> None:
    """A bad value on create or update is a ValidationError naming the field; nothing is written."""
    with pytest.raises(ValidationError) as info:
        store.create(id="acme", **{field: value})
    assert info.value.field == field
    assert log.statements == []
    store.create(id="acme")
    with pytest.raises(ValidationError) as info:
        store.update("acme", **{field: value})
    assert info.value.field == field
    assert store.get("acme").version == 1


def test_metadata_is_copied(store: TenantStore) -> None:
    """Mutating the caller's metadata after create does not change the stored tenant."""
    metadata: dict[str, Any] = {"tags": ["a"]}
    config = store.create(id="acme", metadata=metadata)
    metadata["tags"].append("b")
    assert config.metadata == {"tags": ["a"]}


# -- pagination ---------------------------------------------------------------


def test_list_paginates_in_id_order(store: TenantStore) -> None:
    """Pages follow id order, each next_cursor leads to the next page, the last has none."""
    for tenant_id in ["echo", "alpha", "delta", "charlie", "bravo"]:
        store.create(id=tenant_id)
    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        page = store.list(limit=2, cursor=cursor)
        pages += 1
        seen.extend(config.id for config in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ["alpha", "bravo", "charlie", "delta", "echo"]
    assert pages == 3


def test_list_exact_page_has_no_next_cursor(store: TenantStore) -> None:
    """When the items fit the limit exactly there is no next page."""
    store.create(id="alpha")
    store.create(id="bravo")
    page = store.list(limit=2)
    assert [c.id for c in page.items] == ["alpha", "bravo"]
    assert page.next_cursor is None
    assert store.list().items == page.items


def test_list_empty(store: TenantStore) -> None:
    """An empty store lists no items and no cursor."""
    page = store.list()
    assert page.items == [] and page.next_cursor is None


@pytest.mark.parametrize("limit", [0, -1, 201, True, "10", 2.5])
def test_list_rejects_bad_limit(store: TenantStore, limit: Any) -> None:
    """A limit outside 1..200 is a ValidationError naming ``limit``."""
    with pytest.raises(ValidationError) as info:
        store.list(limit=limit)
    assert info.value.field == "limit"


@pytest.mark.parametrize(
    "cursor", ["garbage!", "e30", "eyJhZnRlciI6ICIuLi94In0", "x" * 500, "%%%%", 7]
)
def test_list_rejects_bad_cursor(store: TenantStore, cursor: Any) -> None:
    """A cursor this store did not make is a ValidationError naming ``cursor``."""
    with pytest.raises(ValidationError) as info:
        store.list(cursor=cursor)
    assert info.value.field == "cursor"


def test_list_accepts_limit_bounds(store: TenantStore) -> None:
    """Limits of 1 and 200 are both accepted."""
    store.create(id="alpha")
    store.create(id="bravo")
    assert len(store.list(limit=1).items) == 1
    assert len(store.list(limit=200).items) == 2


# -- cache --------------------------------------------------------------------


def test_get_is_cached(store: TenantStore, log: StatementLog) -> None:
    """Repeated gets within the TTL read the database once."""
    store.create(id="acme")
    store.clear_cache()
    log.statements.clear()
    for _ in range(5):
        store.get("acme")
    assert log.tenant_reads() == 1


def _write_elsewhere(engine: Engine, statement: Any) -> None:
    """Change the table as another process would: straight to the database."""
    with engine.begin() as conn:
        conn.execute(statement)


def _update_elsewhere(engine: Engine, tenant_id: str, **values: Any) -> None:
    _write_elsewhere(
        engine,
        update(TenantRow)
        .where(TenantRow.id == tenant_id)
        .values(**values, version=TenantRow.version + 1),
    )


def test_cache_expires_after_ttl(
    make_store: Callable[..., TenantStore], engine: Engine, clock: FakeClock, log: StatementLog
) -> None:
    """A change made by another process is seen once the TTL has passed, not before."""
    here = make_store(ttl_seconds=30)
    here.create(id="acme")
    assert here.get("acme").plan == "free"
    _update_elsewhere(engine, "acme", plan="pro")
    clock.now += 29
    assert here.get("acme").plan == "free"
    clock.now += 2
    assert here.get("acme").plan == "pro"


def test_invalidate_makes_remote_change_visible(
    make_store: Callable[..., TenantStore], engine: Engine
) -> None:
    """``invalidate`` drops the cached entry so the next get reads the database."""
    here = make_store()
    here.create(id="acme")
    here.get("acme")
    _update_elsewhere(engine, "acme", plan="pro")
    assert here.get("acme").plan == "free"
    here.invalidate("acme")
    assert here.get("acme").plan == "pro"


def test_update_is_seen_on_next_get(store: TenantStore, log: StatementLog) -> None:
    """An update through this store is what the very next get returns, without a re-read."""
    store.create(id="acme")
    store.get("acme")
    store.update("acme", status="suspended")
    log.statements.clear()
    config = store.get("acme")
    assert config.status == "suspended" and config.version == 2
    assert log.tenant_reads() == 0


def test_peek_never_reads(store: TenantStore, log: StatementLog) -> None:
    """``peek`` answers from the cache only: the config, a cached unknown, or MISS."""
    store.create(id="acme")
    store.clear_cache()
    log.statements.clear()
    assert store.peek("acme") is MISS
    assert log.statements == []
    store.get("acme")
    assert isinstance(store.peek("acme"), TenantConfig)
    with pytest.raises(TenantNotFound):
        store.get("nobody")
    assert store.peek("nobody") is None


def test_unknown_id_is_cached_as_unknown(
    make_store: Callable[..., TenantStore], engine: Engine, clock: FakeClock, log: StatementLog
) -> None:
    """An unknown id is remembered as unknown for negative_ttl_seconds, then re-read."""
    here = make_store(negative_ttl_seconds=5)
    with pytest.raises(TenantNotFound):
        here.get("acme")
    _write_elsewhere(engine, insert(TenantRow).values(id="acme", name="acme"))
    log.statements.clear()
    with pytest.raises(TenantNotFound):
        here.get("acme")
    assert log.tenant_reads() == 0
    clock.now += 6
    assert here.get("acme").id == "acme"
    assert log.tenant_reads() == 1


def test_create_replaces_cached_unknown(store: TenantStore) -> None:
    """A tenant created through this store is visible at once even if cached as unknown."""
    with pytest.raises(TenantNotFound):
        store.get("acme")
    store.create(id="acme")
    assert store.get("acme").id == "acme"


def test_stale_fill_never_overwrites_newer_version(
    store: TenantStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow reader holding version 1 does not replace version 2 cached by an update."""
    store.create(id="acme")
    store.clear_cache()
    loaded, release = threading.Event(), threading.Event()
    original = store._load
    seen: list[TenantConfig] = []

    def slow_load(tenant_id: str) -> TenantConfig | None:
        config = original(tenant_id)
        loaded.set()
        assert release.wait(10)
        return config

    monkeypatch.setattr(store, "_load", slow_load)
    reader = threading.Thread(target=lambda: seen.append(store.get("acme")))
    reader.start()
    assert loaded.wait(10)
    monkeypatch.setattr(store, "_load", original)
    store.update("acme", plan="pro")
    release.set()
    reader.join(10)
    assert [c.version for c in seen] == [1]
    cached = store.peek("acme")
    assert isinstance(cached, TenantConfig) and cached.version == 2
    assert store.get("acme").plan == "pro"


def test_stale_fill_does_not_resurrect_deleted_tenant(
    store: TenantStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow reader that read a tenant before its delete does not cache it afterwards."""
    store.create(id="acme")
    store.clear_cache()
    loaded, release = threading.Event(), threading.Event()
    original = store._load

    def slow_load(tenant_id: str) -> TenantConfig | None:
        config = original(tenant_id)
        loaded.set()
        assert release.wait(10)
        return config

    monkeypatch.setattr(store, "_load", slow_load)
    reader = threading.Thread(target=store.get, args=("acme",))
    reader.start()
    assert loaded.wait(10)
    monkeypatch.setattr(store, "_load", original)
    store.delete("acme")
    release.set()
    reader.join(10)
    assert store.peek("acme") is MISS
    with pytest.raises(TenantNotFound):
        store.get("acme")


def test_concurrent_misses_make_one_read(
    store: TenantStore, log: StatementLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty threads missing one id at once cause exactly one SELECT."""
    store.create(id="acme")
    store.clear_cache()
    log.statements.clear()
    release = threading.Event()
    original = store._load

    def gated_load(tenant_id: str) -> TenantConfig | None:
        assert release.wait(10)
        return original(tenant_id)

    monkeypatch.setattr(store, "_load", gated_load)
    results: list[TenantConfig] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.get("acme"))) for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    _wait_for_waiters(store, "acme", 20)
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(results) == 20 and {c.id for c in results} == {"acme"}
    assert log.tenant_reads() == 1


def test_lru_bounds_the_cache(store: TenantStore, make_store: Callable[..., TenantStore]) -> None:
    """A cache of maxsize 2 keeps the two most recently used tenants."""
    small = make_store(maxsize=2)
    for tenant_id in ["alpha", "bravo", "charlie"]:
        store.create(id=tenant_id)
    small.get("alpha")
    small.get("bravo")
    small.get("alpha")
    small.get("charlie")
    assert small.peek("bravo") is MISS
    assert small.peek("alpha") is not MISS


# -- storage failures ---------------------------------------------------------


def test_missing_table_is_storage_error(engine: Engine) -> None:
    """A database error (here: no table) is a StorageError caused by the SQLAlchemy error."""
    store = TenantStore(engine)
    with pytest.raises(StorageError) as info:
        store.get("acme")
    assert info.value.__cause__ is not None
    with pytest.raises(StorageError):
        store.list()
    with pytest.raises(StorageError):
        store.create(id="acme")
    assert store.peek("acme") is MISS


def test_unreachable_database_is_storage_error(tmp_path: Any) -> None:
    """A database that cannot be opened is a StorageError, not a raw SQLAlchemy error."""
    store = TenantStore(make_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}"))
    with pytest.raises(StorageError):
        store.get("acme")


def _wait_for_waiters(store: TenantStore, key: str, count: int) -> None:
    cache = store._cache
    for _ in range(10_000):
        with cache._lock:
            entry = cache._key_locks.get(key)
            if entry is not None and entry.users >= count:
                return
        threading.Event().wait(0.001)
    raise AssertionError("callers never queued")


# -- CLI ----------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    """Parse ``argv`` the way ``tenantkit`` does and run the chosen handler in-process."""
    parser = argparse.ArgumentParser(prog="tenantkit")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


@pytest.fixture
def db_url(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> str:
    """The engine's URL, with no TENANTKIT_* settings leaking in from the environment."""
    monkeypatch.delenv("TENANTKIT_DATABASE_URL", raising=False)
    monkeypatch.delenv("TENANTKIT_API_KEY_SECRET", raising=False)
    return engine.url.render_as_string(hide_password=False)


def cli_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    code = run_cli(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_cli_tenant_lifecycle(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """create, show, list, update, suspend, activate and delete work and print JSON."""
    db = ["--database-url", db_url]
    created = cli_json(
        capsys,
        ["tenants", "create", "acme", "--name", "Acme", "--rpm", "60", "--allowed-models",
         "gpt-4o, claude", "--allowed-tools", "", "--metadata", '{"tier": "gold"}', *db],
    )  # fmt: skip
    assert created["name"] == "Acme" and created["quota_requests_per_minute"] == 60
    assert created["allowed_models"] == ["gpt-4o", "claude"]
    assert created["allowed_tools"] == []
    assert created["metadata"] == {"tier": "gold"}
    assert cli_json(capsys, ["tenants", "show", "acme", *db])["version"] == 1
    updated = cli_json(
        capsys,
        ["tenants", "update", "acme", "--plan", "pro", "--rpm", "none",
         "--allowed-models", "*", "--expected-version", "1", *db],
    )  # fmt: skip
    assert updated["plan"] == "pro" and updated["version"] == 2
    assert updated["quota_requests_per_minute"] is None
    assert updated["allowed_models"] is None
    assert updated["allowed_tools"] == [] and updated["name"] == "Acme"
    assert cli_json(capsys, ["tenants", "suspend", "acme", *db])["status"] == "suspended"
    assert cli_json(capsys, ["tenants", "activate", "acme", *db])["status"] == "active"
    listed = cli_json(capsys, ["tenants", "list", *db])
    assert [t["id"] for t in listed["items"]] == ["acme"] and listed["next_cursor"] is None
    assert cli_json(capsys, ["tenants", "delete", "acme", *db])["deleted"] == "acme"
    assert run_cli(["tenants", "show", "acme", *db]) == 1
    assert "not found" in capsys.readouterr().err


def test_cli_list_pages(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``tenants list --limit --cursor`` walks the pages."""
    store = TenantStore(make_engine(db_url))
    store.create_all()
    for tenant_id in ["alpha", "bravo", "charlie"]:
        store.create(id=tenant_id)
    first = cli_json(capsys, ["tenants", "list", "--limit", "2", "--database-url", db_url])
    second = cli_json(
        capsys,
        ["tenants", "list", "--cursor", first["next_cursor"], "--database-url", db_url],
    )
    assert [t["id"] for t in first["items"] + second["items"]] == ["alpha", "bravo", "charlie"]
    store.engine.dispose()


def test_cli_reads_database_url_from_environment(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --database-url the CLI uses TENANTKIT_DATABASE_URL."""
    monkeypatch.setenv("TENANTKIT_DATABASE_URL", db_url)
    cli_json(capsys, ["tenants", "create", "acme"])
    assert [t["id"] for t in cli_json(capsys, ["tenants", "list"])["items"]] == ["acme"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tenants", "create", "../x"], "id must match"),
        (["tenants", "create", "acme", "--rpm", "-1"], "quota_requests_per_minute"),
        (["tenants", "update", "nobody", "--plan", "pro"], "not found"),
        (["tenants", "update", "acme"], "no fields to update"),
        (["tenants", "update", "acme", "--plan", "x", "--expected-version", "9"], "version"),
        (["tenants", "create", "acme"], "already exists"),
        (["tenants", "delete", "nobody"], "not found"),
        (["tenants", "list", "--limit", "500"], "limit"),
        (["tenants", "list", "--cursor", "junk"], "cursor"),
    ],
)
def test_cli_user_errors_exit_1_with_a_message(
    db_url: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """A user error exits 1 with one clear line on stderr and no traceback."""
    assert run_cli(["tenants", "create", "acme", "--database-url", db_url]) == 0
    capsys.readouterr()
    assert run_cli([*argv, "--database-url", db_url]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_cli_bad_database_url_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unusable database URL is a one-line error, not a traceback."""
    monkeypatch.delenv("TENANTKIT_DATABASE_URL", raising=False)
    assert run_cli(["tenants", "list", "--database-url", "nosuchdb://x"]) == 1
    assert capsys.readouterr().err.startswith("error: cannot use database URL")
    missing = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    assert run_cli(["tenants", "list", "--database-url", missing]) == 1
    assert capsys.readouterr().err.startswith("error: tenant store failed")


def test_cli_rejects_bad_option_values(capsys: pytest.CaptureFixture[str]) -> None:
    """Malformed option values are usage errors (exit 2) naming the option."""
    with pytest.raises(SystemExit) as info:
        run_cli(["tenants", "create", "acme", "--metadata", "[1]"])
    assert info.value.code == 2
    assert "--metadata" in capsys.readouterr().err


def test_cli_reads_of_a_database_without_tables_create_none(
    capsys: pytest.CaptureFixture[str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tenants list`` or ``api-keys list`` on the wrong database says so and leaves it as is."""
    from sqlalchemy import create_engine, inspect

    monkeypatch.delenv("TENANTKIT_DATABASE_URL", raising=False)
    monkeypatch.setenv("TENANTKIT_API_KEY_SECRET", "cli-tables-test-" + "k" * 32)
    url = f"sqlite:///{tmp_path / 'other-app.db'}"
    reads = (
        ["tenants", "list"],
        ["tenants", "show", "acme"],
        ["tenants", "suspend", "acme"],
        ["api-keys", "list", "acme"],
        ["api-keys", "issue", "acme", "--name", "ci"],
    )
    for argv in reads:
        assert run_cli([*argv, "--database-url", url]) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error: this database has no tenantkit_tenants table"), err
    engine = create_engine(url)
    assert inspect(engine).get_table_names() == []
    engine.dispose()
    assert run_cli(["tenants", "create", "acme", "--database-url", url]) == 0
    capsys.readouterr()
    assert run_cli(["api-keys", "list", "acme", "--database-url", url]) == 1
    assert "no tenantkit_api_keys table" in capsys.readouterr().err
    assert run_cli(["api-keys", "issue", "acme", "--name", "ci", "--database-url", url]) == 0
