"""API keys: format and checksum, HMAC-only storage, verification, revocation, expiry, caching.

Every store test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from tenantkit._cli_tenants import register
from tenantkit._db import make_engine
from tenantkit.apikeys import (
    MISS,
    APIKey,
    APIKeyRow,
    APIKeyStore,
    api_key_to_dict,
    generate_key,
    looks_like_key,
    parse_key,
)
from tenantkit.errors import (
    ConfigurationError,
    NotFound,
    StorageError,
    TenantNotFound,
    Unauthorized,
    ValidationError,
)
from tenantkit.kit import TenantKit
from tenantkit.settings import CacheSettings, Settings
from tenantkit.tenants import TenantRow, TenantStore
from tenantkit.types import RequestInfo
from test_review_support import BACKENDS, FakeClock, backend_engine

SECRET = "s3cret-for-tests-only-0123456789abcdef"
KEY_SHAPE = re.compile(r"tk_(live|test)_[0-9A-Za-z]{43}[0-9A-Za-z]{6}")


class FakeNow:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class StatementLog:
    """Record the SQL statements an engine runs."""

    def __init__(self, engine: Engine) -> None:
        self.statements: list[str] = []
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    def count(self, verb: str) -> int:
        return sum(
            1
            for s in self.statements
            if s.lstrip().upper().startswith(verb) and "tenantkit_api_keys" in s
        )


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    """An engine on a fresh SQLite file or on the session's PostgreSQL database."""
    yield from backend_engine(request, tmp_path, [APIKeyRow.__table__])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def now() -> FakeNow:
    return FakeNow()


@pytest.fixture
def make_store(engine: Engine, clock: FakeClock, now: FakeNow) -> Callable[..., APIKeyStore]:
    """Build stores on the shared engine (several stores stand in for several processes)."""

    def make(*, secret: str = SECRET, ttl_seconds: float = 30.0, **options: Any) -> APIKeyStore:
        cache = CacheSettings(ttl_seconds=ttl_seconds, negative_ttl_seconds=5.0)
        store = APIKeyStore(engine, secret=secret, cache=cache, clock=clock, now=now, **options)
        store.create_all()
        return store

    return make


@pytest.fixture
def store(make_store: Callable[..., APIKeyStore]) -> APIKeyStore:
    return make_store()


@pytest.fixture
def log(engine: Engine) -> StatementLog:
    return StatementLog(engine)


def tamper(key: str, index: int) -> str:
    """Return ``key`` with the character at ``index`` replaced by another base62 one."""
    replacement = "A" if key[index] != "A" else "B"
    return key[:index] + replacement + key[index + 1 :]


# -- format -------------------------------------------------------------------


def test_generated_keys_have_the_documented_shape() -> None:
    """Keys are tk_live_/tk_test_ + 43 base62 characters + a 6-character checksum."""
    live, test = generate_key("live"), generate_key("test")
    assert KEY_SHAPE.fullmatch(live) and live.startswith("tk_live_") and len(live) == 57
    assert KEY_SHAPE.fullmatch(test) and test.startswith("tk_test_") and len(test) == 57


def test_generated_keys_are_unique_and_parse() -> None:
    """A thousand keys are all different and all pass their own checksum."""
    keys = {generate_key() for _ in range(1000)}
    assert len(keys) == 1000
    for key in keys:
        parsed = parse_key(key)
        assert parsed.environment == "live"
        assert parsed.prefix == key[:12] and parsed.last4 == key[-4:]


def test_checksum_is_crc32_of_the_rest() -> None:
    """The last six characters are the base62 CRC32 of everything before them."""
    import zlib

    key = generate_key()
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    value = 0
    for char in key[-6:]:
        value = value * 62 + alphabet.index(char)
    assert value == zlib.crc32(key[:-6].encode())


