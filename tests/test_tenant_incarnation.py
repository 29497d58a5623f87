"""A tenant re-created under a deleted tenant's id inherits none of its billing or usage."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL, Engine, create_engine, func, insert, select, text
from tests.stripe_local.dbs import sessions, tenant_id
from tests.stripe_local.fixtures import (
    LocalStripe,
    add_card,
    create_prices,
    running_localstripe,
    sign,
)

from tenantkit._db import Base, make_engine, utcnow
from tenantkit._usage_models import UsageAlertSent, UsageEvent
from tenantkit.billing import BillingAccount, StripeBilling
from tenantkit.plans import Plans
from tenantkit.rls import apply_rls, create_app_role, drop_app_role
from tenantkit.tenants import TenantStore
from tenantkit.usage import ApiCallCounter, UsageRecorder
from tenantkit.webhooks import StripeWebhooks

SECRET = "whsec_tenantkit_incarnation"


@dataclass
class Databases:
    """``owner`` creates the tables; ``app`` is what the tenant store connects as."""

    owner: Engine
    app: Engine


@pytest.fixture(scope="module")
def local_stripe() -> Iterator[LocalStripe]:
    """localstripe on 127.0.0.1 for this module."""
    with running_localstripe() as server:
        yield server


@pytest.fixture(scope="module")
def plans(local_stripe: LocalStripe) -> Plans:
    prices = create_prices(local_stripe.client())
    overrides = {name: {"stripe_price_id": price} for name, price in prices.items()}
    return Plans.from_mapping({"TENANTKIT_PLANS": overrides})


@pytest.fixture(scope="module")
def pg_databases(postgres_admin_url: URL) -> Iterator[Databases]:
    """A database of this module's own, with row-level security and a non-owner app role."""
    import tenantkit.webhooks  # noqa: F401 - registers the webhook events table

    name, role = f"tk_inc_{uuid.uuid4().hex[:10]}", f"tk_inc_app_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres_admin_url.set(database=name)
    owner = create_engine(url)
    Base.metadata.create_all(owner)
    apply_rls(owner, Base.metadata)
    create_app_role(owner, role, metadata=Base.metadata)
    app = create_engine(url.set(username=role))
    try:
        yield Databases(owner, app)
    finally:
        app.dispose()
        owner.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        drop_app_role(admin, role)
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    if request.param == "postgres":
        yield request.getfixturevalue("pg_databases")
        return
    import tenantkit.webhooks  # noqa: F401 - registers the webhook events table

    engine = make_engine(f"sqlite:///{tmp_path}/incarnation.db")
    Base.metadata.create_all(engine)
    yield Databases(engine, engine)
    engine.dispose()


@pytest.fixture
def store(dbs: Databases) -> TenantStore:
    return TenantStore(dbs.app)


@pytest.fixture
def billing(local_stripe: LocalStripe, dbs: Databases, plans: Plans) -> StripeBilling:
    return StripeBilling(local_stripe.client(), sessions(dbs.owner), plans=plans)


def _subscribed_tenant(
    store: TenantStore, billing: StripeBilling, local_stripe: LocalStripe
) -> tuple[str, str, str]:
    """Create a tenant with a card, a customer and a Starter subscription."""
    tenant = tenant_id()
    store.create(id=tenant)
    billing.set_payment_method(tenant, add_card(local_stripe.client()))
    state = billing.subscribe(tenant, "starter")
    assert state.stripe_customer_id and state.stripe_subscription_id
    return tenant, state.stripe_customer_id, state.stripe_subscription_id


def _count(engine: Engine, model: Any, tenant: str) -> int:
    with sessions(engine)() as session:
        return int(
            session.scalar(select(func.count()).select_from(model).where(model.tenant_id == tenant))
            or 0
        )


def test_delete_purges_billing_account_usage_and_alerts(
    store: TenantStore, billing: StripeBilling, local_stripe: LocalStripe, dbs: Databases
) -> None:
    """Delete removes the tenant's account, usage events and alerts; the id comes back bare."""
    tenant, _, _ = _subscribed_tenant(store, billing, local_stripe)
    other = tenant_id()
    store.create(id=other)
    recorder = UsageRecorder(sessions(dbs.owner))
    for name in (tenant, other):
        recorder.record("api_calls", 7, tenant_id=name, idempotency_key="batch-1")
        with sessions(dbs.owner)() as session, session.begin():
            values = dict(cycle="2026-01", resource="api_calls", threshold=80, used=8, limit=10)
            session.execute(insert(UsageAlertSent).values(tenant_id=name, **values))
    store.delete(tenant)
    store.create(id=tenant)
    assert billing.account(tenant) is None
    for model in (BillingAccount, UsageEvent, UsageAlertSent):
        assert _count(dbs.owner, model, tenant) == 0
        assert _count(dbs.owner, model, other) == (0 if model is BillingAccount else 1)
    start, end = utcnow() - timedelta(days=1), utcnow() + timedelta(days=1)
    assert recorder.total("api_calls", start, end, tenant_id=tenant) == 0
    again = recorder.record("api_calls", 2, tenant_id=tenant, idempotency_key="batch-1")
    assert not again.duplicate and again.quantity == 2
    assert recorder.total("api_calls", start, end, tenant_id=other) == 7


