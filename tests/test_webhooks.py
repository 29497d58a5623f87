"""Stripe webhooks: verified, fresh, once each; real localstripe events change the tenant."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from tests.stripe_local.dbs import engine_for, sessions, tenant_id
from tests.stripe_local.fixtures import (
    LocalStripe,
    add_card,
    create_prices,
    running_localstripe,
    sign,
)

from tenantkit._db import utcnow
from tenantkit.billing import BillingAccount, StripeBilling, StripeWebhookEvent
from tenantkit.errors import ConfigurationError
from tenantkit.plans import Plans
from tenantkit.tenants import TenantStore as TenantStore_
from tenantkit.webhooks import (
    SIGNATURE_HEADER,
    StripeWebhooks,
    WebhookInProgress,
    WebhookRejected,
)

SECRET = "whsec_tenantkit_test"


class TenantStore:
    """Records what the webhooks asked the tenant store to change."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def plan(self, tenant: str, plan: str) -> None:
        self.calls.append(("plan", tenant, plan))

    def status(self, tenant: str, status: str) -> None:
        self.calls.append(("status", tenant, status))

    def billing(self, tenant: str, status: str) -> None:
        self.calls.append(("billing", tenant, status))


@pytest.fixture(scope="module")
def local_stripe() -> Iterator[LocalStripe]:
    """localstripe on 127.0.0.1 for this module."""
    with running_localstripe() as server:
        yield server


@pytest.fixture(scope="module")
def prices(local_stripe: LocalStripe) -> dict[str, str]:
    return create_prices(local_stripe.client())


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/webhooks.db"
    else:
        url = request.getfixturevalue("postgres_url").render_as_string(hide_password=False)
    eng = engine_for(url)
    yield eng
    eng.dispose()


@pytest.fixture
def plans(prices: dict[str, str]) -> Plans:
    overrides = {name: {"stripe_price_id": price} for name, price in prices.items()}
    return Plans.from_mapping({"TENANTKIT_PLANS": overrides})


@pytest.fixture
def store() -> TenantStore:
    return TenantStore()


@pytest.fixture
def hooks(engine: Engine, plans: Plans, store: TenantStore) -> StripeWebhooks:
    return StripeWebhooks(
        SECRET,
        sessions(engine),
        plans=plans,
        on_plan_change=store.plan,
        on_status_change=store.status,
        on_billing_status=store.billing,
    )


def _deliver(
    hooks: StripeWebhooks, event: dict[str, Any], *, at: int | None = None, secret: str = SECRET
) -> Any:
    payload = json.dumps(event)
    return hooks.handle(payload.encode(), sign(payload, secret, at or int(time.time())))


def _subscribed(
    local_stripe: LocalStripe, engine: Engine, prices: dict[str, str]
) -> tuple[str, str]:
    """A tenant with a Stripe customer and a Starter subscription made in Stripe directly."""
    tenant = tenant_id()
    client = local_stripe.client()
    customer = StripeBilling(client, sessions(engine)).ensure_customer(tenant)
    method = add_card(client)
    client.v1.payment_methods.attach(method, params={"customer": customer})
    settings: Any = {"invoice_settings": {"default_payment_method": method}}
    client.v1.customers.update(customer, params=settings)
    params: Any = {"customer": customer, "items": [{"price": prices["starter"]}]}
    return tenant, client.v1.subscriptions.create(params=params).id


def _latest(local_stripe: LocalStripe, kind: str, object_id: str) -> dict[str, Any]:
    events = [
        e
        for e in local_stripe.events(kind)
        if object_id in (e["data"]["object"]["id"], e["data"]["object"].get("subscription"))
    ]
    assert events, f"localstripe emitted no {kind} for {object_id}"
    return events[-1]


def _account(engine: Engine, tenant: str) -> BillingAccount | None:
    with sessions(engine)() as s:
        return s.get(BillingAccount, tenant)


def _recorded(engine: Engine) -> int:
    with sessions(engine)() as s:
        return int(s.scalar(select(func.count()).select_from(StripeWebhookEvent)) or 0)


