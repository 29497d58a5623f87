"""Usage events: idempotency for good (also under concurrent retries), validation, reports."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, func, select
from tests.stripe_local.dbs import engine_for, sessions, tenant_id

from tenantkit.context import bound_tenant
from tenantkit.errors import (
    ConfigurationError,
    Conflict,
    CrossTenantError,
    NoTenantError,
    UnprocessableEntity,
)
from tenantkit.types import TenantConfig
from tenantkit.usage import MAX_QUANTITY, UsageEvent, UsageRecorder


class FakeClock:
    """A settable UTC clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


JAN_15 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[Engine]:
    """The usage tables on a SQLite file and on the session's PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/usage.db"
    else:
        url = request.getfixturevalue("postgres_url").render_as_string(hide_password=False)
    eng = engine_for(url)
    yield eng
    eng.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(JAN_15)


@pytest.fixture
def recorder(engine: Engine, clock: FakeClock) -> UsageRecorder:
    return UsageRecorder(sessions(engine), clock=clock)


def _rows(engine: Engine, tenant: str) -> int:
    with sessions(engine)() as s:
        return int(s.scalar(select(func.count()).where(UsageEvent.tenant_id == tenant)) or 0)


def test_record_stores_the_event_for_the_bound_tenant(recorder: UsageRecorder) -> None:
    """An event is stored with the bound tenant, its fields and the clock's time."""
    tenant = tenant_id()
    with bound_tenant(tenant):
        rec = recorder.record("compute", 5, project_id="p1", metadata={"region": "eu"})
        again = recorder.get(rec.id)
    assert rec.tenant_id == tenant and rec.quantity == 5 and rec.project_id == "p1"
    assert rec.occurred_at == JAN_15 and rec.duplicate is False
    assert again is not None and again.metadata == {"region": "eu"}
    assert again.meter_status == "pending"


def test_repeated_key_is_acknowledged_and_not_counted_twice(
    recorder: UsageRecorder, engine: Engine
) -> None:
    """A repeat of the same idempotency key returns the original event, flagged duplicate."""
    tenant = tenant_id()
    with bound_tenant(tenant):
        first = recorder.record("compute", 7, idempotency_key="k-1")
        second = recorder.record("compute", 7, idempotency_key="k-1")
        total = recorder.total("compute", JAN_15 - timedelta(days=1), JAN_15 + timedelta(days=1))
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.id == first.id
    assert total == 7
    assert _rows(engine, tenant) == 1


def test_key_is_unique_for_good_not_for_a_window(recorder: UsageRecorder, clock: FakeClock) -> None:
    """A key repeated more than a year later is still the same event."""
    tenant = tenant_id()
    with bound_tenant(tenant):
        first = recorder.record("compute", 1, idempotency_key="old")
        clock.now = JAN_15 + timedelta(days=400)
        later = recorder.record("compute", 1, idempotency_key="old")
    assert later.duplicate and later.id == first.id


def test_same_key_in_two_tenants_is_two_events(recorder: UsageRecorder) -> None:
    """Idempotency keys are scoped per tenant."""
    a, b = tenant_id("a"), tenant_id("b")
    with bound_tenant(a):
        ra = recorder.record("compute", 1, idempotency_key="shared")
    with bound_tenant(b):
        rb = recorder.record("compute", 1, idempotency_key="shared")
    assert ra.id != rb.id and not rb.duplicate


def test_key_reused_for_another_event_is_a_409(recorder: UsageRecorder) -> None:
    """A key reused with a different quantity is a conflict, not a silent acknowledgement."""
    with bound_tenant(tenant_id()):
        recorder.record("compute", 1, idempotency_key="k")
        with pytest.raises(Conflict) as info:
            recorder.record("compute", 2, idempotency_key="k")
    assert info.value.status == 409


def test_concurrent_retries_count_once(recorder: UsageRecorder, engine: Engine) -> None:
    """Eight threads retrying one key at the same instant store exactly one event."""
    tenant = tenant_id()
    barrier = threading.Barrier(8)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def retry() -> None:
        try:
            with bound_tenant(tenant):
                barrier.wait()
                rec = recorder.record("compute", 3, idempotency_key="retry-me")
            results.append((rec.id, rec.duplicate))
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({event_id for event_id, _ in results}) == 1
    assert sorted(dup for _, dup in results) == [False] + [True] * 7
    assert _rows(engine, tenant) == 1


def test_no_tenant_fails_closed(recorder: UsageRecorder) -> None:
    """Recording without a bound tenant raises instead of writing a global event."""
    with pytest.raises(NoTenantError):
        recorder.record("compute", 1)


