"""Stripe customers and subscriptions through the real SDK against localstripe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import stripe
from sqlalchemy import Engine, delete, update
from tests.stripe_local.dbs import engine_for, sessions, tenant_id
from tests.stripe_local.fixtures import (
    LocalStripe,
    add_card,
    create_prices,
    free_port,
    running_localstripe,
)

from tenantkit.billing import BillingAccount, StripeBilling, make_client
from tenantkit.errors import ConfigurationError, NotFound, PaymentRequired, ServiceUnavailable
from tenantkit.plans import Plans


@pytest.fixture(scope="module")
def local_stripe() -> Iterator[LocalStripe]:
    """localstripe on 127.0.0.1 for this module."""
    with running_localstripe() as server:
        yield server


@pytest.fixture(scope="module")
def prices(local_stripe: LocalStripe) -> dict[str, str]:
    return create_prices(local_stripe.client())


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = engine_for(f"sqlite:///{tmp_path}/billing.db")
    yield eng
    eng.dispose()


@pytest.fixture
def plans(prices: dict[str, str]) -> Plans:
    overrides = {name: {"stripe_price_id": price} for name, price in prices.items()}
    return Plans.from_mapping({"TENANTKIT_PLANS": overrides})


@pytest.fixture
def plan_changes() -> list[tuple[str, str]]:
    return []


@pytest.fixture
def billing(
    local_stripe: LocalStripe,
    engine: Engine,
    plans: Plans,
    plan_changes: list[tuple[str, str]],
) -> StripeBilling:
    return StripeBilling(
        local_stripe.client(),
        sessions(engine),
        plans=plans,
        on_plan_change=lambda t, p: plan_changes.append((t, p)),
    )


def _customers_of(local_stripe: LocalStripe, tenant: str) -> list[str]:
    listed = local_stripe.client().v1.customers.list(params={"limit": 100})
    return [
        c.id
        for c in listed.auto_paging_iter()
        if c.to_dict()["metadata"].get("tenant_id") == tenant
    ]


def test_one_customer_per_tenant(billing: StripeBilling, local_stripe: LocalStripe) -> None:
    """Asking twice for a tenant's customer creates one Stripe customer, tagged with it."""
    tenant = tenant_id()
    first = billing.ensure_customer(tenant, email="owner@example.com", name="Acme")
    second = billing.ensure_customer(tenant)
    assert first == second and first.startswith("cus_")
    assert _customers_of(local_stripe, tenant) == [first]
    customer = local_stripe.client().v1.customers.retrieve(first)
    assert customer.email == "owner@example.com"


def test_a_lost_write_does_not_create_a_second_customer(
    billing: StripeBilling, local_stripe: LocalStripe, engine: Engine
) -> None:
    """If our row is lost after Stripe answered, the idempotency key returns the same customer."""
    tenant = tenant_id()
    first = billing.ensure_customer(tenant)
    with sessions(engine)() as session, session.begin():
        session.execute(delete(BillingAccount).where(BillingAccount.tenant_id == tenant))
    assert billing.ensure_customer(tenant) == first
    assert _customers_of(local_stripe, tenant) == [first]


def test_a_lost_write_does_not_create_a_second_subscription(
    billing: StripeBilling, local_stripe: LocalStripe, engine: Engine
) -> None:
    """If our subscription write is lost after Stripe answered, the retry adopts that one."""
    tenant = tenant_id()
    billing.set_payment_method(tenant, add_card(local_stripe.client()))
    first = billing.subscribe(tenant, "starter")
    with sessions(engine)() as session, session.begin():
        session.execute(
            update(BillingAccount)
            .where(BillingAccount.tenant_id == tenant)
            .values(stripe_subscription_id=None, stripe_subscription_item_id=None, status="none")
        )
    again = billing.subscribe(tenant, "starter")
    assert again.stripe_subscription_id == first.stripe_subscription_id
    assert again.status == "active"
    listed = local_stripe.client().v1.subscriptions.list(
        params={"customer": first.stripe_customer_id or ""}
    )
    live = [s.id for s in listed.data if s.status != "canceled"]
    assert live == [first.stripe_subscription_id]


def test_subscribe_then_change_plan(
    billing: StripeBilling,
    local_stripe: LocalStripe,
    prices: dict[str, str],
    plan_changes: list[tuple[str, str]],
) -> None:
    """Subscribing creates one subscription; a plan change swaps its price in place."""
    tenant = tenant_id()
    billing.set_payment_method(tenant, add_card(local_stripe.client()))
    state = billing.subscribe(tenant, "starter")
    assert (state.plan, state.status) == ("starter", "active")
    sub_id = state.stripe_subscription_id
    assert sub_id is not None
    changed = billing.subscribe(tenant, "pro")
    assert changed.stripe_subscription_id == sub_id and changed.plan == "pro"
    remote = local_stripe.client().v1.subscriptions.retrieve(sub_id)
    assert remote["items"].data[0]["plan"]["id"] == prices["pro"]
    assert remote.metadata["tenant_id"] == tenant
    assert plan_changes == [(tenant, "starter"), (tenant, "pro")]


def test_moving_to_free_cancels_the_subscription(
    billing: StripeBilling, local_stripe: LocalStripe
) -> None:
    """Free has no Stripe price: moving to it cancels the paid subscription."""
    tenant = tenant_id()
    billing.set_payment_method(tenant, add_card(local_stripe.client()))
    sub_id = billing.subscribe(tenant, "starter").stripe_subscription_id
    assert sub_id is not None
    state = billing.subscribe(tenant, "free")
    assert (state.plan, state.status, state.stripe_subscription_id) == ("free", "active", None)
    assert local_stripe.client().v1.subscriptions.retrieve(sub_id).status == "canceled"


def test_cancel_marks_the_account_canceled(
    billing: StripeBilling, local_stripe: LocalStripe
) -> None:
    """cancel() ends the subscription in Stripe and records it; no account is a 404."""
    tenant = tenant_id()
    billing.set_payment_method(tenant, add_card(local_stripe.client()))
    billing.subscribe(tenant, "pro")
    assert billing.cancel(tenant).status == "canceled"
    with pytest.raises(NotFound):
        billing.cancel(tenant_id())


def test_a_plan_without_a_stripe_price_is_a_configuration_error(engine: Engine) -> None:
    """A paid plan that names no Stripe price cannot be subscribed to."""
    billing = StripeBilling(make_client("sk_test_x"), sessions(engine))
    with pytest.raises(ConfigurationError):
        billing.subscribe(tenant_id(), "starter")


def test_a_declined_card_is_a_402(billing: StripeBilling, local_stripe: LocalStripe) -> None:
    """A card Stripe refuses to attach is a 402 problem, not an SDK exception."""
    tenant = tenant_id()
    declined = add_card(local_stripe.client(), "4000000000000002")
    with pytest.raises(PaymentRequired) as info:
        billing.set_payment_method(tenant, declined)
    assert info.value.status == 402


def test_stripe_unreachable_is_a_503(engine: Engine) -> None:
    """A Stripe that cannot be reached gives a 503 with Retry-After."""
    client = stripe.StripeClient(
        "sk_test_x",
        base_addresses={"api": f"http://127.0.0.1:{free_port()}"},
        max_network_retries=0,
    )
    with pytest.raises(ServiceUnavailable) as info:
        StripeBilling(client, sessions(engine)).ensure_customer(tenant_id())
    assert info.value.headers["Retry-After"] == "5"


def test_make_client_needs_a_key() -> None:
    """An empty API key is refused at construction."""
    with pytest.raises(ConfigurationError):
        make_client("")