def test_subscription_updated_changes_the_plan(
    hooks: StripeWebhooks,
    local_stripe: LocalStripe,
    engine: Engine,
    prices: dict[str, str],
    store: TenantStore,
) -> None:
    """A plan change made in Stripe reaches the tenant store as the matching plan."""
    tenant, sub_id = _subscribed(local_stripe, engine, prices)
    client = local_stripe.client()
    item = client.v1.subscriptions.retrieve(sub_id)["items"].data[0].id
    change: Any = {"items": [{"id": item, "price": prices["pro"]}]}
    client.v1.subscriptions.update(sub_id, params=change)
    result = _deliver(hooks, _latest(local_stripe, "customer.subscription.updated", sub_id))
    assert result.handled and result.tenant_id == tenant
    assert ("plan", tenant, "pro") in store.calls
    account = _account(engine, tenant)
    assert account is not None and account.plan == "pro"


def test_payment_failed_sets_past_due_and_paid_clears_it(
    hooks: StripeWebhooks,
    local_stripe: LocalStripe,
    engine: Engine,
    prices: dict[str, str],
    store: TenantStore,
) -> None:
    """invoice.payment_failed marks the tenant past due; the paid invoice clears it.

    localstripe does not emit ``invoice.payment_failed`` for card payments, so
    that event wraps the subscription's real invoice object as Stripe would.
    """
    tenant, sub_id = _subscribed(local_stripe, engine, prices)
    paid = _latest(local_stripe, "invoice.payment_succeeded", sub_id)
    invoice = local_stripe.client().v1.invoices.retrieve(paid["data"]["object"]["id"])
    failed = {
        "id": f"evt_failed_{sub_id}",
        "object": "event",
        "type": "invoice.payment_failed",
        "created": paid["created"] - 1,
        "livemode": False,
        "data": {"object": {**invoice.to_dict(), "status": "open"}},
    }
    _deliver(hooks, failed)
    account = _account(engine, tenant)
    assert account is not None and account.status == "past_due"
    paid["type"] = "invoice.paid"  # Stripe sends both names; localstripe only the older one
    _deliver(hooks, paid)
    account = _account(engine, tenant)
    assert account is not None and account.status == "active"
    assert store.calls == [("billing", tenant, "past_due"), ("billing", tenant, "active")]


def test_subscription_deleted_suspends_the_tenant(
    hooks: StripeWebhooks,
    local_stripe: LocalStripe,
    engine: Engine,
    prices: dict[str, str],
    store: TenantStore,
) -> None:
    """A canceled subscription suspends the tenant and marks the account canceled."""
    tenant, sub_id = _subscribed(local_stripe, engine, prices)
    local_stripe.client().v1.subscriptions.cancel(sub_id)
    _deliver(hooks, _latest(local_stripe, "customer.subscription.deleted", sub_id))
    assert ("status", tenant, "suspended") in store.calls
    account = _account(engine, tenant)
    assert account is not None and account.status == "canceled"


def _assert_nothing_changed(engine: Engine, store: TenantStore, tenant: str, before: int) -> None:
    account = _account(engine, tenant)
    assert store.calls == [] and _recorded(engine) == before
    assert account is not None and account.status == "none" and account.plan is None


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("forged", "bad_signature"),
        ("tampered", "bad_signature"),
        ("stale", "stale"),
        ("future", "future_timestamp"),
        ("unsigned", "no_signature"),
        ("garbled", "bad_signature"),
    ],
)
def test_bad_deliveries_are_400_and_change_nothing(
    hooks: StripeWebhooks,
    local_stripe: LocalStripe,
    engine: Engine,
    prices: dict[str, str],
    store: TenantStore,
    how: str,
    reason: str,
) -> None:
    """Forged, tampered, stale, future, unsigned or garbled signatures are refused with 400."""
    tenant, sub_id = _subscribed(local_stripe, engine, prices)
    local_stripe.client().v1.subscriptions.cancel(sub_id)
    event = _latest(local_stripe, "customer.subscription.deleted", sub_id)
    payload = json.dumps(event)
    now = int(time.time())
    header: str | None = sign(payload, SECRET, now)
    if how == "forged":
        header = sign(payload, "whsec_attacker", now)
    elif how == "tampered":
        payload = payload.replace('"canceled"', '"active"')
    elif how == "stale":
        header = sign(payload, SECRET, now - 301)
    elif how == "future":
        header = sign(payload, SECRET, now + 120)
    elif how == "unsigned":
        header = None
    elif how == "garbled":
        header = "t=abc,v1=zz"
    before = _recorded(engine)
    with pytest.raises(WebhookRejected) as info:
        hooks.handle(payload.encode(), header)
    assert info.value.status == 400 and info.value.to_problem()["reason"] == reason
    _assert_nothing_changed(engine, store, tenant, before)


