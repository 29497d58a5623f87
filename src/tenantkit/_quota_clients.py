"""The Redis backend's asyncio clients: one per event loop, closed before their loop.

An asyncio connection belongs to the loop that opened it, so each loop gets its
own client, kept while the loop lives (another thread's loop may have calls in
flight on it). Each client comes with a small async generator started in its
loop: ``asyncio.run`` and ``asyncio.Runner`` close a loop's async generators
before closing the loop (``shutdown_asyncgens``), and closing this one closes
the client, the asyncio way, on its own loop. A loop closed without that step
can no longer close its connections, which sit in reference cycles until the
cyclic garbage collector runs: when the next loop asks for a client, their
sockets are shut down, which ends the connections on the Redis side at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any


class LoopClients:
    """A ``Connected`` (client, scripts, sentinel clients) per event loop, built by ``connect``."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self.clients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._watches: dict[asyncio.AbstractEventLoop, _Watch] = {}

    async def get(self) -> Any:
        """The running loop's client, built on first use (dropping closed loops' first)."""
        loop = asyncio.get_running_loop()
        client = self.clients.get(loop)
        if client is None:
            with self._lock:
                self._drop_closed()
                client = self.clients[loop] = self._connect()
                watch = self._watches[loop] = _Watch(self, loop, client)
            await watch.start()
        return client

    async def aclose(self) -> None:
        """Close the running loop's client, have running loops close theirs, shut the rest."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._drop_closed()
            mine = self._watches.pop(loop, None)
            others, self._watches = self._watches, {}
            self.clients = {}
        for other, watch in others.items():
            if other.is_running():  # in another thread
                with contextlib.suppress(RuntimeError):  # closed meanwhile
                    asyncio.run_coroutine_threadsafe(watch.close(), other)
                    continue
            watch.abandon()
        if mine is not None:
            await mine.close()

    def drop_closed(self) -> None:
        """Shut down the clients of closed loops (from any thread, without a loop)."""
        with self._lock:
            self._drop_closed()

    def _drop_closed(self) -> None:
        for loop in [loop for loop in self._watches if loop.is_closed()]:
            self.clients.pop(loop, None)
            self._watches.pop(loop).abandon()

    def _forget(self, loop: asyncio.AbstractEventLoop, watch: _Watch) -> None:
        with self._lock:
            if self._watches.get(loop) is watch:
                del self._watches[loop]
                self.clients.pop(loop, None)


class _Watch:
    """Closes one loop's client when the loop shuts its async generators down."""

    def __init__(self, owner: LoopClients, loop: asyncio.AbstractEventLoop, client: Any) -> None:
        self._owner = owner
        self._loop = loop
        self._client = client
        self._abandoned = False
        self._gen = self._watch()

    async def start(self) -> None:
        await self._gen.__anext__()  # the loop now knows the generator

    async def close(self) -> None:
        await self._gen.aclose()

    def abandon(self) -> None:
        """The loop is gone: shut the sockets and finish the generator without awaiting."""
        self._abandoned = True
        for client in (self._client[0], *self._client[3]):
            _shut_down(client)
        with contextlib.suppress(StopIteration, RuntimeError):
            self._gen.aclose().send(None)

    async def _watch(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if not self._abandoned:  # (abandoned under the owner's lock, already forgotten)
                self._owner._forget(self._loop, self)
                await _close(self._client[0])
                for sentinel in self._client[3]:  # a Sentinel's own connections to its sentinels
                    await _close(sentinel)


async def _close(client: Any) -> None:
    await client.aclose()
    pool = getattr(client, "connection_pool", None)  # a cluster client has none
    if pool is not None:
        await pool.disconnect()


def _shut_down(client: Any) -> None:
    """End the connections of a client whose loop has closed (no await is possible)."""
    for connection in _connections(client):
        writer = getattr(connection, "_writer", None)
        sock = writer.transport.get_extra_info("socket") if writer is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _connections(client: Any) -> Iterator[Any]:
    pool = getattr(client, "connection_pool", None)
    get_nodes = getattr(client, "get_nodes", None)  # a cluster: connections per node
    if get_nodes is not None:
        with contextlib.suppress(Exception):
            for node in get_nodes():
                yield from list(getattr(node, "_connections", ()))
    if pool is not None:
        yield from list(getattr(pool, "_available_connections", ()))
        yield from list(getattr(pool, "_in_use_connections", ()))
