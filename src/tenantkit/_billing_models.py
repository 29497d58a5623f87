"""Tables of the Stripe integration: one billing account per tenant, webhook events seen."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from ._db import Base, UTCDateTime, utcnow

BillingStatus = Literal["none", "active", "past_due", "canceled"]


class BillingAccount(Base):
    """A tenant's Stripe customer and subscription as tenantkit last saw them.

    Not ``TenantScoped``: webhooks and the meter sync look accounts up by
    Stripe customer id across tenants, as an admin job would.
    """

    __tablename__ = "tenantkit_billing_accounts"

    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255))
    stripe_subscription_item_id: Mapped[str | None] = mapped_column(String(255))
    plan: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="none")
    last_event_created: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class StripeWebhookEvent(Base):
    """A Stripe event id already processed: kept for good, so a replay is always refused."""

    __tablename__ = "tenantkit_stripe_webhook_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    tenant_id: Mapped[str | None] = mapped_column(String(63))
    outcome: Mapped[str] = mapped_column(String(32))
    created: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


@dataclass(frozen=True, slots=True)
class BillingState:
    """A snapshot of a tenant's billing account."""

    tenant_id: str
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    plan: str | None
    status: str

    @classmethod
    def from_row(cls, row: BillingAccount) -> BillingState:
        """Return the snapshot of a stored account."""
        return cls(
            tenant_id=row.tenant_id,
            stripe_customer_id=row.stripe_customer_id,
            stripe_subscription_id=row.stripe_subscription_id,
            plan=row.plan,
            status=row.status,
        )

    @property
    def past_due(self) -> bool:
        """Return whether the last invoice payment failed and is not yet paid."""
        return self.status == "past_due"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dictionary."""
        return {
            "tenant_id": self.tenant_id,
            "stripe_customer_id": self.stripe_customer_id,
            "stripe_subscription_id": self.stripe_subscription_id,
            "plan": self.plan,
            "status": self.status,
            "past_due": self.past_due,
        }