def test_a_repeated_delivery_succeeds_and_changes_nothing(
    hooks: StripeWebhooks,
    local_stripe: LocalStripe,
    engine: Engine,
    prices: dict[str, str],
    store: TenantStore,
) -> None:
    """The same event id, freshly signed again: a success marked duplicate; applied once.

    Stripe retries any non-2xx answer for three days and then disables the
    endpoint, so an event applied before must not be refused.
    """
    tenant, sub_id = _subscribed(local_stripe, engine, prices)
    local_stripe.client().v1.subscriptions.cancel(sub_id)
    event = _latest(local_stripe, "customer.subscription.deleted", sub_id)
    first = _deliver(hooks, event)
    assert (first.handled, first.duplicate) == (True, False)
    before = _recorded(engine)
    again = _deliver(hooks, event, at=int(time.time()) + 1)
    assert (again.event_id, again.handled, again.duplicate, again.changes) == (
        event["id"],
        False,
        True,
        {},
    )
    assert store.calls.count(("status", tenant, "suspended")) == 1
    assert _recorded(engine) == before


@pytest.mark.parametrize(
    "body",
    [
        "[1, 2]",
        json.dumps({"id": "evt_" + "x" * 300, "type": "invoice.paid", "data": {"object": {}}}),
        json.dumps({"id": "evt_1", "type": "x" * 101, "data": {"object": {}}}),
        json.dumps(
            {"id": "evt_1", "type": "invoice.paid", "created": 10**30, "data": {"object": {}}}
        ),
    ],
    ids=["json-list", "long-id", "long-type", "huge-created"],
)
def test_a_signed_body_no_event_column_holds_is_a_400(
    hooks: StripeWebhooks, engine: Engine, body: str
) -> None:
    """Signed with our secret but not an event we can record: 400 bad_payload, nothing kept."""
    before = _recorded(engine)
    with pytest.raises(WebhookRejected) as info:
        hooks.handle(body.encode(), sign(body, SECRET, int(time.time())))
    assert info.value.to_problem()["reason"] == "bad_payload"
    assert _recorded(engine) == before


def test_concurrent_duplicate_deliveries_apply_once(
    hooks: StripeWebhooks,
    local_stripe: LocalStripe,
    engine: Engine,
    prices: dict[str, str],
    store: TenantStore,
) -> None:
    """Four simultaneous deliveries of one event: one applies it, the others change nothing."""
    tenant, sub_id = _subscribed(local_stripe, engine, prices)
    local_stripe.client().v1.subscriptions.cancel(sub_id)
    event = _latest(local_stripe, "customer.subscription.deleted", sub_id)
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def deliver() -> None:
        barrier.wait()
        try:
            result = _deliver(hooks, event)
            outcomes.append("duplicate" if result.duplicate else "applied")
        except WebhookInProgress:
            outcomes.append("in_progress")

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("applied") == 1
    assert set(outcomes) <= {"applied", "duplicate", "in_progress"} and len(outcomes) == 4
    assert store.calls.count(("status", tenant, "suspended")) == 1