@pytest.mark.parametrize("index", [8, 20, 30, 50, 51, 56])
def test_any_changed_character_fails_the_checksum(index: int) -> None:
    """Changing one character of the body or the checksum makes parse_key refuse the key."""
    key = generate_key()
    with pytest.raises(ValidationError):
        parse_key(tamper(key, index))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "tk_live_",
        "tk_prod_" + "a" * 49,
        "TK_LIVE_" + "a" * 49,
        "tk_live_" + "a" * 48,
        "tk_live_" + "a" * 50,
        "tk_live_" + "-" * 49,
        "tk_live_" + "é" * 49,
        "x" * 10_000,
        None,
        42,
    ],
)
def test_malformed_keys_do_not_parse(value: Any) -> None:
    """Anything not shaped like a key is a ValidationError from parse_key."""
    with pytest.raises(ValidationError):
        parse_key(value)


def test_looks_like_key() -> None:
    """``looks_like_key`` spots the tenantkit prefixes (a JWT or other token does not match)."""
    assert looks_like_key(generate_key("live"))
    assert looks_like_key(generate_key("test"))
    assert looks_like_key("tk_live_broken")
    assert not looks_like_key("eyJhbGciOiJIUzI1NiJ9.e30.x")
    assert not looks_like_key(None)
    assert not looks_like_key("sk_live_abc")


@pytest.mark.parametrize("secret", [None, "", "short", "x" * 31])
def test_missing_or_short_secret_is_configuration_error(secret: Any, tmp_path: Any) -> None:
    """A store without a secret of at least 32 bytes refuses to start."""
    with pytest.raises(ConfigurationError, match="TENANTKIT_API_KEY_SECRET"):
        APIKeyStore(make_engine(f"sqlite:///{tmp_path / 'x.db'}"), secret=secret)


def test_unknown_environment_is_configuration_error(tmp_path: Any) -> None:
    """Only the live and test environments exist."""
    with pytest.raises(ConfigurationError):
        APIKeyStore(
            make_engine(f"sqlite:///{tmp_path / 'x.db'}"),
            secret=SECRET,
            environment="prod",  # type: ignore[arg-type]
        )


# -- issue and storage --------------------------------------------------------


def test_issue_returns_key_and_record(store: APIKeyStore, now: FakeNow) -> None:
    """Issuing returns the key once and a secret-free record with display parts."""
    issued = store.issue(
        "acme",
        name="ci",
        scopes=["write:resources", "read:usage", "read:usage"],
        rate_limit=100,
        token_limit=5000,
        project_id="proj-1",
    )
    key, record = issued.key, issued.record
    assert KEY_SHAPE.fullmatch(key) and key.startswith("tk_live_")
    assert re.fullmatch(r"key_[0-9A-Za-z]{22}", record.id)
    assert record.tenant_id == "acme"
    assert record.name == "ci"
    assert record.prefix == key[:12] and record.last4 == key[-4:]
    assert record.scopes == ("read:usage", "write:resources")
    assert record.rate_limit == 100 and record.token_limit == 5000
    assert record.project_id == "proj-1"
    assert record.created_at == now.now
    assert record.environment == "live"
    assert key not in repr(record)


def test_issue_test_environment(make_store: Callable[..., APIKeyStore]) -> None:
    """A store or a single issue can make tk_test_ keys."""
    store = make_store(environment="test")
    assert store.issue("acme", name="a").key.startswith("tk_test_")
    assert store.issue("acme", name="b", environment="live").key.startswith("tk_live_")
    assert store.issue("acme", name="c").record.environment == "test"


def test_only_the_hmac_is_stored(store: APIKeyStore, engine: Engine) -> None:
    """No column of the stored row holds the key or its random part; the hash is the HMAC."""
    issued = store.issue("acme", name="ci")
    key = issued.key
    with engine.connect() as conn:
        row = conn.execute(select(APIKeyRow.__table__)).one()
    stored = " ".join(str(value) for value in row)
    assert key not in stored
    assert key[8:-6] not in stored
    assert key[12:40] not in stored
    expected = hmac.new(SECRET.encode(), key.encode(), hashlib.sha256).hexdigest()
    assert row.hash == expected
    assert hashlib.sha256(key.encode()).hexdigest() not in stored


