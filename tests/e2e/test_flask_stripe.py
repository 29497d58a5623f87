"""Billing with Stripe, end to end, against the local Stripe servers (localstripe + meters).

Onboarding creates the customer; a card starts the plan's subscription; a
plan change moves it; recorded usage reaches the Stripe meter once; Stripe's
webhooks are verified and change the organization.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from tests.e2e._flask_server import FakeClock, Served, make_config, onboard, serve
from tests.stripe_local.fixtures import (
    API_KEY,
    LocalStripe,
    add_card,
    create_prices,
    running_localstripe,
    sign,
)

from tenantkit._audit_model import AuditRow

WEBHOOK_SECRET = "whsec_flask_example_test"


@pytest.fixture(scope="module")
def local_stripe() -> Iterator[LocalStripe]:
    """The local Stripe API with Billing Meters, in a subprocess."""
    with running_localstripe() as server:
        yield server


@pytest.fixture(scope="module")
def served(local_stripe: LocalStripe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The app with Stripe configured: prices for Starter and Pro, a webhook secret."""
    prices = create_prices(local_stripe.client())
    plans = {name: {"stripe_price_id": price} for name, price in prices.items()}
    config = make_config(
        tmp_path_factory.mktemp("stripe"),
        stripe_secret_key=API_KEY,
        stripe_api_base=local_stripe.url,
        stripe_webhook_secret=WEBHOOK_SECRET,
        plans_json=json.dumps(plans),
    )
    # Stripe's meter window is checked against real time, so this clock starts now.
    with serve(config, FakeClock(time.time())) as running:
        yield running


def deliver(served: Served, event: dict, secret: str = WEBHOOK_SECRET) -> tuple[int, dict]:
    """POST a Stripe event to the webhook route, signed with ``secret``."""
    payload = json.dumps(event)
    response = served.client().post(
        "/webhooks/stripe",
        content=payload,
        headers={"Stripe-Signature": sign(payload, secret, int(time.time()))},
    )
    return response.status_code, response.json()


def test_customer_subscription_plan_change_and_meter_events(
    served: Served, local_stripe: LocalStripe
) -> None:
    """Customer at onboarding, subscription with a card, plan change, usage to the meter."""
    org = onboard(served, plan="starter")
    owner = served.client(org.token)
    summary = owner.get(f"/billing/{org.id}").json()
    customer = summary["stripe"]["stripe_customer_id"]
    assert customer.startswith("cus_")
    remote = local_stripe.client().v1.customers.retrieve(customer)
    assert (remote.metadata["tenant_id"], remote.email) == (org.id, org.owner_email)

    card = add_card(local_stripe.client())
    subscribed = owner.post(f"/billing/{org.id}/payment-method", json={"payment_method_id": card})
    assert subscribed.status_code == 200, subscribed.text
    stripe_state = subscribed.json()["stripe"]
    assert (stripe_state["plan"], stripe_state["status"]) == ("starter", "active")
    subscription = stripe_state["stripe_subscription_id"]

    assert owner.put(f"/organizations/{org.id}/plan", json={"plan": "pro"}).status_code == 200
    after = owner.get(f"/billing/{org.id}").json()
    assert after["plan"] == "pro"
    assert after["stripe"]["stripe_subscription_id"] == subscription
    assert after["amount_due"] == "99.00"

    project = owner.post(
        f"/organizations/{org.id}/projects", json={"name": "P", "slug": "metered"}
    ).json()
    key = owner.post(f"/organizations/{org.id}/api-keys", json={"name": "meter"}).json()["key"]
    usage = {"project_id": project["id"], "type": "api_calls", "quantity": 250}
    recorded = served.client(**{"X-API-Key": key}).post(
        f"/organizations/{org.id}/resources", json={**usage, "idempotency_key": "m-1"}
    )
    assert recorded.status_code == 201
    served.client(**{"X-API-Key": key}).post(
        f"/organizations/{org.id}/resources", json={**usage, "idempotency_key": "m-1"}
    )
    sent = [e for e in local_stripe.meter_events() if e["identifier"] == recorded.json()["id"]]
    assert len(sent) == 1
    assert (sent[0]["event_name"], sent[0]["payload"]["value"]) == ("api_calls", "250")
    assert sent[0]["payload"]["stripe_customer_id"] == customer
    report = owner.get(f"/organizations/{org.id}/usage").json()
    assert report["meter_status"] == {"sent": 1}


def test_webhooks_are_verified_and_a_canceled_subscription_suspends(
    served: Served, local_stripe: LocalStripe
) -> None:
    """Forged: 400, nothing changes; a real deletion suspends; a repeat is a 200 duplicate."""
    org = onboard(served, plan="starter")
    owner = served.client(org.token)
    owner.post(
        f"/billing/{org.id}/payment-method",
        json={"payment_method_id": add_card(local_stripe.client())},
    )
    subscription = owner.get(f"/billing/{org.id}").json()["stripe"]["stripe_subscription_id"]
    local_stripe.client().v1.subscriptions.cancel(subscription)
    deleted = [
        e
        for e in local_stripe.events("customer.subscription.deleted")
        if e["data"]["object"]["id"] == subscription
    ]
    assert len(deleted) == 1
    event = deleted[0]

    forged_status, forged = deliver(served, event, secret="whsec_attacker")
    assert (forged_status, forged["reason"]) == (400, "bad_signature")
    unsigned = served.client().post("/webhooks/stripe", content=json.dumps(event))
    assert unsigned.status_code == 400
    assert owner.get(f"/organizations/{org.id}").status_code == 200

    status, body = deliver(served, event)
    assert (status, body["handled"], body["duplicate"]) == (200, True, False)
    replay_status, replay = deliver(served, event)
    assert (replay_status, replay["handled"], replay["duplicate"]) == (200, False, True)
    suspended = owner.get(f"/organizations/{org.id}")
    assert (suspended.status_code, suspended.json()["reason"]) == (403, "suspended")
    with Session(served.app.extensions["flask_app"].jobs_engine) as session:
        [entry] = session.scalars(
            select(AuditRow).where(
                AuditRow.tenant_id == org.id, AuditRow.action == "organization.status_changed"
            )
        )
    assert (entry.actor, entry.changes) == ("stripe", {"status": ["active", "suspended"]})


def test_onboarding_on_free_needs_no_subscription(served: Served) -> None:
    """Free costs nothing: a customer, no subscription, nothing due."""
    org = onboard(served, plan="free")
    summary = served.client(org.token).get(f"/billing/{org.id}").json()
    assert summary["stripe"]["stripe_subscription_id"] is None
    assert summary["stripe"]["stripe_customer_id"].startswith("cus_")
    assert summary["amount_due"] == "0.00"


def test_the_app_without_stripe_refuses_webhooks_with_400(tmp_path: Path) -> None:
    """Without STRIPE_WEBHOOK_SECRET no signature can verify: every webhook is a 400."""
    with serve(make_config(tmp_path)) as plain:
        status, body = deliver(plain, {"id": "evt_1", "type": "invoice.paid"}, secret="whsec_x")
        assert (status, body["reason"]) == (400, "bad_signature")