def test_an_older_event_arriving_late_is_recorded_but_not_applied(
    hooks: StripeWebhooks,
    local_stripe: LocalStripe,
    engine: Engine,
    prices: dict[str, str],
    store: TenantStore,
) -> None:
    """Stripe does not order deliveries: an event older than the last applied one is ignored."""
    tenant, sub_id = _subscribed(local_stripe, engine, prices)
    client = local_stripe.client()
    item = client.v1.subscriptions.retrieve(sub_id)["items"].data[0].id
    change: Any = {"items": [{"id": item, "price": prices["pro"]}]}
    client.v1.subscriptions.update(sub_id, params=change)
    newer = _latest(local_stripe, "customer.subscription.updated", sub_id)
    older = json.loads(json.dumps(newer))
    older["id"] = newer["id"] + "_older"
    older["created"] = newer["created"] - 60
    older["data"]["object"]["items"]["data"][0]["plan"]["id"] = prices["starter"]
    _deliver(hooks, newer)
    result = _deliver(hooks, older)
    assert not result.handled
    account = _account(engine, tenant)
    assert account is not None and account.plan == "pro"
    assert [c for c in store.calls if c[0] == "plan"] == [("plan", tenant, "pro")]


def test_other_event_types_are_recorded_and_ignored(
    hooks: StripeWebhooks, local_stripe: LocalStripe, engine: Engine, prices: dict[str, str]
) -> None:
    """An event type we do not act on is acknowledged (not handled) and still de-duplicated."""
    _tenant, sub_id = _subscribed(local_stripe, engine, prices)
    event = _latest(local_stripe, "customer.subscription.created", sub_id)
    assert not _deliver(hooks, event).handled
    again = _deliver(hooks, event)
    assert (again.handled, again.duplicate) == (False, True)


@pytest.mark.parametrize(
    "kwargs",
    [{"tolerance": 0}, {"tolerance": 3600}, {"max_clock_skew": -1}],
)
def test_unbounded_tolerances_are_refused(engine: Engine, kwargs: dict[str, Any]) -> None:
    """Tolerance must be 1..900 seconds and the clock skew 0..300."""
    with pytest.raises(ConfigurationError):
        StripeWebhooks(SECRET, sessions(engine), **kwargs)


def test_a_secret_is_required(engine: Engine) -> None:
    """Without a signing secret nothing could be verified: refuse to start."""
    with pytest.raises(ConfigurationError):
        StripeWebhooks("", sessions(engine))


def test_a_tenant_store_is_updated_directly(
    local_stripe: LocalStripe, engine: Engine, plans: Plans, prices: dict[str, str]
) -> None:
    """With tenant_store=, a plan change and a cancellation land in the real TenantStore."""
    store = TenantStore_(engine)
    store.create_all()
    tenant, sub_id = _subscribed(local_stripe, engine, prices)
    store.create(id=tenant, name="Acme", plan="starter")
    hooks = StripeWebhooks(SECRET, sessions(engine), plans=plans, tenant_store=store)
    client = local_stripe.client()
    item = client.v1.subscriptions.retrieve(sub_id)["items"].data[0].id
    change: Any = {"items": [{"id": item, "price": prices["pro"]}]}
    client.v1.subscriptions.update(sub_id, params=change)
    _deliver(hooks, _latest(local_stripe, "customer.subscription.updated", sub_id))
    assert store.get(tenant).plan == "pro"
    client.v1.subscriptions.cancel(sub_id)
    _deliver(hooks, _latest(local_stripe, "customer.subscription.deleted", sub_id))
    assert store.get(tenant).status == "suspended"


def test_a_failing_callback_lets_stripes_retry_apply_the_event(
    local_stripe: LocalStripe, engine: Engine, plans: Plans, prices: dict[str, str]
) -> None:
    """If the tenant store fails, the event is not marked processed: the retry applies it."""
    tenant, sub_id = _subscribed(local_stripe, engine, prices)
    local_stripe.client().v1.subscriptions.cancel(sub_id)
    event = _latest(local_stripe, "customer.subscription.deleted", sub_id)
    suspended: list[str] = []
    failures = [RuntimeError("tenant store down")]

    def suspend(tenant_id: str, status: str) -> None:
        if failures:
            raise failures.pop()
        suspended.append(tenant_id)

    hooks = StripeWebhooks(SECRET, sessions(engine), plans=plans, on_status_change=suspend)
    with pytest.raises(RuntimeError):
        _deliver(hooks, event)
    assert _deliver(hooks, event).handled
    assert suspended == [tenant]