def test_recreated_tenant_gets_a_fresh_customer_and_subscription(
    store: TenantStore, billing: StripeBilling, local_stripe: LocalStripe, dbs: Databases
) -> None:
    """Subscribing again creates a new customer, also after our row of it is lost."""
    tenant, old_customer, old_sub = _subscribed_tenant(store, billing, local_stripe)
    store.delete(tenant)
    store.create(id=tenant)
    customer = billing.ensure_customer(tenant)
    assert customer != old_customer
    with sessions(dbs.owner)() as session, session.begin():
        session.execute(BillingAccount.__table__.delete().where(BillingAccount.tenant_id == tenant))
    # Our write lost: only Stripe's metadata and idempotency keys remain.
    assert billing.ensure_customer(tenant) == customer
    billing.set_payment_method(tenant, add_card(local_stripe.client()))
    state = billing.subscribe(tenant, "pro")
    assert state.stripe_customer_id == customer
    assert state.stripe_subscription_id != old_sub
    client = local_stripe.client()
    old = client.v1.subscriptions.list(params={"customer": old_customer}).data
    assert [s.id for s in old] == [old_sub]  # the old owner's subscription was not touched
    assert old[0].to_dict()["metadata"]["plan"] == "starter"


def test_a_namesakes_subscription_is_not_adopted(
    store: TenantStore, billing: StripeBilling, local_stripe: LocalStripe, dbs: Databases
) -> None:
    """A live subscription tagged with the id but another incarnation is never reused."""
    tenant = tenant_id()
    store.create(id=tenant)
    billing.set_payment_method(tenant, add_card(local_stripe.client()))
    customer = billing.ensure_customer(tenant)
    price = billing.plans.get("starter").stripe_price_id or ""
    stranger = local_stripe.client().v1.subscriptions.create(
        params={
            "customer": customer,
            "items": [{"price": price}],
            "metadata": {"tenant_id": tenant, "tenant_created": "1"},
        }
    )
    state = billing.subscribe(tenant, "starter")
    assert state.stripe_subscription_id not in (None, stranger.id)


def test_a_deleted_tenants_late_webhooks_do_not_change_its_namesake(
    store: TenantStore,
    billing: StripeBilling,
    local_stripe: LocalStripe,
    dbs: Databases,
    plans: Plans,
) -> None:
    """Events of the old customer's subscription change neither a deleted nor a new tenant."""
    tenant, _, old_sub = _subscribed_tenant(store, billing, local_stripe)
    calls: list[tuple[str, str]] = []
    hooks = StripeWebhooks(
        SECRET,
        sessions(dbs.owner),
        plans=plans,
        on_plan_change=lambda t, p: calls.append((t, p)),
        on_status_change=lambda t, s: calls.append((t, s)),
        on_billing_status=lambda t, s: calls.append((t, s)),
    )
    store.delete(tenant)
    local_stripe.client().v1.subscriptions.cancel(old_sub)
    events = [e for e in local_stripe.events("customer.subscription.deleted")]
    event = next(e for e in events if e["data"]["object"]["id"] == old_sub)

    def deliver(event_id: str) -> Any:
        payload = json.dumps({**event, "id": event_id})
        return hooks.handle(payload.encode(), sign(payload, SECRET, int(time.time())))

    assert deliver(f"evt_{uuid.uuid4().hex}").tenant_id is None  # the tenant is gone
    store.create(id=tenant)
    result = deliver(f"evt_{uuid.uuid4().hex}")  # and now a stranger holds the id
    assert result.tenant_id is None and not result.handled
    assert calls == [] and billing.account(tenant) is None


def test_api_call_counter_forgets_a_deleted_tenant(store: TenantStore, dbs: Databases) -> None:
    """A counter's cached count and buffered calls of a deleted tenant do not reach its namesake."""
    tenant = tenant_id()
    store.create(id=tenant)
    counter = ApiCallCounter(UsageRecorder(sessions(dbs.owner)), background=False)
    try:
        counter.add(tenant, 5)
        counter.flush()
        assert counter.cycle_count(tenant) == 5  # read once, then counted in memory
        counter.add(tenant, 3)
        store.delete(tenant)
        store.create(id=tenant)
        assert counter.pending(tenant) == 0
        assert counter.cycle_count(tenant) == 0
        counter.add(tenant, 1)
        assert counter.flush() == 1 and counter.cycle_count(tenant) == 1
    finally:
        counter.close()
