"""Stripe webhooks: verified, fresh, processed once, then applied to the tenant.

``StripeWebhooks.handle(body, signature_header)`` refuses, with a
``BadRequest`` (400) and no change at all:

- a missing or forged signature (``stripe.Webhook.construct_event``);
- a stale one (signed more than ``tolerance`` seconds ago, 300 by default,
  at most 900) or one signed in the future (beyond ``max_clock_skew``);
- a body that is not a Stripe event (``bad_payload``).

An event id is applied once: ids are kept for good in
``tenantkit_stripe_webhook_events``, far beyond Stripe's three days of
retries. A later delivery of an event already applied is answered as a
success that changes nothing (``WebhookResult.duplicate``), as Stripe asks:
a non-2xx answer would make it retry for three days and then disable the
endpoint. A delivery while another is still applying the same event is a
``WebhookInProgress`` (409), which Stripe retries.

Accepted events update the tenant's ``BillingAccount`` and call the injected
callbacks: ``on_plan_change(tenant_id, plan)``, ``on_status_change(tenant_id,
"active" | "suspended")`` and ``on_billing_status(tenant_id, "active" |
"past_due" | "canceled")``; ``tenant_store=`` (a ``TenantStore``) supplies
the first two as ``store.update(tenant_id, plan=...)`` and ``status=...``.
The event id is claimed first (so concurrent deliveries apply it once), the
account is updated, then the callbacks run outside tenantkit's transaction.
If one raises, the claim is withdrawn and Stripe's retry applies the event
again, so callbacks must be idempotent (setting a plan or a status is).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import stripe
from sqlalchemy import delete, inspect, select, update
from sqlalchemy.orm import Session

from ._billing_models import BillingAccount, StripeWebhookEvent
from ._tenant_incarnation import created_at_of, incarnation_marker, predates
from ._usage_models import insert_or_ignore, table_of
from .errors import BadRequest, ConfigurationError, Conflict
from .plans import DEFAULT_PLANS, Plans
from .types import TENANT_ID_PATTERN

logger = logging.getLogger("tenantkit.billing")

SIGNATURE_HEADER = "Stripe-Signature"
MAX_TOLERANCE = 900
MAX_ID_LENGTH, MAX_TYPE_LENGTH = 255, 100  # the event table's columns
PROCESSING_TIMEOUT = timedelta(minutes=5)
HANDLED_TYPES = (
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "customer.subscription.updated",
    "customer.subscription.deleted",
)


class TenantUpdater(Protocol):
    """What the webhooks need of a tenant store: ``TenantStore.update`` fits."""

    def update(
        self, tenant_id: str, *, expected_version: int | None = None, **fields: Any
    ) -> Any: ...


class WebhookRejected(BadRequest):
    """A webhook that is not processed: forged, stale, from the future or no event."""

    title, slug = "Webhook Rejected", "webhook-rejected"


class WebhookInProgress(Conflict):
    """A delivery of an event that another delivery is applying right now (retried)."""

    title, slug = "Webhook In Progress", "webhook-in-progress"


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """What one accepted event did; ``handled`` is false for types we do not act on."""

    event_id: str
    type: str
    tenant_id: str | None
    handled: bool
    changes: dict[str, str] = field(default_factory=dict)
    duplicate: bool = False  # an event already applied: this delivery changed nothing


class StripeWebhooks:
    """Verify Stripe webhooks and apply them to tenants once each."""

    def __init__(
        self,
        secret: str,
        sessionmaker: Callable[[], Session],
        *,
        plans: Plans = DEFAULT_PLANS,
        tolerance: int = 300,
        max_clock_skew: int = 30,
        on_plan_change: Callable[[str, str], None] | None = None,
        on_status_change: Callable[[str, str], None] | None = None,
        on_billing_status: Callable[[str, str], None] | None = None,
        tenant_store: TenantUpdater | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ConfigurationError("a webhook signing secret (whsec_...) is required")
        if not 0 < tolerance <= MAX_TOLERANCE:
            raise ConfigurationError(f"tolerance must be between 1 and {MAX_TOLERANCE} seconds")
        if not 0 <= max_clock_skew <= 300:
            raise ConfigurationError("max_clock_skew must be between 0 and 300 seconds")
        self._secret = secret
        self._sessionmaker = sessionmaker
        self.plans = plans
        self.tolerance = tolerance
        self.max_clock_skew = max_clock_skew
        if tenant_store is not None:
            store = tenant_store
            on_plan_change = on_plan_change or (lambda t, plan: store.update(t, plan=plan))
            on_status_change = on_status_change or (lambda t, st: store.update(t, status=st))
        self._on_plan_change = on_plan_change
        self._on_status_change = on_status_change
        self._on_billing_status = on_billing_status
        self._clock = clock

    def handle(self, body: bytes | str, signature: str | None) -> WebhookResult:
        """Verify and apply one delivery; raise ``WebhookRejected`` (400) if refused.

        An event applied before gives a result with ``duplicate`` set, changing
        nothing; one being applied right now raises ``WebhookInProgress`` (409).
        """
        try:
            event = self._verify(body, signature).to_dict()
            event_id, kind = str(event["id"]), str(event["type"])
            obj: dict[str, Any] = dict(event["data"]["object"])
            created = int(event.get("created") or 0)
            if not (0 < len(event_id) <= MAX_ID_LENGTH and 0 < len(kind) <= MAX_TYPE_LENGTH):
                raise ValueError("an event id or type longer than its column")
            if not 0 <= created < 2**53:
                raise ValueError("created is a Unix time")
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise WebhookRejected(
                "webhook body is not a Stripe event", reason="bad_payload"
            ) from exc
        with self._sessionmaker() as session:
            tenant = _tenant_of(session, obj)
        if self._claim(event_id, kind, tenant, created):
            return WebhookResult(event_id, kind, tenant, False, duplicate=True)
        try:
            outcome, changes = self._apply_event(tenant, kind, obj, created)
            # Outside our transaction: the host's store may share a SQLite file with us.
            self._notify(tenant, changes)
        except BaseException:
            self._unclaim(event_id)  # Stripe's retry will apply it again
            raise
        with self._sessionmaker() as session, session.begin():
            session.execute(
                update(StripeWebhookEvent)
                .where(StripeWebhookEvent.id == event_id)
                .values(outcome=outcome)
            )
        return WebhookResult(event_id, kind, tenant, outcome == "handled", changes)

    def _claim(self, event_id: str, kind: str, tenant: str | None, created: int) -> bool:
        """Record the event id once; return whether it was applied before (a duplicate).

        A delivery while another applies the event is a ``WebhookInProgress``,
        unless that other one has been at it past ``PROCESSING_TIMEOUT`` (its
        process died): then this one takes the event over.
        """
        now = datetime.fromtimestamp(self._clock(), UTC)
        values = {
            "id": event_id,
            "type": kind,
            "tenant_id": tenant,
            "outcome": "processing",
            "created": created,
            "received_at": now,
        }
        with self._sessionmaker() as session, session.begin():
            if insert_or_ignore(session, table_of(StripeWebhookEvent), values, ("id",)):
                return False
            outcome = session.execute(
                select(StripeWebhookEvent.outcome).where(StripeWebhookEvent.id == event_id)
            ).scalar()
            if outcome is not None and outcome != "processing":
                return True
            # A delivery whose process died mid-way must not block Stripe's retries for good.
            result = session.execute(
                update(StripeWebhookEvent)
                .where(
                    StripeWebhookEvent.id == event_id,
                    StripeWebhookEvent.outcome == "processing",
                    StripeWebhookEvent.received_at < now - PROCESSING_TIMEOUT,
                )
                .values(received_at=now)
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0) == 1:
                return False
        raise WebhookInProgress(
            f"event {event_id} is being applied by another delivery; retry later",
            reason="in_progress",
            headers={"Retry-After": "5"},
        )

    def _unclaim(self, event_id: str) -> None:
        with self._sessionmaker() as session, session.begin():
            session.execute(delete(StripeWebhookEvent).where(StripeWebhookEvent.id == event_id))

    def _apply_event(
        self, tenant: str | None, kind: str, obj: dict[str, Any], created: int
    ) -> tuple[str, dict[str, str]]:
        if tenant is None or kind not in HANDLED_TYPES:
            return "ignored", {}
        with self._sessionmaker() as session, session.begin():
            account = session.get(BillingAccount, tenant)
            if account is None:
                account = BillingAccount(tenant_id=tenant, status="none", last_event_created=0)
                session.add(account)
            elif created < account.last_event_created:
                return "out_of_order", {}
            changes = self._apply(account, kind, obj)
            account.last_event_created = created
        return "handled", changes

    def _verify(self, body: bytes | str, signature: str | None) -> Any:
        if not signature:
            raise WebhookRejected(f"missing {SIGNATURE_HEADER} header", reason="no_signature")
        stamp = _timestamp(signature)
        now = self._clock()
        if stamp is None:
            raise WebhookRejected("malformed signature header", reason="bad_signature")
        if stamp > now + self.max_clock_skew:
            raise WebhookRejected("webhook is signed in the future", reason="future_timestamp")
        if stamp < now - self.tolerance:
            raise WebhookRejected(f"webhook is older than {self.tolerance} seconds", reason="stale")
        try:
            payload = body.decode("utf-8") if isinstance(body, bytes) else body
            return stripe.Webhook.construct_event(
                payload, signature, self._secret, tolerance=self.tolerance
            )
        except stripe.SignatureVerificationError as exc:
            raise WebhookRejected(
                "webhook signature does not match", reason="bad_signature"
            ) from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # e.g. a JSON list
            raise WebhookRejected(
                "webhook body is not a Stripe event", reason="bad_payload"
            ) from exc

    def _apply(self, account: BillingAccount, kind: str, obj: dict[str, Any]) -> dict[str, str]:
        changes: dict[str, str] = {}
        if kind.startswith("customer.subscription."):
            subscription = obj.get("id")
        else:  # an invoice; one outside any subscription (None) is the tenant's as well
            subscription = _invoice_subscription(obj) or account.stripe_subscription_id
        if account.stripe_subscription_id not in (None, subscription):
            # An event of a subscription the tenant has since replaced changes nothing.
            return changes
        if kind in ("invoice.paid", "invoice.payment_succeeded"):
            if account.status in ("past_due", "none"):
                changes["billing_status"] = account.status = "active"
        elif kind == "invoice.payment_failed":
            changes["billing_status"] = account.status = "past_due"
        elif kind == "customer.subscription.updated":
            changes.update(self._subscription_updated(account, obj))
        elif kind == "customer.subscription.deleted":
            account.stripe_subscription_id = None
            account.stripe_subscription_item_id = None
            changes["billing_status"] = account.status = "canceled"
            changes["status"] = "suspended"
        return changes

    def _subscription_updated(self, account: BillingAccount, obj: dict[str, Any]) -> dict[str, str]:
        changes: dict[str, str] = {}
        price = _price_id(obj)
        plan = self.plans.by_stripe_price(price) if price else None
        if plan is None:
            logger.warning("subscription %s has unknown price %s", obj.get("id"), price)
        else:
            # Reported even when unchanged here: the host's tenant store may lag behind.
            changes["plan"] = account.plan = plan.name
        status = obj.get("status")
        if status in ("past_due", "unpaid") and account.status != "past_due":
            changes["billing_status"] = account.status = "past_due"
        elif status in ("active", "trialing") and account.status != "active":
            changes["billing_status"] = account.status = "active"
        account.stripe_subscription_id = obj.get("id") or account.stripe_subscription_id
        return changes

    def _notify(self, tenant: str | None, changes: dict[str, str]) -> None:
        if tenant is None:
            return
        if "plan" in changes and self._on_plan_change is not None:
            self._on_plan_change(tenant, changes["plan"])
        if "billing_status" in changes and self._on_billing_status is not None:
            self._on_billing_status(tenant, changes["billing_status"])
        if "status" in changes and self._on_status_change is not None:
            self._on_status_change(tenant, changes["status"])


def _timestamp(header: str) -> int | None:
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _tenant_of(session: Session, obj: dict[str, Any]) -> str | None:
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    if isinstance(customer, str):
        tenant = session.scalar(
            select(BillingAccount.tenant_id).where(BillingAccount.stripe_customer_id == customer)
        )
        if tenant is not None:
            return tenant
    metadata = obj.get("metadata") or {}
    tenant_id = metadata.get("tenant_id") if isinstance(metadata, dict) else None
    if not isinstance(tenant_id, str) or TENANT_ID_PATTERN.fullmatch(tenant_id) is None:
        return None
    # Metadata only links a customer made outside tenantkit (Checkout, the Dashboard):
    # a tenant with a customer of its own is never changed by another customer's event.
    own = session.scalar(
        select(BillingAccount.stripe_customer_id).where(BillingAccount.tenant_id == tenant_id)
    )
    if own is not None or _of_a_namesake(session, tenant_id, obj, metadata):
        return None
    return tenant_id


def _of_a_namesake(
    session: Session, tenant_id: str, obj: dict[str, Any], metadata: dict[str, Any]
) -> bool:
    """Return whether ``obj`` is not the tenant's: it is deleted, or this is a later one."""
    if not inspect(session.connection()).has_table("tenantkit_tenants"):
        return False  # no tenants here to tell incarnations apart
    born = created_at_of(session, tenant_id)
    if born is None:
        return True
    marker = metadata.get("tenant_created")
    if marker is not None:
        return bool(marker != incarnation_marker(born))
    return predates(obj.get("created"), born)


def _invoice_subscription(invoice: dict[str, Any]) -> str | None:
    """The subscription an invoice bills: ``subscription``, or ``parent`` from API 2025-03-31."""
    ref = invoice.get("subscription")
    if ref is None:
        parent = invoice.get("parent")
        details = parent.get("subscription_details") if isinstance(parent, dict) else None
        ref = details.get("subscription") if isinstance(details, dict) else None
    if isinstance(ref, dict):
        ref = ref.get("id")
    return ref if isinstance(ref, str) else None


def _price_id(subscription: dict[str, Any]) -> str | None:
    items = (subscription.get("items") or {}).get("data") or []
    if not items:
        return None
    item = items[0]
    for key in ("price", "plan"):
        ref = item.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("id"), str):
            return str(ref["id"])
        if isinstance(ref, str):
            return ref
    return None
