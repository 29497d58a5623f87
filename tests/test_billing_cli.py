"""The ``billing sync`` and ``usage report`` commands, run in-process."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.stripe_local.dbs import engine_for, sessions, tenant_id
from tests.stripe_local.fixtures import API_KEY, LocalStripe, running_localstripe

from tenantkit._cli_billing import register
from tenantkit._db import utcnow
from tenantkit.billing import StripeBilling
from tenantkit.context import bound_tenant
from tenantkit.usage import UsageRecorder


@pytest.fixture(scope="module")
def local_stripe() -> Iterator[LocalStripe]:
    """localstripe with the meter endpoints, on 127.0.0.1, for this module."""
    with running_localstripe() as server:
        yield server


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/cli.db"
    engine_for(url).dispose()
    return url


def _run(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="tenantkit")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code = args.func(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _record(url: str, tenant: str, quantity: int, **kw: object) -> None:
    engine = engine_for(url)
    with bound_tenant(tenant):
        UsageRecorder(sessions(engine)).record("api_calls", quantity, **kw)  # type: ignore[arg-type]
    engine.dispose()


def test_billing_sync_sends_and_draws_progress(local_stripe: LocalStripe, db_url: str) -> None:
    """billing sync sends due events, draws a progress bar on stderr and sums up on stdout."""
    tenant = tenant_id()
    engine = engine_for(db_url)
    StripeBilling(local_stripe.client(), sessions(engine)).ensure_customer(tenant)
    engine.dispose()
    for q in (1, 2, 3):
        _record(db_url, tenant, q)
    base = ["billing", "sync", "--database-url", db_url, "--stripe-api-key", API_KEY]
    code, out, err = _run([*base, "--stripe-api-base", local_stripe.url, "--batch-size", "2"])
    assert code == 0
    assert "sent 3 (already in Stripe 0), failed 0" in out
    assert "sync [" in err and "3/3" in err
    code, out, _ = _run([*base, "--stripe-api-base", local_stripe.url, "--no-progress"])
    assert code == 0 and "sent 0" in out


def test_billing_sync_exits_2_when_events_fail(local_stripe: LocalStripe, db_url: str) -> None:
    """An event Stripe can never take (older than 35 days) makes the command exit 2."""
    tenant = tenant_id()
    engine = engine_for(db_url)
    StripeBilling(local_stripe.client(), sessions(engine)).ensure_customer(tenant)
    engine.dispose()
    _record(db_url, tenant, 1, occurred_at=datetime(2020, 1, 1, tzinfo=UTC))
    code, out, _ = _run(
        [
            "billing",
            "sync",
            "--database-url",
            db_url,
            "--stripe-api-key",
            API_KEY,
            "--stripe-api-base",
            local_stripe.url,
        ]
    )
    assert code == 3 and "failed 1" in out  # not 2: argparse's usage-error status


def test_billing_sync_without_a_key_is_a_clear_error(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No API key anywhere: exit 1 with an error naming STRIPE_API_KEY."""
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    code, _, err = _run(["billing", "sync", "--database-url", db_url])
    assert code == 1 and "STRIPE_API_KEY" in err


def test_billing_sync_rejects_a_malformed_meter_mapping(db_url: str) -> None:
    """--meter takes TYPE=EVENT_NAME."""
    argv = ["billing", "sync", "--database-url", db_url, "--stripe-api-key", API_KEY]
    code, _, err = _run([*argv, "--meter", "api_calls"])
    assert code == 1 and "TYPE=EVENT_NAME" in err


def test_usage_report_prints_text_and_json(db_url: str) -> None:
    """usage report shows totals against limits, overage and the amount due."""
    tenant = tenant_id()
    _record(db_url, tenant, 101_000)
    cycle = utcnow().strftime("%Y-%m")
    base = ["usage", "report", "--database-url", db_url, "--tenant", tenant, "--plan", "starter"]
    code, out, _ = _run([*base, "--cycle", cycle])
    assert code == 0
    assert "101,000 / 100,000" in out and "amount due 29.50 usd" in out
    code, out, _ = _run([*base, "--json"])
    body = json.loads(out)
    assert code == 0 and body["overage"] == {"api_calls": 1000} and body["amount"] == "29.50"


def test_usage_report_refuses_a_bad_cycle_or_plan(db_url: str) -> None:
    """A malformed cycle or an unknown plan is a one-line error and exit 1."""
    base = ["usage", "report", "--database-url", db_url, "--tenant", tenant_id()]
    code, _, err = _run([*base, "--plan", "free", "--cycle", "2026-1"])
    assert code == 1 and "YYYY-MM" in err
    code, _, err = _run([*base, "--plan", "gold"])
    assert code == 1 and "unknown plan" in err
