"""Stripe, wired to the platform's events: onboarding, plan changes and recorded usage.

tenantkit does the Stripe work (``StripeBilling`` for customers and
subscriptions, ``MeterSync`` for meter events, ``StripeWebhooks`` for
verified webhooks); this module decides *when*. A Stripe outage never
loses usage: events stay ``pending`` and the next sync sends them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session

from tenantkit.billing import MeterSync, StripeBilling, make_client
from tenantkit.errors import ConfigurationError, HTTPError, ServiceUnavailable, StorageError
from tenantkit.plans import Plans
from tenantkit.tenants import TenantStore
from tenantkit.types import TenantConfig
from tenantkit.usage import UsageRecord
from tenantkit.webhooks import StripeWebhooks

from .org_changes import follow_stripe

log = logging.getLogger("examples.flask_app.billing")

#: Usage types pushed to Stripe, by the ``event_name`` of their Stripe meter.
METER_EVENTS = {"api_calls": "api_calls", "storage_gb": "storage_gb"}


class BillingService:
    """Keep each organization's Stripe customer, subscription and meters in step."""

    def __init__(
        self,
        *,
        api_key: str,
        api_base: str | None,
        sessions: Callable[[], Session],
        plans: Plans,
        tenants: TenantStore,
    ) -> None:
        client = make_client(api_key, api_base=api_base)
        self.tenants = tenants
        self.sessions = sessions
        self.stripe = StripeBilling(
            client, sessions, plans=plans, on_plan_change=self._plan_changed
        )
        self.meters = MeterSync(client, sessions, event_names=METER_EVENTS)

    def on_onboarding(self, tenant: TenantConfig, email: str) -> None:
        """Create the customer and try the plan's subscription; the organization stands anyway.

        A paid plan usually needs a payment method first: Stripe refuses the
        subscription until ``add_payment_method``, which starts it.
        """
        try:
            self.stripe.ensure_customer(tenant.id, email=email, name=tenant.name)
        except (HTTPError, StorageError, ConfigurationError):
            log.warning("Stripe customer for %s not created yet", tenant.id, exc_info=True)
            return
        try:
            self.stripe.subscribe(tenant.id, tenant.plan)
        except (HTTPError, StorageError, ConfigurationError) as exc:
            log.info("subscription of %s waits for a payment method: %s", tenant.id, exc)

    def add_payment_method(self, tenant: TenantConfig, payment_method_id: str) -> None:
        """Attach a card as the default and make sure the plan's subscription exists."""
        with _configuration_as_503():
            self.stripe.set_payment_method(tenant.id, payment_method_id)
            self.stripe.subscribe(tenant.id, tenant.plan)

    def change_plan(self, tenant_id: str, plan: str) -> None:
        """Move the subscription to ``plan``; the tenant's plan follows on success."""
        with _configuration_as_503():
            self.stripe.subscribe(tenant_id, plan)

    def on_usage(self, record: UsageRecord) -> None:
        """Push pending meter events now; failures stay pending for the next sync."""
        if record.type not in METER_EVENTS:
            return
        try:
            self.meters.sync(limit=100)
        except (HTTPError, StorageError):
            log.warning("meter sync failed; events stay pending", exc_info=True)

    def state(self, tenant_id: str) -> dict[str, Any]:
        """Return the organization's Stripe customer and subscription state."""
        account = self.stripe.account(tenant_id)
        if account is None:
            return {"status": "none", "stripe_customer_id": None, "stripe_subscription_id": None}
        return account.to_dict()

    def _plan_changed(self, tenant_id: str, plan: str) -> None:
        follow_stripe(self.sessions, self.tenants, tenant_id, plan=plan)


@contextmanager
def _configuration_as_503() -> Iterator[None]:
    """A Stripe set-up fault (key, price ids) is the server's problem: 503, logged."""
    try:
        yield
    except ConfigurationError as exc:
        log.error("billing is misconfigured: %s", exc)
        raise ServiceUnavailable("billing is unavailable; the operator has been told") from exc


def build_webhooks(
    secret: str, sessions: Callable[[], Session], plans: Plans, tenants: TenantStore
) -> StripeWebhooks:
    """Return the verified webhook handler; Stripe's word changes plan and status (audited)."""

    def plan_changed(tenant_id: str, plan: str) -> None:
        follow_stripe(sessions, tenants, tenant_id, plan=plan)

    def status_changed(tenant_id: str, status: str) -> None:
        follow_stripe(sessions, tenants, tenant_id, status=status)

    return StripeWebhooks(
        secret,
        sessions,
        plans=plans,
        on_plan_change=plan_changed,
        on_status_change=status_changed,
    )
