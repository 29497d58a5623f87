"""Tell every process when a tenant or its API keys change (Redis pub/sub).

Each process caches tenant configs and API keys for ``CACHE_TTL_SECONDS``.
The process that makes a change drops its own copy at once (tenantkit does
that); with Redis configured it also publishes the change, and every process
listening drops its copy too, so a PUT applies, and a revoked key fails, on
the next request whichever process serves it. A process that was cut off
from Redis clears its caches when it reconnects (it may have missed
messages); if publishing fails, the others converge within the TTL.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskStatus

from tenantkit.kit import TenantKit

log = logging.getLogger("starlette_app.invalidation")
PUBLISH_TIMEOUT_SECONDS = 1.0
RECONNECT_SECONDS = 1.0


class Invalidations:
    """Publish and apply cache invalidations on ``channel`` (a no-op without Redis)."""

    def __init__(self, kit: TenantKit, storage_uri: str, *, channel: str) -> None:
        self.kit = kit
        self.channel = channel
        # Only plain Redis URLs: a cluster or sentinel URI keeps the TTL behaviour.
        self.uri = storage_uri if urlsplit(storage_uri).scheme in ("redis", "rediss") else None
        self._client: Any = None

    @property
    def enabled(self) -> bool:
        """Whether changes are shared with other processes."""
        return self.uri is not None

    async def tenant_changed(self, tenant_id: str) -> None:
        """Tell the other processes that ``tenant_id`` was created, changed or deleted."""
        await self._publish(f"tenant:{tenant_id}")

    async def keys_changed(self, tenant_id: str) -> None:
        """Tell the other processes that an API key of ``tenant_id`` was revoked or deleted."""
        await self._publish(f"keys:{tenant_id}")

    async def _publish(self, message: str) -> None:
        if self.uri is None:
            return
        try:
            with anyio.fail_after(PUBLISH_TIMEOUT_SECONDS):
                await self._redis().publish(self.channel, message)
        except Exception as exc:  # the change is committed; others converge within the TTL
            log.warning("could not publish cache invalidation %r: %s", message, exc)

    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio

            assert self.uri is not None
            self._client = redis.asyncio.from_url(self.uri, socket_timeout=5)
        return self._client

    def apply(self, message: str) -> None:
        """Drop what ``message`` names from this process's caches."""
        kind, _, tenant_id = message.partition(":")
        if kind == "tenant":
            self.kit.tenants.invalidate(tenant_id)
        if (kind == "keys" or kind == "tenant") and self.kit.api_keys is not None:
            # Keys are cached by their hash, which a key id does not give: drop them all
            # (they reload on demand, one query each).
            self.kit.api_keys.clear_cache()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled, reconnecting (and clearing the caches) after a failure."""
        task_status.started()
        if self.uri is None:
            return
        import redis.asyncio

        # Its own connection, without a read timeout: the subscription idles between changes.
        listener = redis.asyncio.from_url(self.uri, health_check_interval=30)
        missed = False
        try:
            while True:
                try:
                    async with listener.pubsub() as pubsub:
                        await pubsub.subscribe(self.channel)
                        if missed:  # messages may have been lost meanwhile
                            self._clear()
                        async for message in pubsub.listen():
                            if message.get("type") == "message":
                                self._apply_one(message["data"])
                except Exception as exc:
                    log.warning("cache invalidation channel lost (%s); retrying", exc)
                    missed = True
                    await anyio.sleep(RECONNECT_SECONDS)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    def _apply_one(self, data: Any) -> None:
        """Apply one message; a malformed one is logged and dropped on its own.

        Letting it end the subscription would clear every tenant's cache on the
        reconnect and lose the messages published meanwhile.
        """
        try:
            self.apply(_text(data))
        except Exception as exc:
            log.warning("ignored malformed cache invalidation %r: %s", data, exc)

    def _clear(self) -> None:
        self.kit.tenants.clear_cache()
        if self.kit.api_keys is not None:
            self.kit.api_keys.clear_cache()

    async def aclose(self) -> None:
        """Close the Redis connection."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _text(data: Any) -> str:
    return data.decode() if isinstance(data, bytes) else str(data)
