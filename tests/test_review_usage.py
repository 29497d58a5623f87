"""Hostile usage and webhook input: a 4xx (422 or 400) and nothing written, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from tests.stripe_local.dbs import engine_for, sessions
from tests.stripe_local.fixtures import sign

from tenantkit._usage_cycle import cycle_bounds
from tenantkit.billing import StripeWebhookEvent
from tenantkit.context import bound_tenant
from tenantkit.errors import UnprocessableEntity
from tenantkit.usage import UsageEvent, UsageRecorder
from tenantkit.webhooks import StripeWebhooks, WebhookRejected

SECRET = "whsec_tenantkit_review"
NOW = 1_900_000_000


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = engine_for(f"sqlite:///{tmp_path}/usage.db")
    yield engine
    engine.dispose()


def _count(engine: Engine, model: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(model.__table__)) or 0)


@pytest.mark.parametrize("cycle", ["9999-12", "9999-01", "\u0662\u0660\u0662\u0664-01"])
def test_cycle_in_year_9999_or_other_digits_is_422(engine: Engine, cycle: str) -> None:
    """A cycle in 9999 (9999-12 ends in year 10000, past datetime) or in non-ASCII digits is 422."""
    with pytest.raises(UnprocessableEntity):
        cycle_bounds(cycle)
    recorder = UsageRecorder(sessions(engine), plan_of=lambda tenant: "free")
    with bound_tenant("acme"), pytest.raises(UnprocessableEntity):
        recorder.report(billing_cycle=cycle)


@pytest.mark.parametrize("value", ["\ud800", "nul\x00"])
@pytest.mark.parametrize("field", ["project_id", "idempotency_key"])
def test_unstorable_usage_text_is_422(engine: Engine, field: str, value: str) -> None:
    """A project id or idempotency key with a lone surrogate or NUL is a 422; nothing stored."""
    recorder = UsageRecorder(sessions(engine))
    with bound_tenant("acme"), pytest.raises(UnprocessableEntity) as caught:
        recorder.record("api_calls", 1, **{field: value})
    assert caught.value.extra["field"] == field
    assert _count(engine, UsageEvent) == 0


def test_get_with_an_odd_event_id(engine: Engine) -> None:
    """A non-string event id is a 422; one no row can hold is simply not found."""
    recorder = UsageRecorder(sessions(engine))
    with bound_tenant("acme"):
        with pytest.raises(UnprocessableEntity):
            recorder.get(5)  # type: ignore[arg-type]
        assert recorder.get("ue_\ud800") is None


def _hooks(engine: Engine) -> StripeWebhooks:
    return StripeWebhooks(SECRET, sessions(engine), clock=lambda: float(NOW))


def test_webhook_body_that_is_not_utf8_is_400(engine: Engine) -> None:
    """An unsigned-looking body of invalid UTF-8 with a fresh timestamp is a 400, not a 500."""
    with pytest.raises(WebhookRejected) as caught:
        _hooks(engine).handle(b"\xff\xfe{", f"t={NOW},v1=00")
    assert caught.value.status == 400
    assert _count(engine, StripeWebhookEvent) == 0


def test_webhook_with_an_infinite_created_is_400(engine: Engine) -> None:
    """A signed event whose 'created' is 1e999 (JSON for infinity) is a 400 bad payload."""
    event = {"id": "evt_1", "type": "invoice.paid", "created": 0, "data": {"object": {}}}
    payload = json.dumps(event).replace('"created": 0', '"created": 1e999')
    with pytest.raises(WebhookRejected) as caught:
        _hooks(engine).handle(payload.encode(), sign(payload, SECRET, NOW))
    assert caught.value.extra["reason"] == "bad_payload"
    assert _count(engine, StripeWebhookEvent) == 0


@pytest.mark.parametrize("plan", ["platinum", "", 5, ["pro"]])
def test_subscribing_to_an_unknown_plan_is_422(engine: Engine, plan: Any) -> None:
    """A plan name the caller made up is a 422 naming the field, before any Stripe call."""
    from tenantkit.billing import StripeBilling

    class NoStripe:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError("Stripe must not be called")

    billing = StripeBilling(NoStripe(), sessions(engine))  # type: ignore[arg-type]
    with pytest.raises(UnprocessableEntity) as caught:
        billing.subscribe("acme", plan)
    assert caught.value.extra["field"] == "plan"
