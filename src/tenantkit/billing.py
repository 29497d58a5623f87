"""Stripe billing: one customer per tenant, a subscription per plan, plan changes.

Built on a ``stripe.StripeClient`` (the real SDK); usage is pushed to Stripe
Billing Meters by ``MeterSync`` and Stripe's answers come back through
``tenantkit.webhooks``. A tenant's customer and subscription ids live in
``BillingAccount`` rows next to the usage tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import stripe
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ._billing_meter import MeterSync, SyncProgress, SyncResult
from ._billing_models import BillingAccount, BillingState, StripeWebhookEvent
from ._stripe_errors import translate
from ._tenant_incarnation import created_at_of, incarnation_marker, predates
from ._usage_models import insert_or_ignore, table_of
from .errors import ConfigurationError, NotFound, UnprocessableEntity
from .plans import DEFAULT_PLANS, Plan, Plans
from .types import validate_tenant_id

__all__ = [
    "BillingAccount",
    "BillingState",
    "MeterSync",
    "StripeBilling",
    "StripeWebhookEvent",
    "SyncProgress",
    "SyncResult",
    "make_client",
]

logger = logging.getLogger("tenantkit.billing")

SessionFactory = Callable[[], Session]

# Subscription states in which Stripe charges the customer (or is trying to).
_BILLED = ("active", "trialing", "past_due", "unpaid")


def make_client(
    api_key: str, *, api_base: str | None = None, max_network_retries: int = 2
) -> stripe.StripeClient:
    """Return a ``StripeClient``; ``api_base`` points it at another server (tests, proxies)."""
    if not api_key:
        raise ConfigurationError("a Stripe API key is required (STRIPE_API_KEY)")
    base: Any = {"api": api_base} if api_base else None
    return stripe.StripeClient(
        api_key, base_addresses=base, max_network_retries=max_network_retries
    )


class StripeBilling:
    """Customers and subscriptions of tenants in Stripe.

    ``on_plan_change(tenant_id, plan)`` is called after a subscription
    changes plan here (the tenant store's update, wired by the host).
    """

    def __init__(
        self,
        client: stripe.StripeClient,
        sessionmaker: SessionFactory,
        *,
        plans: Plans = DEFAULT_PLANS,
        on_plan_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self._client = client
        self._sessionmaker = sessionmaker
        self.plans = plans
        self._on_plan_change = on_plan_change

    def account(self, tenant_id: str) -> BillingState | None:
        """Return the tenant's billing account, or ``None`` before the first customer."""
        with self._sessionmaker() as session:
            row = session.get(BillingAccount, validate_tenant_id(tenant_id))
            return None if row is None else BillingState.from_row(row)

    def ensure_customer(
        self, tenant_id: str, *, email: str | None = None, name: str | None = None
    ) -> str:
        """Return the tenant's Stripe customer id, creating the customer once.

        Creation carries the idempotency key ``tenantkit-customer-<tenant>-<marker>``,
        so a retry after a crash between Stripe's answer and our write (within
        Stripe's 24-hour key lifetime) gets the same customer back. The marker
        is the tenant's creation time (see ``_tenant_incarnation``): a tenant
        re-created under a deleted tenant's id never gets its namesake's customer.
        """
        tenant = validate_tenant_id(tenant_id)
        existing = self.account(tenant)
        if existing is not None and existing.stripe_customer_id:
            return existing.stripe_customer_id
        metadata = self._metadata(tenant)
        marker = metadata.get("tenant_created")
        key = f"tenantkit-customer-{tenant}" + (f"-{marker}" if marker else "")
        try:
            customer = self._client.v1.customers.create(
                params={"metadata": metadata, "description": f"tenant {tenant}"},
                options={"idempotency_key": key},
            )
            if email is not None or name is not None:
                details: Any = {k: v for k, v in (("email", email), ("name", name)) if v}
                self._client.v1.customers.update(customer.id, params=details)
        except stripe.StripeError as exc:
            raise translate(exc, "creating the Stripe customer") from exc
        with self._sessionmaker() as session, session.begin():
            values = {"tenant_id": tenant, "stripe_customer_id": customer.id, "status": "none"}
            if not insert_or_ignore(session, table_of(BillingAccount), values, ("tenant_id",)):
                session.execute(
                    update(BillingAccount)
                    .where(
                        BillingAccount.tenant_id == tenant,
                        BillingAccount.stripe_customer_id.is_(None),
                    )
                    .values(stripe_customer_id=customer.id)
                )
            stored = session.get(BillingAccount, tenant)
            assert stored is not None and stored.stripe_customer_id is not None
            if stored.stripe_customer_id != customer.id:
                logger.warning(
                    "tenant %s already has customer %s; Stripe customer %s is unused",
                    tenant,
                    stored.stripe_customer_id,
                    customer.id,
                )
            return stored.stripe_customer_id

    def set_payment_method(self, tenant_id: str, payment_method_id: str) -> None:
        """Attach a payment method (from Stripe.js or Checkout) and make it the default."""
        customer = self._customer(tenant_id)
        try:
            self._client.v1.payment_methods.attach(payment_method_id, params={"customer": customer})
            self._client.v1.customers.update(
                customer,
                params={"invoice_settings": {"default_payment_method": payment_method_id}},
            )
        except stripe.StripeError as exc:
            raise translate(exc, "attaching the payment method") from exc

    def subscribe(self, tenant_id: str, plan: str) -> BillingState:
        """Put the tenant on ``plan``: create the subscription or change its price.

        A plan without a Stripe price that costs nothing (Free) cancels any
        subscription; any other plan needs ``stripe_price_id`` in settings.
        Plan changes are prorated (Stripe's default ``proration_behavior``).
        Without a subscription on record, a live one Stripe holds for this
        tenant (made by a call whose write here was lost) is reused, not doubled.
        """
        tenant = validate_tenant_id(tenant_id)
        if not isinstance(plan, str) or plan not in self.plans:
            # The caller's choice, not our wiring: a 422 naming the plans there are.
            raise UnprocessableEntity(
                f"unknown plan {plan!r}; choose from {sorted(p.name for p in self.plans)}",
                field="plan",
            )
        target = self.plans.get(plan)
        if target.stripe_price_id is None:
            if target.price is not None and target.price == 0:
                return self._cancel(tenant, new_plan=target)
            raise ConfigurationError(
                f"plan {target.name!r} has no stripe_price_id; set it in TENANTKIT_PLANS"
            )
        customer = self.ensure_customer(tenant)
        state = self.account(tenant)
        try:
            if state is not None and state.stripe_subscription_id and state.status != "canceled":
                sub = self._change_price(tenant, state.stripe_subscription_id, target)
            elif (found := self._unrecorded_subscription(tenant, customer)) is not None:
                # Stripe made it but our write was lost: a retry must not bill twice.
                sub = self._change_price(tenant, found.id, target, found["items"].data[0].id)
            else:
                sub = self._client.v1.subscriptions.create(
                    params={
                        "customer": customer,
                        "items": [{"price": target.stripe_price_id}],
                        "metadata": {**self._metadata(tenant), "plan": target.name},
                    }
                )
        except stripe.StripeError as exc:
            raise translate(exc, f"subscribing to {target.title}") from exc
        item_id = sub["items"].data[0].id
        # "incomplete" is a first payment that failed: as good as past due for the tenant.
        status = "active" if sub.status in ("active", "trialing") else "past_due"
        self._store(tenant, sub.id, item_id, target.name, status)
        if self._on_plan_change is not None:
            self._on_plan_change(tenant, target.name)
        state = self.account(tenant)
        assert state is not None
        return state

    def cancel(self, tenant_id: str) -> BillingState:
        """Cancel the tenant's subscription now (the webhook then suspends the tenant)."""
        return self._cancel(validate_tenant_id(tenant_id), new_plan=None)

    def _unrecorded_subscription(self, tenant: str, customer: str) -> Any:
        """Return a subscription Stripe bills ``customer`` for this tenant, or ``None``.

        Never one of a deleted namesake: its incarnation marker must be this
        tenant's, and one without a marker must not predate the tenant.
        """
        with self._sessionmaker() as session:
            born = created_at_of(session, tenant)
        listed = self._client.v1.subscriptions.list(params={"customer": customer, "limit": 100})
        for sub in listed.auto_paging_iter():
            data = sub.to_dict()
            metadata = data.get("metadata") or {}
            if data.get("status") not in _BILLED or metadata.get("tenant_id") != tenant:
                continue
            if born is not None:
                marker = metadata.get("tenant_created")
                if marker is not None and marker != incarnation_marker(born):
                    continue
                if marker is None and predates(data.get("created"), born):
                    continue
            return sub
        return None

    def _metadata(self, tenant: str) -> dict[str, str]:
        """Return the metadata tying a Stripe object to this incarnation of the tenant id."""
        with self._sessionmaker() as session:
            born = created_at_of(session, tenant)
        if born is None:
            return {"tenant_id": tenant}
        return {"tenant_id": tenant, "tenant_created": incarnation_marker(born)}

    def _change_price(
        self, tenant: str, subscription_id: str, target: Plan, item_id: str | None = None
    ) -> Any:
        if item_id is None:
            with self._sessionmaker() as session:
                row = session.get(BillingAccount, tenant)
                item_id = row.stripe_subscription_item_id if row is not None else None
        if item_id is None:
            current = self._client.v1.subscriptions.retrieve(subscription_id)
            item_id = current["items"].data[0].id
        params: Any = {
            "items": [{"id": item_id, "price": target.stripe_price_id}],
            "metadata": {**self._metadata(tenant), "plan": target.name},
        }
        return self._client.v1.subscriptions.update(subscription_id, params=params)

    def _cancel(self, tenant: str, *, new_plan: Plan | None) -> BillingState:
        state = self.account(tenant)
        if state is None and new_plan is None:
            raise NotFound(f"tenant {tenant!r} has no billing account")
        if state is not None and state.stripe_subscription_id and state.status != "canceled":
            try:
                self._client.v1.subscriptions.cancel(state.stripe_subscription_id)
            except stripe.StripeError as exc:
                raise translate(exc, "canceling the subscription") from exc
        plan_name = new_plan.name if new_plan is not None else (state.plan if state else None)
        status = "active" if new_plan is not None else "canceled"
        self._store(tenant, None, None, plan_name, status)
        if new_plan is not None and self._on_plan_change is not None:
            self._on_plan_change(tenant, new_plan.name)
        result = self.account(tenant)
        assert result is not None
        return result

    def _store(
        self, tenant: str, sub_id: str | None, item_id: str | None, plan: str | None, status: str
    ) -> None:
        with self._sessionmaker() as session, session.begin():
            insert_or_ignore(
                session, table_of(BillingAccount), {"tenant_id": tenant}, ("tenant_id",)
            )
            session.execute(
                update(BillingAccount)
                .where(BillingAccount.tenant_id == tenant)
                .values(
                    stripe_subscription_id=sub_id,
                    stripe_subscription_item_id=item_id,
                    plan=plan,
                    status=status,
                )
            )

    def _customer(self, tenant_id: str) -> str:
        state = self.account(tenant_id)
        if state is None or state.stripe_customer_id is None:
            return self.ensure_customer(tenant_id)
        return state.stripe_customer_id


def customer_of(sessionmaker: SessionFactory) -> Callable[[str], str | None]:
    """Return a lookup from tenant id to Stripe customer id (``None`` if none yet)."""

    def lookup(tenant_id: str) -> str | None:
        with sessionmaker() as session:
            return session.scalar(
                select(BillingAccount.stripe_customer_id).where(
                    BillingAccount.tenant_id == tenant_id
                )
            )

    return lookup
