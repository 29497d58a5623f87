"""Usage alerts at 80% and 100%: once per cycle, persisted across restarts, delivered."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from tests.stripe_local.dbs import engine_for, sessions, tenant_id

from tenantkit._usage_alerts import UsageAlert, UsageAlerts
from tenantkit.usage import ApiCallCounter, UsageRecorder

JAN = datetime(2026, 1, 10, tzinfo=UTC)
FEB = datetime(2026, 2, 10, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = engine_for(f"sqlite:///{tmp_path}/alerts.db")
    yield eng
    eng.dispose()


def _alerts(engine: Engine, inbox: list[UsageAlert]) -> UsageAlerts:
    alerts = UsageAlerts(sessions(engine))
    alerts.subscribe(inbox.append)
    return alerts


def test_alerts_fire_at_80_and_100_percent_once(engine: Engine) -> None:
    """Crossing 80% alerts once; crossing 100% alerts once more; repeats stay silent."""
    tenant, inbox = tenant_id(), list[UsageAlert]()
    alerts = _alerts(engine, inbox)
    assert alerts.check(tenant, "free", "api_calls", 7_999, now=JAN) == []
    alerts.check(tenant, "free", "api_calls", 8_000, now=JAN)
    alerts.check(tenant, "free", "api_calls", 9_000, now=JAN)
    alerts.check(tenant, "free", "api_calls", 10_000, now=JAN)
    alerts.check(tenant, "free", "api_calls", 12_000, now=JAN)
    assert [(a.threshold, a.used, a.limit, a.cycle) for a in inbox] == [
        (80, 8_000, 10_000, "2026-01"),
        (100, 10_000, 10_000, "2026-01"),
    ]


def test_a_restart_does_not_repeat_alerts_but_a_new_cycle_does(engine: Engine) -> None:
    """Alerts are persisted: a fresh instance stays silent this cycle and alerts next cycle."""
    tenant, first, second = tenant_id(), list[UsageAlert](), list[UsageAlert]()
    _alerts(engine, first).check(tenant, "starter", "api_calls", 85_000, now=JAN)
    restarted = _alerts(engine, second)
    restarted.check(tenant, "starter", "api_calls", 90_000, now=JAN)
    assert [a.threshold for a in first] == [80] and second == []
    restarted.check(tenant, "starter", "api_calls", 85_000, now=FEB)
    assert [(a.threshold, a.cycle) for a in second] == [(80, "2026-02")]


def test_a_jump_past_both_thresholds_sends_both(engine: Engine) -> None:
    """Going from nothing to 150% at once delivers the 80% and the 100% alert."""
    inbox: list[UsageAlert] = []
    _alerts(engine, inbox).check(tenant_id(), "free", "users", 5, now=JAN)
    assert [a.threshold for a in inbox] == [80, 100]


def test_unlimited_plans_never_alert(engine: Engine) -> None:
    """Enterprise has no limit, so nothing is a percentage of it."""
    inbox: list[UsageAlert] = []
    assert _alerts(engine, inbox).check(tenant_id(), "enterprise", "api_calls", 10**9) == []


def test_a_failing_subscriber_does_not_stop_the_others(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscriber that raises is logged; later subscribers still get the alert."""
    inbox: list[UsageAlert] = []
    alerts = UsageAlerts(sessions(engine))

    def broken(alert: UsageAlert) -> None:
        raise RuntimeError("mail server down")

    alerts.subscribe(broken)
    unsubscribe = alerts.subscribe(inbox.append)
    alerts.check(tenant_id(), "free", "projects", 1, now=JAN)
    assert [a.threshold for a in inbox] == [80, 100] and "mail server down" in caplog.text
    unsubscribe()
    alerts.check(tenant_id(), "free", "projects", 1, now=JAN)
    assert len(inbox) == 2


def test_counter_flush_raises_alerts_for_the_tenants_plan(engine: Engine) -> None:
    """The API-call counter checks alerts after each flush with the tenant's plan."""
    tenant, inbox = tenant_id(), list[UsageAlert]()
    recorder = UsageRecorder(sessions(engine), clock=lambda: JAN)
    counter = ApiCallCounter(
        recorder,
        background=False,
        alerts=_alerts(engine, inbox),
        plan_of=lambda _t: "free",
        clock=lambda: JAN,
    )
    counter.add(tenant, 7_000)
    counter.flush()
    assert inbox == []
    counter.add(tenant, 1_000)
    counter.close()
    assert [(a.tenant_id, a.threshold, a.used) for a in inbox] == [(tenant, 80, 8_000)]


def test_thresholds_must_be_percentages(engine: Engine) -> None:
    """Thresholds outside 1..1000 percent are refused at construction."""
    with pytest.raises(ValueError):
        UsageAlerts(sessions(engine), thresholds=(0,))
