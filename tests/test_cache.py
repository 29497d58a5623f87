"""The versioned read-through cache shared by the tenant and API-key stores."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tenantkit._cache import MISS, VersionedCache
from test_review_support import FakeClock


@dataclass(frozen=True)
class Item:
    key: str
    version: int


def make_cache(
    clock: FakeClock | None = None,
    *,
    ttl: float = 30.0,
    negative_ttl: float = 5.0,
    maxsize: int = 100,
) -> VersionedCache[str, Item]:
    return VersionedCache(
        version_of=lambda item: item.version,
        ttl_seconds=ttl,
        negative_ttl_seconds=negative_ttl,
        maxsize=maxsize,
        clock=clock or FakeClock(),
    )


def wait_for_waiters(cache: VersionedCache[str, Item], key: str, count: int) -> None:
    """Block until ``count`` callers are inside ``get`` for ``key`` (one loads, others queue)."""
    for _ in range(10_000):
        with cache._lock:
            entry = cache._key_locks.get(key)
            if entry is not None and entry.users >= count:
                return
        threading.Event().wait(0.001)
    raise AssertionError("callers never queued")


def test_miss_then_hit() -> None:
    """A miss calls the loader once; the next get is served from the cache."""
    cache = make_cache()
    calls: list[str] = []

    def load(key: str) -> Item:
        calls.append(key)
        return Item(key, 1)

    assert cache.peek("a") is MISS
    assert cache.get("a", load) == Item("a", 1)
    assert cache.get("a", load) == Item("a", 1)
    assert cache.peek("a") == Item("a", 1)
    assert calls == ["a"]


def test_entry_expires_after_ttl() -> None:
    """An entry is re-read once the TTL has passed on the cache's clock."""
    clock = FakeClock()
    cache = make_cache(clock, ttl=30)
    cache.put("a", Item("a", 1))
    clock.now += 29
    assert cache.peek("a") == Item("a", 1)
    clock.now += 2
    assert cache.peek("a") is MISS


def test_unknown_is_cached_for_the_negative_ttl() -> None:
    """A ``None`` from the loader is remembered as unknown for the negative TTL only."""
    clock = FakeClock()
    cache = make_cache(clock, negative_ttl=5)
    calls = 0

    def load(key: str) -> Item | None:
        nonlocal calls
        calls += 1
        return None

    assert cache.get("a", load) is None
    assert cache.get("a", load) is None
    assert calls == 1
    assert cache.peek("a") is None
    clock.now += 6
    assert cache.peek("a") is MISS
    assert cache.get("a", load) is None
    assert calls == 2


def test_zero_negative_ttl_disables_negative_caching() -> None:
    """With a negative TTL of 0 every lookup of an unknown key reads the store."""
    cache = make_cache(negative_ttl=0)
    assert cache.get("a", lambda key: None) is None
    assert cache.peek("a") is MISS


def test_put_replaces_unknown() -> None:
    """A value written by this process replaces a cached unknown at once."""
    cache = make_cache()
    cache.get("a", lambda key: None)
    cache.put("a", Item("a", 1))
    assert cache.peek("a") == Item("a", 1)


def test_put_never_replaces_a_newer_version() -> None:
    """An older version put after a newer one leaves the newer one cached."""
    cache = make_cache()
    cache.put("a", Item("a", 4))
    cache.put("a", Item("a", 3))
    assert cache.peek("a") == Item("a", 4)
    cache.put("a", Item("a", 5))
    assert cache.peek("a") == Item("a", 5)


def slow_fill(
    cache: VersionedCache[str, Item], found: Item | None, meanwhile: Callable[[], object]
) -> list[Item | None]:
    """Get ``"a"`` with a loader that finds ``found`` and returns only after ``meanwhile()``.

    Return what that ``get`` returned (one item, or none if it raised).
    """
    loaded, release = threading.Event(), threading.Event()
    result: list[Item | None] = []

    def slow_load(key: str) -> Item | None:
        loaded.set()
        assert release.wait(10)
        return found

    reader = threading.Thread(target=lambda: result.append(cache.get("a", slow_load)))
    reader.start()
    assert loaded.wait(10)
    try:
        meanwhile()
    finally:
        release.set()
        reader.join(10)
    return result