@pytest.mark.parametrize(
    ("field", "options"),
    [
        ("name", {"name": ""}),
        ("name", {"name": "x" * 201}),
        ("scopes", {"scopes": "read"}),
        ("scopes", {"scopes": ["has space"]}),
        ("scopes", {"scopes": [1]}),
        ("rate_limit", {"rate_limit": 0}),
        ("rate_limit", {"rate_limit": True}),
        ("token_limit", {"token_limit": -5}),
        ("project_id", {"project_id": ""}),
        ("environment", {"environment": "prod"}),
        ("expires_at", {"expires_at": datetime(2031, 1, 1)}),
        ("expires_at", {"expires_at": datetime(2029, 1, 1, tzinfo=UTC)}),
        ("expires_at", {"expires_at": "2031-01-01"}),
    ],
)
def test_issue_rejects_bad_values(
    store: APIKeyStore, log: StatementLog, field: str, options: dict[str, Any]
) -> None:
    """A bad option is a ValidationError naming the field, and nothing is written."""
    options.setdefault("name", "ci")
    with pytest.raises(ValidationError) as info:
        store.issue("acme", **options)
    assert info.value.field == field
    assert log.count("INSERT") == 0


@pytest.mark.parametrize("tenant_id", ["../x", "a" * 200, "acme'; DROP TABLE x; --", "ACME"])
def test_malformed_tenant_ids_are_never_looked_up(
    store: APIKeyStore, log: StatementLog, tenant_id: str
) -> None:
    """issue, list, get, revoke and delete_for_tenant reject a malformed tenant id without SQL."""
    for operation in [
        lambda: store.issue(tenant_id, name="ci"),
        lambda: store.list(tenant_id),
        lambda: store.get(tenant_id, "key_" + "a" * 22),
        lambda: store.revoke(tenant_id, "key_" + "a" * 22),
        lambda: store.delete_for_tenant(tenant_id),
    ]:
        with pytest.raises(ValidationError):
            operation()
    assert log.statements == []


# -- verify -------------------------------------------------------------------


def test_verify_returns_record_and_identity(store: APIKeyStore) -> None:
    """A valid key verifies to its record, whose identity is authenticated for its tenant."""
    issued = store.issue("acme", name="ci", scopes=["write:resources"], rate_limit=10)
    store.clear_cache()
    record = store.verify(issued.key)
    assert record.id == issued.record.id
    identity = record.to_identity()
    assert identity.tenant_id == "acme"
    assert identity.source == "api_key"
    assert identity.authenticated
    assert identity.api_key_id == record.id
    assert identity.scopes == frozenset({"write:resources"})
    assert identity.api_key_rate_limit == 10
    assert identity.api_key_token_limit is None
    assert identity.actor == f"api_key:{record.id}"


@pytest.mark.parametrize("index", [8, 25, 50, 56])
def test_tampered_key_is_401_without_lookup(
    store: APIKeyStore, log: StatementLog, index: int
) -> None:
    """One changed character is a 401 decided by the checksum, before any database read."""
    key = store.issue("acme", name="ci").key
    store.clear_cache()
    log.statements.clear()
    with pytest.raises(Unauthorized) as info:
        store.verify(tamper(key, index))
    assert info.value.status == 401
    assert log.statements == []


@pytest.mark.parametrize("value", ["", "tk_live_short", "Bearer tk_live_x", "x" * 10_000, "é"])
def test_malformed_key_is_401_without_lookup(
    store: APIKeyStore, log: StatementLog, value: str
) -> None:
    """A malformed key is a 401 with no database read."""
    with pytest.raises(Unauthorized):
        store.verify(value)
    assert log.statements == []


def test_all_failures_look_alike(store: APIKeyStore, now: FakeNow) -> None:
    """Malformed, tampered, unknown, revoked and expired keys get the same problem document."""
    revoked = store.issue("acme", name="r")
    store.revoke("acme", revoked.record.id)
    expiring = store.issue("acme", name="e", expires_at=now.now + timedelta(hours=1))
    now.now += timedelta(hours=2)
    problems = []
    for key in [
        "nonsense",
        tamper(store.issue("acme", name="t").key, 20),
        generate_key(),
        revoked.key,
        expiring.key,
    ]:
        with pytest.raises(Unauthorized) as info:
            store.verify(key)
        problems.append((info.value.to_problem(), info.value.headers))
    assert all(p == problems[0] for p in problems)
    assert problems[0][1]["WWW-Authenticate"].startswith("Bearer")


