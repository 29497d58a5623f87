"""The billing summary of an organization, and Stripe's webhooks."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from tenantkit.context import current_tenant

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
    p = platform()
    tenant = current_tenant()
    report = p.usage.report(org_id, plan=tenant)
    stripe: dict[str, Any] = {"configured": p.billing is not None}
    if p.billing is not None:
        stripe.update(p.billing.state(org_id))
    return jsonify(
        {
            "org_id": org_id,
            "plan": report.plan,
            "billing_cycle": report.billing_cycle,
            "period_start": report.to_dict()["period_start"],
            "period_end": report.to_dict()["period_end"],
            "currency": report.currency,
            "usage": report.totals,
            "limits": report.limits,
            "overage": report.overage,
            "base_amount": report.to_dict()["base_amount"],
            "overage_amount": report.to_dict()["overage_amount"],
            "amount_due": report.to_dict()["amount"],
            "stripe": stripe,
        }
    )


@bp.post("/webhooks/stripe")
@endpoint(
    "Receive a Stripe event (Stripe-Signature verified)",
    auth="public",
    tag="billing",
    responses=(400,),
    response="WebhookResult",
    description="A missing, forged, stale or replayed signature is a 400 and changes nothing.",
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
        }
    )