def test_a_delivery_that_died_midway_does_not_block_the_retry(
    hooks: StripeWebhooks,
    local_stripe: LocalStripe,
    engine: Engine,
    prices: dict[str, str],
    store: TenantStore,
) -> None:
    """An event left 'processing' by a dead process is taken over after five minutes."""
    tenant, sub_id = _subscribed(local_stripe, engine, prices)
    local_stripe.client().v1.subscriptions.cancel(sub_id)
    event = _latest(local_stripe, "customer.subscription.deleted", sub_id)
    with sessions(engine)() as session, session.begin():
        session.add(
            StripeWebhookEvent(
                id=event["id"],
                type=event["type"],
                tenant_id=tenant,
                outcome="processing",
                created=event["created"],
                received_at=utcnow() - timedelta(minutes=4),
            )
        )
    with pytest.raises(WebhookInProgress) as info:
        _deliver(hooks, event)  # the first delivery may still be running: Stripe retries a 409
    assert (info.value.status, info.value.to_problem()["reason"]) == (409, "in_progress")
    assert info.value.headers["Retry-After"] == "5"
    assert ("status", tenant, "suspended") not in store.calls
    with sessions(engine)() as session, session.begin():
        row = session.get(StripeWebhookEvent, event["id"])
        assert row is not None
        row.received_at = utcnow() - timedelta(minutes=6)
    assert _deliver(hooks, event).handled
    assert ("status", tenant, "suspended") in store.calls


class _Receiver(BaseHTTPRequestHandler):
    """Hands each POST to ``server.hooks`` and answers 200 or the problem's status."""

    server: Any

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            self.server.results.append(
                self.server.hooks.handle(body, self.headers.get(SIGNATURE_HEADER))
            )
            self.send_response(200)
        except WebhookRejected as exc:
            self.server.results.append(exc)
            self.send_response(exc.status)
        self.end_headers()
        self.server.delivered.set()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _wait_for(server: Any, tenant: str) -> Any:
    """Wait (bounded) for the delivery about ``tenant``; earlier tests' events may come first."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for result in list(server.results):
            assert not isinstance(result, WebhookRejected), result
            if result.tenant_id == tenant:
                return result
        server.delivered.wait(timeout=1)
        server.delivered.clear()
    raise AssertionError("localstripe delivered nothing for the tenant")


def test_a_delivery_signed_by_localstripe_itself_is_accepted(
    hooks: StripeWebhooks,
    local_stripe: LocalStripe,
    engine: Engine,
    prices: dict[str, str],
    store: TenantStore,
) -> None:
    """localstripe signs and POSTs the event over HTTP; our verification accepts its signature."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.hooks, server.results, server.delivered = hooks, [], threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        hook_id = f"wh_{tenant_id()}"
        form = urllib.parse.urlencode(
            [
                ("url", f"http://127.0.0.1:{server.server_address[1]}/webhooks/stripe"),
                ("secret", SECRET),
                ("events[]", "customer.subscription.deleted"),
            ]
        ).encode()
        with urllib.request.urlopen(f"{local_stripe.url}/_config/webhooks/{hook_id}", data=form):
            pass
        tenant, sub_id = _subscribed(local_stripe, engine, prices)
        local_stripe.client().v1.subscriptions.cancel(sub_id)
        ours = _wait_for(server, tenant)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert ours.tenant_id == tenant and ours.handled
    assert ("status", tenant, "suspended") in store.calls