def test_key_is_bound_to_the_secret(
    store: APIKeyStore, make_store: Callable[..., APIKeyStore]
) -> None:
    """A store with another secret does not accept the key (the HMAC differs)."""
    key = store.issue("acme", name="ci").key
    other = make_store(secret="another-secret-another-secret-0123456789")
    with pytest.raises(Unauthorized):
        other.verify(key)


def test_unknown_key_is_cached_as_unknown(
    store: APIKeyStore, log: StatementLog, clock: FakeClock
) -> None:
    """A well-formed unknown key is 401 and is not looked up again within the negative TTL."""
    key = generate_key()
    with pytest.raises(Unauthorized):
        store.verify(key)
    with pytest.raises(Unauthorized):
        store.verify(key)
    assert log.count("SELECT") == 1
    clock.now += 6
    with pytest.raises(Unauthorized):
        store.verify(key)
    assert log.count("SELECT") == 2


def test_verify_is_cached(store: APIKeyStore, log: StatementLog) -> None:
    """Repeated verification of one key reads the database once within the TTL."""
    key = store.issue("acme", name="ci").key
    store.clear_cache()
    log.statements.clear()
    for _ in range(5):
        store.verify(key)
    assert log.count("SELECT") == 1


def test_revoked_key_fails_at_once_in_this_process(store: APIKeyStore) -> None:
    """A key verified (and cached) a moment ago is a 401 right after its revocation."""
    issued = store.issue("acme", name="ci")
    store.verify(issued.key)
    revoked = store.revoke("acme", issued.record.id)
    assert revoked.revoked and revoked.revoked_at is not None
    with pytest.raises(Unauthorized):
        store.verify(issued.key)
    assert store.peek(issued.key) is None


def test_revocation_elsewhere_applies_within_the_ttl(
    make_store: Callable[..., APIKeyStore], engine: Engine, clock: FakeClock
) -> None:
    """Another process's revocation is seen here once the cached entry expires."""
    here = make_store(ttl_seconds=30)
    issued = here.issue("acme", name="ci")
    here.verify(issued.key)
    with engine.begin() as conn:  # another process writes straight to the database
        conn.execute(
            update(APIKeyRow)
            .where(APIKeyRow.id == issued.record.id)
            .values(revoked_at=datetime.now(UTC))
        )
    clock.now += 29
    here.verify(issued.key)
    clock.now += 2
    with pytest.raises(Unauthorized):
        here.verify(issued.key)


def test_revoke_is_idempotent(store: APIKeyStore, now: FakeNow) -> None:
    """Revoking twice keeps the first revocation time."""
    issued = store.issue("acme", name="ci")
    first = store.revoke("acme", issued.record.id)
    now.now += timedelta(minutes=5)
    second = store.revoke("acme", issued.record.id)
    assert second.revoked_at == first.revoked_at


def test_expired_key_is_401(store: APIKeyStore, now: FakeNow) -> None:
    """A key is accepted until its expiry and refused from then on, cached or not."""
    issued = store.issue("acme", name="ci", expires_at=now.now + timedelta(hours=1))
    store.verify(issued.key)
    now.now += timedelta(minutes=59)
    store.verify(issued.key)
    now.now += timedelta(minutes=1)
    with pytest.raises(Unauthorized):
        store.verify(issued.key)
    store.clear_cache()
    with pytest.raises(Unauthorized):
        store.verify(issued.key)


def test_peek_answers_from_cache_only(store: APIKeyStore, log: StatementLog) -> None:
    """``peek`` gives MISS before a read, the record after, None for malformed or unknown keys."""
    key = store.issue("acme", name="ci").key
    store.clear_cache()
    log.statements.clear()
    assert store.peek(key) is MISS
    assert store.peek("garbage") is None
    assert log.statements == []
    store.verify(key)
    peeked = store.peek(key)
    assert isinstance(peeked, APIKey) and peeked.tenant_id == "acme"
    unknown = generate_key()
    with pytest.raises(Unauthorized):
        store.verify(unknown)
    assert store.peek(unknown) is None


