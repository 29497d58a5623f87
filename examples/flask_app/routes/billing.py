"""The billing summary of an organization, and Stripe's webhooks."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from tenantkit.context import current_tenant
from tenantkit.errors import Conflict

from .. import schemas
from ..api import endpoint
from ..context import platform

bp = Blueprint("billing", __name__)


@bp.get("/billing/<org_id>")
@endpoint(
    "Billing summary: plan, cycle, usage, amount due, Stripe state",
    auth="admin",
    tag="billing",
    responses=(401, 403, 404),
    response="BillingSummary",
)
def summary(org_id: str) -> ResponseReturnValue:
    return jsonify(billing_summary(org_id))


def billing_summary(org_id: str) -> dict[str, Any]:
    """Return the organization's plan, cycle, usage, amount due and Stripe state."""
    p = platform()
    tenant = current_tenant()
    report = p.usage.report(org_id, plan=tenant).to_dict()
    stripe: dict[str, Any] = {"configured": p.billing is not None}
    if p.billing is not None:
        stripe.update(p.billing.state(org_id))
    return {
        "org_id": org_id,
        **{
            name: report[name]
            for name in ("plan", "billing_cycle", "period_start", "period_end", "currency")
        },
        "usage": report["totals"],
        "limits": report["limits"],
        "overage": report["overage"],
        "base_amount": report["base_amount"],
        "overage_amount": report["overage_amount"],
        "amount_due": report["amount"],
        "stripe": stripe,
    }


@bp.post("/billing/<org_id>/payment-method")
@endpoint(
    "Attach a card (a Stripe payment method id) and start the plan's subscription",
    auth="owner",
    tag="billing",
    body=schemas.PAYMENT_METHOD,
    responses=(401, 402, 403, 404, 409, 422, 503),
    response="BillingSummary",
    description="The payment method comes from Stripe.js or Checkout (pm_...). With it, "
    "a paid plan chosen at onboarding gets its subscription.",
)
def payment_method(org_id: str, body: dict[str, Any]) -> ResponseReturnValue:
    p = platform()
    if p.billing is None:
        raise Conflict("billing is not configured on this server (STRIPE_SECRET_KEY)")
    p.billing.add_payment_method(current_tenant(), body["payment_method_id"])
    return jsonify(billing_summary(org_id))


@bp.post("/webhooks/stripe")
@endpoint(
    "Receive a Stripe event (Stripe-Signature verified)",
    auth="public",
    tag="billing",
    responses=(400, 409),
    response="WebhookResult",
    description=(
        "A missing, forged or stale signature is a 400 and changes nothing. An event"
        " applied before is a 200 with duplicate true that changes nothing; one that"
        " another delivery is applying right now is a 409 (Stripe retries it)."
    ),
)
def stripe_webhook() -> ResponseReturnValue:
    result = platform().webhooks.handle(
        request.get_data(cache=True), request.headers.get("Stripe-Signature")
    )
    return jsonify(
        {
            "received": True,
            "event_id": result.event_id,
            "type": result.type,
            "handled": result.handled,
            "duplicate": result.duplicate,
        }
    )