@pytest.mark.parametrize("kind", ["customer.subscription.updated", "customer.subscription.deleted"])
def test_a_stranger_customers_event_never_changes_a_tenant_with_its_own_customer(
    hooks: StripeWebhooks,
    local_stripe: LocalStripe,
    engine: Engine,
    prices: dict[str, str],
    store: TenantStore,
    kind: str,
) -> None:
    """An unknown customer's subscription whose metadata names a billed tenant is ignored."""
    tenant, _sub_id = _subscribed(local_stripe, engine, prices)
    client = local_stripe.client()
    stranger = client.v1.customers.create(params={"metadata": {"tenant_id": tenant}}).id
    method = add_card(client)
    client.v1.payment_methods.attach(method, params={"customer": stranger})
    settings: Any = {"invoice_settings": {"default_payment_method": method}}
    client.v1.customers.update(stranger, params=settings)
    params: Any = {
        "customer": stranger,
        "items": [{"price": prices["pro"]}],
        "metadata": {"tenant_id": tenant},
    }
    sub_id = client.v1.subscriptions.create(params=params).id
    if kind == "customer.subscription.updated":
        client.v1.subscriptions.update(sub_id, params={"metadata": {"note": "x"}})
    else:
        client.v1.subscriptions.cancel(sub_id)
    result = _deliver(hooks, _latest(local_stripe, kind, sub_id))
    assert not result.handled and result.tenant_id is None
    assert store.calls == []
    account = _account(engine, tenant)
    assert account is not None and account.status == "none" and account.plan is None


def _on_starter(
    local_stripe: LocalStripe, engine: Engine, plans: Plans
) -> tuple[str, StripeBilling, Any, str]:
    """A new tenant with a card on file, subscribed to Starter through StripeBilling."""
    tenant = tenant_id()
    client = local_stripe.client()
    billing = StripeBilling(client, sessions(engine), plans=plans)
    billing.ensure_customer(tenant)
    billing.set_payment_method(tenant, add_card(client))
    subscription = billing.subscribe(tenant, "starter").stripe_subscription_id
    assert subscription is not None
    return tenant, billing, client, subscription


def test_an_update_of_a_replaced_subscription_changes_nothing(
    hooks: StripeWebhooks,
    local_stripe: LocalStripe,
    engine: Engine,
    plans: Plans,
    store: TenantStore,
) -> None:
    """A late update of the tenant's old, canceled subscription leaves the new one in charge."""
    tenant, billing, client, old = _on_starter(local_stripe, engine, plans)
    client.v1.subscriptions.update(old, params={"metadata": {"note": "x"}})
    late = _latest(local_stripe, "customer.subscription.updated", old)
    billing.cancel(tenant)
    new = billing.subscribe(tenant, "pro").stripe_subscription_id
    assert new is not None and new != old
    _deliver(hooks, late)
    account = _account(engine, tenant)
    assert account is not None
    assert (account.plan, account.stripe_subscription_id, account.status) == ("pro", new, "active")
    assert store.calls == []


def test_a_failed_invoice_of_a_replaced_subscription_changes_nothing(
    hooks: StripeWebhooks,
    local_stripe: LocalStripe,
    engine: Engine,
    plans: Plans,
    store: TenantStore,
) -> None:
    """A payment failure on the old subscription's invoice leaves the paid new one active."""
    tenant, billing, client, old = _on_starter(local_stripe, engine, plans)
    paid = _latest(local_stripe, "invoice.payment_succeeded", old)
    billing.cancel(tenant)
    new = billing.subscribe(tenant, "pro").stripe_subscription_id
    invoice = client.v1.invoices.retrieve(paid["data"]["object"]["id"]).to_dict()
    assert invoice["subscription"] == old
    for shape in ("subscription", "parent"):
        obj = {**invoice, "status": "open"}
        if shape == "parent":  # the shape of API versions from 2025-03-31 on
            obj.pop("subscription")
            obj["parent"] = {"subscription_details": {"subscription": old}}
        failed = {
            "id": f"evt_failed_{old}_{shape}",
            "object": "event",
            "type": "invoice.payment_failed",
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": obj},
        }
        result = _deliver(hooks, failed)
        assert result.tenant_id == tenant and result.changes == {}, shape
    account = _account(engine, tenant)
    assert account is not None
    assert (account.plan, account.stripe_subscription_id, account.status) == ("pro", new, "active")
    assert store.calls == []