def test_concurrent_verifications_make_one_read(
    store: APIKeyStore, log: StatementLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty threads verifying one uncached key cause exactly one SELECT."""
    key = store.issue("acme", name="ci").key
    store.clear_cache()
    log.statements.clear()
    release = threading.Event()
    original = store._load

    def gated_load(digest: str) -> Any:
        assert release.wait(10)
        return original(digest)

    monkeypatch.setattr(store, "_load", gated_load)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.verify(key).id)) for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    _wait_for_waiters(store, 20)
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(results) == 20
    assert log.count("SELECT") == 1


def test_slow_fill_does_not_undo_a_revocation(
    store: APIKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that loaded the key before its revocation cannot re-cache it as valid."""
    issued = store.issue("acme", name="ci")
    store.clear_cache()
    loaded, release = threading.Event(), threading.Event()
    original = store._load

    def slow_load(digest: str) -> Any:
        entry = original(digest)
        loaded.set()
        assert release.wait(10)
        return entry

    monkeypatch.setattr(store, "_load", slow_load)
    reader = threading.Thread(target=store.verify, args=(issued.key,))
    reader.start()
    assert loaded.wait(10)
    monkeypatch.setattr(store, "_load", original)
    store.revoke("acme", issued.record.id)
    release.set()
    reader.join(10)
    with pytest.raises(Unauthorized):
        store.verify(issued.key)


def test_last_used_is_recorded_at_most_once_per_interval(
    make_store: Callable[..., APIKeyStore], log: StatementLog, clock: FakeClock, now: FakeNow
) -> None:
    """A verification that reads the store records last use, throttled per key."""
    store = make_store(ttl_seconds=0)
    issued = store.issue("acme", name="ci")
    assert issued.record.last_used_at is None
    log.statements.clear()
    for _ in range(3):
        store.verify(issued.key)
    assert log.count("UPDATE") == 1
    assert store.get("acme", issued.record.id).last_used_at == now.now
    clock.now += 61
    now.now += timedelta(seconds=61)
    store.verify(issued.key)
    assert log.count("UPDATE") == 2
    assert store.get("acme", issued.record.id).last_used_at == now.now


def test_last_used_tracking_can_be_turned_off(
    make_store: Callable[..., APIKeyStore], log: StatementLog
) -> None:
    """With touch_interval_seconds=0 verification never writes."""
    store = make_store(ttl_seconds=0, touch_interval_seconds=0)
    key = store.issue("acme", name="ci").key
    log.statements.clear()
    store.verify(key)
    assert log.count("UPDATE") == 0


# -- management ---------------------------------------------------------------


def test_get_own_key(store: APIKeyStore) -> None:
    """A tenant can read its own key's record."""
    issued = store.issue("acme", name="ci")
    assert store.get("acme", issued.record.id) == issued.record


def test_cross_tenant_get_and_revoke_are_not_found(store: APIKeyStore) -> None:
    """Another tenant's key answers exactly like a missing one, and revoking it does nothing."""
    issued = store.issue("acme", name="ci")
    missing_problem = None
    with pytest.raises(NotFound) as info:
        store.get("globex", "key_" + "z" * 22)
    missing_problem = info.value.to_problem()
    with pytest.raises(NotFound) as info:
        store.get("globex", issued.record.id)
    assert info.value.to_problem() == missing_problem
    with pytest.raises(NotFound) as info:
        store.revoke("globex", issued.record.id)
    assert info.value.to_problem() == missing_problem
    store.clear_cache()
    assert store.verify(issued.key).id == issued.record.id


@pytest.mark.parametrize("key_id", ["", "nope", "key_' OR 1=1 --", "key_" + "a" * 300])
def test_malformed_key_id_is_not_found(store: APIKeyStore, log: StatementLog, key_id: str) -> None:
    """A key id that cannot exist is NotFound without a query."""
    with pytest.raises(NotFound):
        store.get("acme", key_id)
    assert log.statements == []


def test_list_paginates_newest_first_per_tenant(store: APIKeyStore, now: FakeNow) -> None:
    """A tenant lists only its own keys, newest first, page by page; never the key."""
    ids = []
    for n in range(5):
        ids.append(store.issue("acme", name=f"k{n}").record.id)
        now.now += timedelta(seconds=1)
    store.issue("globex", name="other")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = store.list("acme", limit=2, cursor=cursor)
        seen.extend(record.id for record in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(ids))


def test_list_orders_same_instant_keys_stably(store: APIKeyStore) -> None:
    """Keys created at the same instant still page without loss or repeats."""
    ids = {store.issue("acme", name=f"k{n}").record.id for n in range(7)}
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = store.list("acme", limit=3, cursor=cursor)
        seen.extend(record.id for record in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == sorted(ids) and len(seen) == 7


@pytest.mark.parametrize("cursor", ["garbage", "W10", "WyJ4IiwieSJd", "x" * 300])
def test_list_rejects_bad_cursor(store: APIKeyStore, cursor: str) -> None:
    """A cursor the store did not make is a ValidationError naming ``cursor``."""
    with pytest.raises(ValidationError) as info:
        store.list("acme", cursor=cursor)
    assert info.value.field == "cursor"


@pytest.mark.parametrize("limit", [0, 201, True])
def test_list_rejects_bad_limit(store: APIKeyStore, limit: Any) -> None:
    """A limit outside 1..200 is a ValidationError naming ``limit``."""
    with pytest.raises(ValidationError) as info:
        store.list("acme", limit=limit)
    assert info.value.field == "limit"


def test_delete_for_tenant(store: APIKeyStore) -> None:
    """Deleting a tenant's keys stops them at once and leaves other tenants' keys alone."""
    first = store.issue("acme", name="a")
    store.issue("acme", name="b")
    other = store.issue("globex", name="c")
    store.verify(first.key)
    assert store.delete_for_tenant("acme") == 2
    with pytest.raises(Unauthorized):
        store.verify(first.key)
    assert store.list("acme").items == []
    assert store.verify(other.key).tenant_id == "globex"
    assert store.delete_for_tenant("acme") == 0


def test_api_key_to_dict_never_holds_the_key(store: APIKeyStore) -> None:
    """The JSON view has display parts and RFC 3339 times, never the key."""
    issued = store.issue("acme", name="ci", scopes=["a"])
    data = api_key_to_dict(issued.record)
    assert issued.key not in str(data)
    assert data["prefix"] == issued.key[:12] and data["last4"] == issued.key[-4:]
    assert data["scopes"] == ["a"]
    assert data["created_at"].endswith("Z")
    assert data["revoked_at"] is None


def test_missing_table_is_storage_error(engine: Engine) -> None:
    """A database failure during verification is a StorageError, not a 401 or a raw error."""
    store = APIKeyStore(engine, secret=SECRET)
    with pytest.raises(StorageError):
        store.verify(generate_key())
    with pytest.raises(StorageError):
        store.issue("acme", name="ci")


def _wait_for_waiters(store: APIKeyStore, count: int) -> None:
    cache = store._cache
    for _ in range(10_000):
        with cache._lock:
            if any(entry.users >= count for entry in cache._key_locks.values()):
                return
        threading.Event().wait(0.001)
    raise AssertionError("callers never queued")


# -- tenant deletion ----------------------------------------------------------


@pytest.fixture
def tenant_store(engine: Engine, clock: FakeClock) -> Iterator[TenantStore]:
    """A tenant store on the test database; its table is dropped afterwards."""
    store = TenantStore(engine, clock=clock)
    store.create_all()
    yield store
    TenantRow.__table__.drop(engine, checkfirst=True)


def test_tenant_delete_stops_its_keys_at_once(
    store: APIKeyStore, tenant_store: TenantStore
) -> None:
    """TenantStore.delete removes the tenant's keys; a cached key fails on the next call."""
    tenant_store.create(id="acme")
    tenant_store.create(id="globex")
    doomed = [store.issue("acme", name=name) for name in ("a", "b")]
    other = store.issue("globex", name="c")
    for issued in (*doomed, other):
        store.verify(issued.key)
    assert tenant_store.delete("acme") == 2
    for issued in doomed:
        assert store.peek(issued.key) is MISS
        with pytest.raises(Unauthorized):
            store.verify(issued.key)
    assert store.list("acme").items == []
    assert store.verify(other.key).tenant_id == "globex"


def test_recreated_tenant_does_not_revive_old_keys(
    store: APIKeyStore, tenant_store: TenantStore
) -> None:
    """A tenant re-created with a deleted tenant's id does not bring its old keys back."""
    tenant_store.create(id="acme")
    old = store.issue("acme", name="old")
    store.verify(old.key)
    tenant_store.delete("acme")
    tenant_store.create(id="acme")
    with pytest.raises(Unauthorized):
        store.verify(old.key)
    new = store.issue("acme", name="new")
    assert store.verify(new.key).tenant_id == "acme"
    assert [k.id for k in store.list("acme").items] == [new.record.id]


def test_tenant_delete_reaches_every_key_store_in_the_process(
    engine: Engine, make_store: Callable[..., APIKeyStore], tenant_store: TenantStore
) -> None:
    """Key stores on another engine to the same database forget the keys at once too."""
    second_engine = make_engine(engine.url.render_as_string(hide_password=False))
    try:
        here, there = make_store(), APIKeyStore(second_engine, secret=SECRET)
        tenant_store.create(id="acme")
        issued = here.issue("acme", name="ci")
        assert there.verify(issued.key).id == issued.record.id
        tenant_store.delete("acme")
        assert there.peek(issued.key) is MISS
        with pytest.raises(Unauthorized):
            there.verify(issued.key)
    finally:
        second_engine.dispose()


def test_tenant_and_key_deletes_share_one_transaction(
    engine: Engine, store: APIKeyStore, tenant_store: TenantStore
) -> None:
    """If deleting the keys fails, the tenant is not deleted either and its key still works."""
    tenant_store.create(id="acme")
    issued = store.issue("acme", name="ci")

    def fail_key_delete(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE") and "tenantkit_api_keys" in statement:
            raise OperationalError(statement, None, RuntimeError("disk full"))

    event.listen(engine, "before_cursor_execute", fail_key_delete)
    try:
        with pytest.raises(StorageError):
            tenant_store.delete("acme")
    finally:
        event.remove(engine, "before_cursor_execute", fail_key_delete)
    tenant_store.clear_cache()
    assert tenant_store.get("acme").id == "acme"
    store.clear_cache()
    assert store.verify(issued.key).tenant_id == "acme"


def test_unknown_tenant_delete_leaves_keys_alone(
    store: APIKeyStore, tenant_store: TenantStore
) -> None:
    """Deleting a tenant that does not exist is TenantNotFound and deletes no key."""
    issued = store.issue("ghost", name="ci")
    with pytest.raises(TenantNotFound):
        tenant_store.delete("ghost")
    assert store.verify(issued.key).tenant_id == "ghost"


def test_kit_rejects_a_deleted_tenants_key(engine: Engine, tenant_store: TenantStore) -> None:
    """Through the kit, sync and async, a deleted tenant's key is 401 on the next request."""
    kit = TenantKit(
        Settings(api_key_secret=SECRET, resolvers=("api_key",)),
        engine=engine,
        tenant_store=tenant_store,
    )
    kit.create_all()
    assert kit.api_keys is not None
    tenant_store.create(id="acme")
    key = kit.api_keys.issue("acme", name="ci").key
    request = RequestInfo(method="GET", path="/x", headers={"x-api-key": key})
    assert kit.admit(request).tenant.id == "acme"
    assert asyncio.run(kit.admit_async(request)).tenant.id == "acme"
    kit.tenants.delete("acme")
    with pytest.raises(Unauthorized):
        kit.admit(request)
    with pytest.raises(Unauthorized):
        asyncio.run(kit.admit_async(request))


# -- CLI ----------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    """Parse ``argv`` the way ``tenantkit`` does and run the chosen handler in-process."""
    parser = argparse.ArgumentParser(prog="tenantkit")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


@pytest.fixture
def cli_env(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point the CLI's settings at the test database and secret; yield the URL."""
    url = engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("TENANTKIT_DATABASE_URL", url)
    monkeypatch.setenv("TENANTKIT_API_KEY_SECRET", SECRET)
    yield url
    TenantRow.__table__.drop(engine, checkfirst=True)


def cli_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    code = run_cli(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_cli_issue_list_revoke(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """issue prints the key once; list never shows it; revoke stops it working."""
    cli_json(capsys, ["tenants", "create", "acme"])
    issued = cli_json(
        capsys,
        ["api-keys", "issue", "acme", "--name", "ci", "--scope", "read:usage",
         "--scope", "write:resources", "--rate-limit", "30", "--expires-in-days", "30"],
    )  # fmt: skip
    key = issued["key"]
    assert KEY_SHAPE.fullmatch(key) and issued["prefix"] == key[:12]
    assert issued["scopes"] == ["read:usage", "write:resources"]
    assert issued["rate_limit"] == 30 and issued["expires_at"] is not None
    store = APIKeyStore(engine, secret=SECRET)
    assert store.verify(key).id == issued["id"]
    run_cli(["api-keys", "list", "acme"])
    out = capsys.readouterr().out
    assert key not in out
    assert [k["id"] for k in json.loads(out)["items"]] == [issued["id"]]
    revoked = cli_json(capsys, ["api-keys", "revoke", "acme", issued["id"]])
    assert revoked["revoked_at"] is not None
    store.clear_cache()
    with pytest.raises(Unauthorized):
        store.verify(key)


def test_cli_tenant_delete_removes_its_keys(
    cli_env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deleting a tenant from the CLI also deletes its API keys."""
    cli_json(capsys, ["tenants", "create", "acme"])
    key = cli_json(capsys, ["api-keys", "issue", "acme", "--name", "ci"])["key"]
    result = cli_json(capsys, ["tenants", "delete", "acme"])
    assert result == {"deleted": "acme", "api_keys_deleted": 1}
    with pytest.raises(Unauthorized):
        APIKeyStore(engine, secret=SECRET).verify(key)
    TenantRow.__table__.drop(engine, checkfirst=True)


def test_cli_without_secret_exits_1(
    cli_env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key commands without TENANTKIT_API_KEY_SECRET exit 1 saying what to set."""
    monkeypatch.delenv("TENANTKIT_API_KEY_SECRET")
    assert run_cli(["api-keys", "issue", "acme", "--name", "ci"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "TENANTKIT_API_KEY_SECRET" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["api-keys", "revoke", "globex", "KEY"], "not found"),
        (["api-keys", "revoke", "acme", "key_nope"], "not found"),
        (["api-keys", "issue", "../x", "--name", "ci"], "tenant_id"),
        (["api-keys", "issue", "acme", "--name", "ci", "--scope", "a b"], "scope"),
        (["api-keys", "issue", "acme", "--name", "ci", "--expires-at", "2000-01-01T00:00Z"],
         "future"),
        (["api-keys", "list", "acme", "--limit", "0"], "limit"),
    ],
)  # fmt: skip
def test_cli_key_errors_exit_1(
    cli_env: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Key command errors (another tenant's key included) exit 1 with one line on stderr."""
    cli_json(capsys, ["tenants", "create", "acme"])
    key_id = cli_json(capsys, ["api-keys", "issue", "acme", "--name", "ci"])["id"]
    assert run_cli([part.replace("KEY", key_id) for part in argv]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and message in err


def test_cli_rejects_naive_expiry(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An --expires-at without a timezone is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as info:
        run_cli(["api-keys", "issue", "acme", "--name", "ci", "--expires-at", "2030-01-01"])
    assert info.value.code == 2