def test_slow_fill_never_overwrites_a_newer_version() -> None:
    """A reader that read version 3 does not replace version 4 cached while it was reading."""
    cache = make_cache()
    assert slow_fill(cache, Item("a", 3), lambda: cache.put("a", Item("a", 4))) == [Item("a", 3)]
    assert cache.peek("a") == Item("a", 4)


def test_slow_fill_of_a_newer_version_wins() -> None:
    """A fill that read a newer version than the one put meanwhile is kept."""
    cache = make_cache()
    slow_fill(cache, Item("a", 6), lambda: cache.put("a", Item("a", 5)))
    assert cache.peek("a") == Item("a", 6)


def test_slow_not_found_never_overwrites_a_put() -> None:
    """A reader that found nothing does not hide a value created while it was reading."""
    cache = make_cache()
    assert slow_fill(cache, None, lambda: cache.put("a", Item("a", 1))) == [None]
    assert cache.peek("a") == Item("a", 1)


def test_fill_started_before_invalidate_is_dropped() -> None:
    """A read under way when its key is invalidated (a delete) does not refill the cache."""
    cache = make_cache()
    slow_fill(cache, Item("a", 3), lambda: cache.invalidate("a"))
    assert cache.peek("a") is MISS


def test_concurrent_misses_make_one_load() -> None:
    """Twenty threads missing the same key at once cause exactly one loader call."""
    cache = make_cache()
    release = threading.Event()
    calls = 0
    results: list[Item | None] = []

    def slow_load(key: str) -> Item:
        nonlocal calls
        calls += 1
        assert release.wait(10)
        return Item(key, 1)

    threads = [
        threading.Thread(target=lambda: results.append(cache.get("a", slow_load)))
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    wait_for_waiters(cache, "a", 20)
    release.set()
    for thread in threads:
        thread.join(10)
    assert calls == 1
    assert results == [Item("a", 1)] * 20
    assert cache._key_locks == {}


def test_loads_of_different_keys_do_not_wait_for_each_other() -> None:
    """A slow load of one key does not block a load of another key."""
    cache = make_cache()
    other: list[Item | None] = []
    slow_fill(cache, Item("a", 1), lambda: other.append(cache.get("b", lambda k: Item(k, 1))))
    assert other == [Item("b", 1)]


def test_loader_error_propagates_and_is_not_cached() -> None:
    """A failing loader raises to its caller, caches nothing and frees the key."""
    cache = make_cache()

    def failing(key: str) -> Item:
        raise RuntimeError("store down")

    with pytest.raises(RuntimeError, match="store down"):
        cache.get("a", failing)
    assert cache.peek("a") is MISS
    assert cache._flights == {}
    assert cache._key_locks == {}
    assert cache.get("a", lambda key: Item(key, 1)) == Item("a", 1)


def test_lru_evicts_least_recently_used() -> None:
    """Past ``maxsize`` the least recently used entry goes first."""
    cache = make_cache(maxsize=2)
    cache.put("a", Item("a", 1))
    cache.put("b", Item("b", 1))
    assert cache.peek("a") is not MISS
    cache.put("c", Item("c", 1))
    assert cache.peek("b") is MISS
    assert cache.peek("a") == Item("a", 1)


def test_zero_ttl_disables_caching() -> None:
    """With a TTL of 0 every get reads the store."""
    cache = make_cache(ttl=0)
    calls = 0

    def load(key: str) -> Item:
        nonlocal calls
        calls += 1
        return Item(key, 1)

    cache.get("a", load)
    cache.get("a", load)
    assert calls == 2


def test_clear_forgets_everything() -> None:
    """``clear`` empties both the value and the unknown entries."""
    cache = make_cache()
    cache.put("a", Item("a", 1))
    cache.get("b", lambda key: None)
    cache.clear()
    assert cache.peek("a") is MISS
    assert cache.peek("b") is MISS


def test_miss_sentinel_repr() -> None:
    """The ``MISS`` sentinel prints as MISS in test failures and logs."""
    assert repr(MISS) == "MISS"
