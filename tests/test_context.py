"""The tenant context: one ContextVar, fail closed outside a tenant, reset always."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from tenantkit import context
from tenantkit.errors import NoTenantError, ValidationError
from tenantkit.types import Identity, TenantConfig


def test_no_tenant_raises_clear_error() -> None:
    """Outside a request nothing falls back to a global tenant."""
    with pytest.raises(NoTenantError, match="no tenant in context"):
        context.current_tenant_id()
    with pytest.raises(NoTenantError):
        context.current_identity()
    assert context.get_context() is None


def test_no_tenant_error_is_lookup_error() -> None:
    """NoTenantError also inherits LookupError."""
    assert issubclass(NoTenantError, LookupError)


def test_bound_tenant_by_id_and_reset() -> None:
    """bound_tenant binds for the block and restores the previous state after it."""
    with context.bound_tenant("acme") as ctx:
        assert context.current_tenant_id() == "acme"
        assert ctx.identity.source == "system"
        with context.bound_tenant("globex"):
            assert context.current_tenant_id() == "globex"
        assert context.current_tenant_id() == "acme"
    assert context.get_context() is None


def test_bound_tenant_resets_after_exception() -> None:
    """An exception inside the block still resets the context."""
    with pytest.raises(RuntimeError), context.bound_tenant("acme"):
        raise RuntimeError("boom")
    assert context.get_context() is None


def test_bound_tenant_with_config_and_identity() -> None:
    """A TenantConfig or an Identity can be bound; current_tenant needs the config."""
    config = TenantConfig(id="acme", name="Acme")
    with context.bound_tenant(config):
        assert context.current_tenant() is config
    identity = Identity(tenant_id="acme", source="jwt", authenticated=True, subject="u1")
    with context.bound_tenant(identity):
        assert context.current_identity() is identity
        with pytest.raises(NoTenantError, match="without its config"):
            context.current_tenant()


@pytest.mark.parametrize("bad", ["", "A", "../x", "x" * 64, "a' OR 1=1--"])
def test_bound_tenant_validates_ids(bad: str) -> None:
    """A malformed tenant id is refused before anything is bound."""
    with pytest.raises(ValidationError):
        context.bound_tenant(bad).__enter__()
    assert context.get_context() is None


def test_no_tenant_block() -> None:
    """no_tenant() unbinds for the block and restores afterwards."""
    with context.bound_tenant("acme"):
        with context.no_tenant():
            assert context.get_context() is None
        assert context.current_tenant_id() == "acme"


def test_report_tokens_records_on_meter() -> None:
    """report_tokens stores the real count on the request's meter; bad values are refused."""
    with context.bound_tenant("acme") as ctx:
        context.report_tokens(42)
        assert ctx.meter.used == 42
        for bad in (-1, True, 1.5):
            with pytest.raises(ValueError):
                context.report_tokens(bad)  # type: ignore[arg-type]
    with pytest.raises(NoTenantError):
        context.report_tokens(1)


def test_tasks_and_copied_contexts_see_the_tenant() -> None:
    """Background tasks and copied contexts inherit the tenant; siblings stay apart."""

    async def main() -> list[str]:
        async def job(tenant: str) -> str:
            with context.bound_tenant(tenant):
                await asyncio.sleep(0)
                inner = asyncio.create_task(asyncio.sleep(0, result=context.current_tenant_id()))
                return await inner

        return list(await asyncio.gather(job("acme"), job("globex"), job("initech")))

    assert asyncio.run(main()) == ["acme", "globex", "initech"]
    with context.bound_tenant("acme"):
        copied = contextvars.copy_context()
    assert copied.run(context.current_tenant_id) == "acme"


def test_identity_claims_are_read_only() -> None:
    """Identities are cached and shared, so their claims cannot be changed by a handler."""
    identity = Identity(tenant_id="acme", source="jwt", claims={"sub": "u1"})
    with pytest.raises(TypeError):
        identity.claims["sub"] = "u2"  # type: ignore[index]
    assert dict(identity.claims) == {"sub": "u1"}
    assert dict(Identity(tenant_id="acme", source="header").claims) == {}