def test_naming_another_tenant_while_bound_is_refused(recorder: UsageRecorder) -> None:
    """An explicit tenant id different from the bound one is a cross-tenant error."""
    with bound_tenant(tenant_id()), pytest.raises(CrossTenantError):
        recorder.record("compute", 1, tenant_id=tenant_id())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"type": "Bad Type", "quantity": 1}, "type"),
        ({"type": "compute", "quantity": 0}, "quantity"),
        ({"type": "compute", "quantity": True}, "quantity"),
        ({"type": "compute", "quantity": 1, "metadata": {"x": object()}}, "metadata"),
        ({"type": "compute", "quantity": 1, "idempotency_key": "x" * 256}, "idempotency_key"),
        ({"type": "compute", "quantity": 1, "occurred_at": datetime(2026, 1, 1)}, "occurred_at"),
        (
            {"type": "compute", "quantity": 1, "occurred_at": JAN_15 + timedelta(minutes=6)},
            "occurred_at",
        ),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    recorder: UsageRecorder, kwargs: dict[str, object], field: str
) -> None:
    """Malformed events are refused with a 422 problem that names the field."""
    with bound_tenant(tenant_id()), pytest.raises(UnprocessableEntity) as info:
        recorder.record(**kwargs)  # type: ignore[arg-type]
    assert info.value.to_problem()["field"] == field


def test_report_totals_are_exact(recorder: UsageRecorder, clock: FakeClock) -> None:
    """The report sums one cycle by type and project, and prices the overage."""
    tenant, other = tenant_id(), tenant_id("o")
    clock.now = datetime(2026, 2, 10, tzinfo=UTC)
    jan_end = datetime(2026, 2, 1, tzinfo=UTC) - timedelta(microseconds=1)
    with bound_tenant(tenant):
        recorder.record("api_calls", 60_000, occurred_at=datetime(2026, 1, 1, tzinfo=UTC))
        recorder.record("api_calls", 42_345, project_id="web", occurred_at=jan_end)
        recorder.record("storage_gb", 3, project_id="web", occurred_at=JAN_15)
        recorder.record("compute", 2, project_id="batch", occurred_at=JAN_15)
        for _ in range(2):
            recorder.record(
                "compute", 5, project_id="batch", occurred_at=JAN_15, idempotency_key="c"
            )
        recorder.record("compute", 4, project_id="batch")  # February
        recorder.record("api_calls", 999, occurred_at=datetime(2025, 12, 31, 23, 59, tzinfo=UTC))
    with bound_tenant(other):
        recorder.record("api_calls", 1_000, occurred_at=JAN_15)
    report = recorder.report(tenant, "2026-01", plan="starter")
    assert report.totals == {"api_calls": 102_345, "compute": 7, "storage_gb": 3}
    assert report.by_project == {
        None: {"api_calls": 60_000},
        "web": {"api_calls": 42_345, "storage_gb": 3},
        "batch": {"compute": 7},
    }
    assert report.limits["api_calls"] == 100_000
    assert report.overage == {"api_calls": 2_345}
    assert report.overage_amount == Decimal("1.50")  # 3 started blocks of 1,000 at $0.50
    assert report.amount == Decimal("30.50")
    assert report.events == 5
    body = json.loads(json.dumps(report.to_dict()))
    assert body["amount"] == "30.50" and body["period_start"] == "2026-01-01T00:00:00Z"


def test_totals_past_a_64_bit_integer_stay_exact(recorder: UsageRecorder, engine: Engine) -> None:
    """1,025 events of the largest quantity sum past 2**63 - 1; report and total stay exact.

    SQLite's SUM raised "integer overflow" there (a 503 for every report of the tenant).
    """
    tenant, n = tenant_id(), 1_025
    with bound_tenant(tenant), sessions(engine)() as session:
        for _ in range(n):
            recorder.record("compute", MAX_QUANTITY, project_id="batch", session=session)
        recorder.record("compute", 3, project_id="web", session=session)
        session.commit()
    report = recorder.report(tenant, "2026-01", plan="starter")
    assert report.totals == {"compute": n * MAX_QUANTITY + 3}
    assert report.by_project == {"batch": {"compute": n * MAX_QUANTITY}, "web": {"compute": 3}}
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    assert recorder.total("compute", start, end, tenant_id=tenant) == n * MAX_QUANTITY + 3
    assert recorder.total("storage_gb", start, end, tenant_id=tenant) == 0


def test_report_of_a_hard_capped_plan_and_of_enterprise(recorder: UsageRecorder) -> None:
    """Free has no overage price; Enterprise has no limits and a negotiated amount."""
    tenant = tenant_id()
    with bound_tenant(tenant):
        recorder.record("api_calls", 12_000)
    free = recorder.report(tenant, "2026-01", plan="free")
    enterprise = recorder.report(tenant, "2026-01", plan="enterprise")
    assert free.overage == {"api_calls": 2_000} and free.amount == Decimal("0.00")
    assert enterprise.overage == {} and enterprise.amount is None


def test_report_plan_comes_from_plan_of_or_the_bound_config(engine: Engine) -> None:
    """Without plan=, the report asks plan_of, then the bound tenant config, else refuses."""
    tenant = tenant_id()
    plain = UsageRecorder(sessions(engine))
    with pytest.raises(ConfigurationError):
        plain.report(tenant, "2026-01")
    with bound_tenant(TenantConfig(id=tenant, name="T", plan="pro")):
        assert plain.report().plan == "pro"
    wired = UsageRecorder(sessions(engine), plan_of=lambda _t: "starter")
    assert wired.report(tenant, "2026-01").plan == "starter"


def test_report_refuses_a_malformed_cycle(recorder: UsageRecorder) -> None:
    """A billing cycle that is not YYYY-MM is a 422."""
    with pytest.raises(UnprocessableEntity):
        recorder.report(tenant_id(), "2026-13", plan="free")
