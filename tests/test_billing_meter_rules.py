"""The local meter server enforces Stripe's documented meter event rules (the tests rely on it)."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from tests.stripe_local.meter import MeterLedger

FORM = "application/x-www-form-urlencoded"
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def _body(**params: object) -> bytes:
    base: dict[str, object] = {
        "event_name": "api_calls",
        "payload[stripe_customer_id]": "cus_1",
        "payload[value]": "3",
    }
    base.update(params)
    return urlencode({k: v for k, v in base.items() if v is not None}).encode()


def test_an_identifier_is_refused_within_24_hours_then_forgotten() -> None:
    """A repeat identifier is a non-retryable 400 for a day; after that Stripe accepts it."""
    clock = Clock()
    ledger = MeterLedger(clock=clock)
    assert ledger.create(FORM, _body(identifier="ue_1"))[0] == 200
    status, body, retry = ledger.create(FORM, _body(identifier="ue_1"))
    assert (status, retry) == (400, False)
    assert "already exists with identifier ue_1" in body["error"]["message"]
    clock.now += 24 * 3600
    assert ledger.create(FORM, _body(identifier="ue_1"))[0] == 200
    assert len(ledger.events) == 2


@pytest.mark.parametrize(
    ("offset", "status"),
    [(-35 * 86400 - 1, 400), (-35 * 86400 + 1, 200), (300, 200), (301, 400)],
)
def test_timestamps_must_lie_in_stripes_window(offset: int, status: int) -> None:
    """Timestamps up to 35 days back and 5 minutes ahead are accepted, others refused."""
    ledger = MeterLedger(clock=lambda: NOW)
    assert ledger.create(FORM, _body(timestamp=int(NOW + offset)))[0] == status


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"event_name": None}, "event_name"),
        ({"payload[stripe_customer_id]": None}, "payload[stripe_customer_id]"),
        ({"payload[value]": "ten"}, "payload[value]"),
        ({"identifier": "x" * 101}, "identifier"),
        ({"timestamp": "soon"}, "timestamp"),
    ],
)
def test_required_and_well_formed_fields(params: dict[str, object], param: str) -> None:
    """Missing or malformed fields are a 400 naming the parameter."""
    status, body, _ = MeterLedger(clock=lambda: NOW).create(FORM, _body(**params))
    assert status == 400 and body["error"]["param"] == param


def test_a_json_body_carries_no_parameters() -> None:
    """Stripe's v1 API reads form-encoded bodies only."""
    status, body, _ = MeterLedger().create("application/json", b'{"event_name": "api_calls"}')
    assert status == 400 and body["error"]["param"] == "event_name"
