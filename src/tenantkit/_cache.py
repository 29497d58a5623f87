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
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar

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


class _TTLMap(Generic[K, V]):
    """A TTL + LRU map with ``cachetools.TTLCache``'s rules and a hit path of C dict calls.

    An entry lives for ``ttl`` seconds from its last ``set`` (alive while
    ``clock() < expires``); a ``get`` hit makes it the most recently used; a
    ``set`` first drops every expired entry, then the least recently used ones
    while full. ``get`` is safe without the owner's lock (each step is one
    atomic dict operation); every other method runs under it.
    """

    __slots__ = ("_clock", "_expiry", "_items", "_maxsize", "_ttl")

    def __init__(self, maxsize: int, ttl: float, clock: Callable[[], float]) -> None:
        self._maxsize = maxsize
        self._ttl = ttl
        self._clock = clock
        # Least recently used first: a value and the time it expires.
        self._items: OrderedDict[K, tuple[V, float]] = OrderedDict()
        # Earliest expiry first (the order of the last set, as the TTL is fixed).
        self._expiry: OrderedDict[K, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        """Return the live value of ``key`` (making it the most recently used) or ``None``."""
        entry = self._items.get(key)
        if entry is None or not self._clock() < entry[1]:
            return None
        try:  # noqa: SIM105 - contextlib.suppress costs more than this whole lookup
            self._items.move_to_end(key)
        except KeyError:  # dropped meanwhile by a writer: the read still came first
            pass
        return entry[0]

    def __contains__(self, key: object) -> bool:
        """Return whether ``key`` has a live value, without touching the LRU order."""
        entry = self._items.get(key)  # type: ignore[arg-type]
        return entry is not None and self._clock() < entry[1]

    def set(self, key: K, value: V) -> None:
        """Store ``value`` for ``ttl`` seconds from now, evicting as ``TTLCache`` does."""
        now = self._clock()
        self._expire(now)
        items = self._items
        if key not in items:
            while len(items) >= self._maxsize:
                old, _ = items.popitem(last=False)
                self._expiry.pop(old, None)
        expires = now + self._ttl
        items[key] = (value, expires)
        items.move_to_end(key)
        self._expiry[key] = expires
        self._expiry.move_to_end(key)

    def pop(self, key: K) -> None:
        """Forget ``key``."""
        self._items.pop(key, None)
        self._expiry.pop(key, None)

    def clear(self) -> None:
        """Forget every entry."""
        self._items.clear()
        self._expiry.clear()

    def _expire(self, now: float) -> None:
        expiry = self._expiry
        while expiry:
            key, expires = next(iter(expiry.items()))
            if now < expires:
                return
            del expiry[key]
            self._items.pop(key, None)


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
        self._values: _TTLMap[K, V] = _TTLMap(maxsize, ttl_seconds, clock)
        self._unknown: _TTLMap[K, bool] = _TTLMap(maxsize, negative_ttl_seconds, clock)
        self._flights: dict[K, _Flight] = {}
        self._key_locks: dict[K, _KeyLock] = {}
        self._enabled = ttl_seconds > 0 and maxsize > 0
        self._negative = negative_ttl_seconds > 0 and maxsize > 0

    def hit(self, key: K) -> V | None:
        """Return the cached value of ``key`` or ``None``; lock-free, for the request path."""
        return self._values.get(key)

    def peek(self, key: K) -> V | Miss | None:
        """Return the cached value, ``None`` for a cached unknown, or ``MISS``; never block."""
        # A hit needs no lock: it is one atomic read (see _TTLMap.get).
        value = self._values.get(key)
        if value is not None:
            return value
        with self._lock:
            return self._lookup(key)

    def get(self, key: K, load: Callable[[K], V | None]) -> V | None:
        """Return the value for ``key``, calling ``load`` on a miss (one caller per key)."""
        value = self._values.get(key)
        if value is not None:
            return value
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
            self._values.pop(key)
            self._unknown.pop(key)
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
                self._unknown.set(key, True)
            return
        if current is not None and self._version_of(current) > self._version_of(value):
            return
        self._unknown.pop(key)
        if self._enabled:
            self._values.set(key, value)

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
