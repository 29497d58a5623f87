"""The Starlette example's cache invalidation channel: a bad message touches no other tenant."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
import redis.asyncio
from examples.starlette_app.invalidation import Invalidations

from tenantkit.kit import TenantKit
from tenantkit.settings import JWTSettings, Settings
from tenantkit.tenants import TenantConfig

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _until(predicate: Callable[[], bool]) -> None:
    """Wait for ``predicate()`` (a bounded poll, not a sleep the outcome depends on)."""
    with anyio.fail_after(10):
        while not predicate():
            await anyio.sleep(0.01)


async def test_poison_message_is_skipped_without_evicting_other_tenants(
    tmp_path: Path, redis_url: str
) -> None:
    """A malformed invalidation is dropped alone: tenant B stays cached, A's change applies."""
    kit = TenantKit(
        Settings(
            database_url=f"sqlite:///{tmp_path / 'inv.db'}",
            resolvers=("jwt",),
            jwt=JWTSettings(secret="invalidation-test-secret-long-enough-for-hs256"),
        ),
    )
    kit.create_all()
    for tenant_id in ("acme", "globex"):
        kit.tenants.create(id=tenant_id, name=tenant_id)
        kit.tenants.get(tenant_id)  # cached
    channel = f"tk-test-inv-{uuid.uuid4().hex[:10]}"
    invalidations = Invalidations(kit, redis_url, channel=channel)
    publisher = redis.asyncio.from_url(redis_url)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(invalidations.run)

            async def subscribed() -> bool:
                found = await publisher.pubsub_numsub(channel)
                return bool(found and found[0][1] >= 1)

            with anyio.fail_after(10):
                while not await subscribed():
                    await anyio.sleep(0.01)
            await publisher.publish(channel, "tenant:'; DROP TABLE tenants;--")
            await publisher.publish(channel, b"tenant:\xff\xfe")
            await publisher.publish(channel, "tenant:acme")
            await _until(lambda: not isinstance(kit.tenants.peek("acme"), TenantConfig))
            assert isinstance(kit.tenants.peek("globex"), TenantConfig)
            tg.cancel_scope.cancel()
    finally:
        await publisher.aclose()
        await invalidations.aclose()
        kit.engine.dispose()
