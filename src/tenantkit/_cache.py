"""A versioned read-through cache: TTL + LRU, negative entries, single-flight fills.

Shared by the tenant store and the API-key store. Three rules hold:

- a fill never replaces a cached entry of a newer version, and a fill whose
  read began before an ``invalidate`` of its key is dropped (so a slow reader
  cannot resurrect a row deleted or updated meanwhile);
- a key the loader reports as unknown (``None``) is cached as unknown for the
  shorter negative TTL;
- concurrent misses for one key make one loader call: the first caller holds
  the key's lock while it loads, the others wait and then read the cache.
"""

from __future__ import annotations

import enum
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar

from cachetools import TTLCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class CacheMiss(enum.Enum):
    """The type of ``MISS``: the cache cannot answer without a store read."""

    MISS = "MISS"

    def __repr__(self) -> str:
        return "MISS"


MISS: Final = CacheMiss.MISS
Miss: TypeAlias = Literal[CacheMiss.MISS]


@dataclass
class _Flight:
    """One loader call in progress; ``stale`` is set when its key is invalidated."""

    stale: bool = False


@dataclass
class _KeyLock:
    lock: threading.Lock
    users: int = 0


class VersionedCache(Generic[K, V]):
    """Cache values by key, each carrying a version read by ``version_of``.

    Thread-safe. ``clock`` (seconds, monotonic) drives both TTLs, so tests can
    use a fake one.
    """

    def __init__(
        self,
        *,
        version_of: Callable[[V], int],
        ttl_seconds: float,
        negative_ttl_seconds: float,
        maxsize: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._version_of = version_of
        self._lock = threading.Lock()
        self._values: TTLCache[K, V] = TTLCache(maxsize, ttl_seconds, timer=clock)
        self._unknown: TTLCache[K, bool] = TTLCache(maxsize, negative_ttl_seconds, timer=clock)
        self._flights: dict[K, _Flight] = {}
        self._key_locks: dict[K, _KeyLock] = {}
        self._enabled = ttl_seconds > 0 and maxsize > 0
        self._negative = negative_ttl_seconds > 0 and maxsize > 0

    def peek(self, key: K) -> V | Miss | None:
        """Return the cached value, ``None`` for a cached unknown, or ``MISS``; never block."""
        with self._lock:
            return self._lookup(key)

    def get(self, key: K, load: Callable[[K], V | None]) -> V | None:
        """Return the value for ``key``, calling ``load`` on a miss (one caller per key)."""
        with self._lock:
            hit = self._lookup(key)
        if hit is not MISS:
            return hit
        key_lock = self._acquire_key_lock(key)
        try:
            with key_lock.lock:
                with self._lock:
                    hit = self._lookup(key)
                    if hit is not MISS:
                        return hit
                    flight = self._flights[key] = _Flight()
                try:
                    value = load(key)
                except BaseException:
                    with self._lock:
                        self._flights.pop(key, None)
                    raise
                with self._lock:
                    self._flights.pop(key, None)
                    if not flight.stale:
                        self._store(key, value)
                return value
        finally:
            self._release_key_lock(key)

    def put(self, key: K, value: V) -> None:
        """Store a value written by this process, unless a newer version is cached."""
        with self._lock:
            self._store(key, value)

    def invalidate(self, key: K) -> None:
        """Forget ``key`` and drop the result of any read of it already under way."""
        with self._lock:
            self._values.pop(key, None)
            self._unknown.pop(key, None)
            flight = self._flights.get(key)
            if flight is not None:
                flight.stale = True

    def clear(self) -> None:
        """Forget every entry and drop the result of every read under way."""
        with self._lock:
            self._values.clear()
            self._unknown.clear()
            for flight in self._flights.values():
                flight.stale = True

    def _lookup(self, key: K) -> V | Miss | None:
        value = self._values.get(key)
        if value is not None:
            return value
        if key in self._unknown:
            return None
        return MISS

    def _store(self, key: K, value: V | None) -> None:
        current = self._values.get(key)
        if value is None:
            # A cached value got there during our read (a put or a newer fill):
            # it is newer information than our "not found".
            if current is None and self._negative:
                self._unknown[key] = True
            return
        if current is not None and self._version_of(current) > self._version_of(value):
            return
        self._unknown.pop(key, None)
        if self._enabled:
            self._values[key] = value

    def _acquire_key_lock(self, key: K) -> _KeyLock:
        with self._lock:
            entry = self._key_locks.get(key)
            if entry is None:
                entry = self._key_locks[key] = _KeyLock(threading.Lock())
            entry.users += 1
            return entry

    def _release_key_lock(self, key: K) -> None:
        with self._lock:
            entry = self._key_locks[key]
            entry.users -= 1
            if entry.users == 0:
                del self._key_locks[key]


class CacheGroup(Generic[K]):
    """Every live cache of one kind in this process, so a write through one store reaches all.

    A store registers its cache; a write through any store then calls
    ``invalidate`` for the keys it changed, and every other store in the
    process reads them afresh on its next lookup.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Weak: a store that is garbage-collected drops out without unregistering.
        self._caches: weakref.WeakSet[VersionedCache[K, Any]] = weakref.WeakSet()

    def register(self, cache: VersionedCache[K, Any]) -> None:
        """Have ``invalidate`` reach ``cache`` from now on."""
        with self._lock:
            self._caches.add(cache)

    def invalidate(self, keys: Iterable[K]) -> None:
        """Forget ``keys`` in every registered cache (dropping reads of them under way)."""
        keys = list(keys)
        if not keys:
            return
        with self._lock:
            caches = list(self._caches)
        for cache in caches:
            for key in keys:
                cache.invalidate(key)
