"""The monthly call counter on the hot path: off the loop, not stalled by a flush, 503 if down."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from tenantkit import errors
from tenantkit._db import Base
from tenantkit.kit import TenantKit
from tenantkit.plans import Plans
from tenantkit.types import RequestInfo
from tenantkit.usage import ApiCallCounter, UsageRecorder

PLANS = Plans.from_mapping(
    {
        "TENANTKIT_PLANS": '{"tiny": {"price": "0", "api_call_cap": "hard", "limits": '
        '{"users": 1, "projects": 1, "api_calls": 3, "storage_gb": 1}}}'
    }
)


def _request(key: str) -> RequestInfo:
    return RequestInfo(method="GET", path="/things", headers={"x-api-key": key})


def _capped(make_kit: Callable[..., Any], recorder_engine: Any = None) -> tuple[Any, Any, str]:
    kit = make_kit(tenants={"acme": {"plan": "tiny"}})
    Base.metadata.create_all(kit.engine)
    recorder = UsageRecorder(sessionmaker(recorder_engine or kit.engine), plans=PLANS)
    counter = ApiCallCounter(recorder, background=False, max_pending=100)
    capped = TenantKit(kit.settings, engine=kit.engine, call_counter=counter)
    return capped, counter, kit.api_keys.issue("acme", name="k").key


def test_async_admission_reads_the_usage_store_off_the_loop(
    make_kit: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """admit_async loads the tenant's monthly count in a worker thread, never on the loop."""
    capped, counter, key = _capped(make_kit)
    readers: list[threading.Thread] = []
    original = UsageRecorder.total

    def total(self: UsageRecorder, *args: Any, **kwargs: Any) -> int:
        readers.append(threading.current_thread())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(UsageRecorder, "total", total)

    async def admit_four() -> None:
        for _ in range(3):
            await capped.admit_async(_request(key))
        with pytest.raises(errors.QuotaExceeded):
            await capped.admit_async(_request(key))

    anyio.run(admit_four)
    counter.close()
    assert len(readers) == 1 and readers[0] is not threading.main_thread()


def test_usage_store_down_is_503(make_kit: Callable[..., Any], tmp_path: Path) -> None:
    """A usage store that cannot be read is a 503 with Retry-After, sync and async."""
    down = create_engine(f"sqlite:///{tmp_path / 'missing' / 'usage.db'}")
    capped, counter, key = _capped(make_kit, down)
    with pytest.raises(errors.ServiceUnavailable) as sync:
        capped.admit(_request(key))

    async def admit() -> None:
        await capped.admit_async(_request(key))

    with pytest.raises(errors.ServiceUnavailable) as async_:
        anyio.run(admit)
    assert sync.value.headers["Retry-After"] == async_.value.headers["Retry-After"] == "1"
    assert counter.pending() == 0


def test_a_flush_in_progress_does_not_stall_the_count(tmp_path: Path) -> None:
    """While a flush writes, cycle_count answers from memory and still counts the calls."""
    engine = create_engine(f"sqlite:///{tmp_path / 'usage.db'}")
    Base.metadata.create_all(engine)
    entered, release = threading.Event(), threading.Event()

    class SlowRecorder(UsageRecorder):
        def record(self, *args: Any, **kwargs: Any) -> Any:
            entered.set()
            release.wait(30)
            return super().record(*args, **kwargs)

    counter = ApiCallCounter(SlowRecorder(sessionmaker(engine)), background=False)
    assert counter.cycle_count("acme") == 0
    counter.add("acme", 5)
    flusher = threading.Thread(target=counter.flush)
    flusher.start()
    assert entered.wait(30)
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.append(counter.cycle_count("acme")))
    reader.start()
    reader.join(30)
    answered_during_flush = not reader.is_alive()
    release.set()
    flusher.join()
    reader.join()
    counter.close()
    assert answered_during_flush and seen == [5]
    assert counter.cycle_count("acme") == 5


def test_check_nowait_needs_the_count_loaded(tmp_path: Path) -> None:
    """check_nowait reports False until the count is loaded, then checks from memory."""
    from tenantkit.types import TenantConfig

    engine = create_engine(f"sqlite:///{tmp_path / 'usage.db'}")
    Base.metadata.create_all(engine)
    counter = ApiCallCounter(UsageRecorder(sessionmaker(engine), plans=PLANS), background=False)
    tenant = TenantConfig(id="acme", name="Acme", plan="tiny")
    assert counter.check_nowait(tenant) is False
    counter.check(tenant)
    counter.add("acme", 3)
    with pytest.raises(errors.QuotaExceeded):
        counter.check_nowait(tenant)
    counter.close()
