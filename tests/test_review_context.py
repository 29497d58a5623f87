"""bound_tenant never binds a tenant other than the one it was asked for."""

from __future__ import annotations

import pytest

from tenantkit import context
from tenantkit.errors import CrossTenantError
from tenantkit.scoping import system_identity
from tenantkit.types import Identity, TenantConfig


@pytest.mark.parametrize("tenant", ["acme", TenantConfig(id="acme", name="Acme")])
def test_identity_of_another_tenant_is_refused(tenant: str | TenantConfig) -> None:
    """bound_tenant('acme', identity=system_identity()) bound tenant 'system': now refused."""
    with (
        pytest.raises(CrossTenantError, match="'system'"),
        context.bound_tenant(tenant, identity=system_identity("nightly")),
    ):
        pass  # pragma: no cover - the bind itself raises
    assert context.get_context() is None


def test_identity_of_the_same_tenant_is_bound() -> None:
    """An identity of the named tenant is bound as given."""
    me = Identity(tenant_id="acme", source="system", subject="outbox-worker")
    with context.bound_tenant("acme", identity=me) as ctx:
        assert ctx.identity is me and context.current_tenant_id() == "acme"
